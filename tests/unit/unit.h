#ifndef UNIT_H
#define UNIT_H

/* A tiny test runner: no framework, each test in its own process with a time
 * limit (see main() in test_packet.c). CHECK records a failure with its place
 * and a message and goes on, so one run reports every broken case. */

#include <stddef.h>

extern int unit_failures;
extern int unit_known;

void unit_fail(const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* A documented bug of the code under test: reported, but only a failure when
 * UNIT_STRICT=1, so `make test` stays usable until it is fixed. */
void unit_known_bug(const char *file, int line, const char *expr, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#define CHECK(cond, ...)                                                \
    do {                                                                \
        if (!(cond))                                                    \
            unit_fail(__FILE__, __LINE__, #cond, __VA_ARGS__);          \
    } while (0)

#define KNOWN_BUG(cond, ...)                                            \
    do {                                                                \
        if (!(cond))                                                    \
            unit_known_bug(__FILE__, __LINE__, #cond, __VA_ARGS__);     \
    } while (0)

/* Printable copy of bytes for failure messages (static buffer, one at a time). */
const char *unit_show(const void *p, size_t n);

/* Tests in other files. */
void test_state_dir_open(void);
void test_state_dir_refused(void);
void test_state_dir_fd_pinned(void);
void test_state_file_refused(void);
void test_state_temp_names(void);
void test_state_write_read(void);
void test_state_write_failures(void);
void test_state_read_limits(void);
void test_state_token(void);
void test_tls_state_files(void);
void test_tls_user_files(void);
void test_tls_known_hosts_file(void);
void test_registry_spec(void);
void test_port_ranges(void);
void test_token_scopes(void);
void test_ftp_split(void);
void test_ftp_multiline(void);
void test_ftp_commands(void);
void test_ftp_long_and_bad(void);
void test_ftp_rewrite(void);
void test_log_escape(void);
void test_tls_io_interop(void);
void test_tls_io_interop_direct(void);
void test_tls_io_records_without_data(void);
void test_tls_io_cut_without_close_notify(void);
void test_tls_io_reader_waits_alone(void);
void test_json_depth(void);
void test_ratelimit_groups(void);
void test_ratelimit_shared_budgets(void);
void test_web_head_cases(void);
void test_web_head_flags(void);
void test_web_head_limits(void);
void test_config_parse(void);
void test_config_limits(void);
void test_config_files(void);
void test_log_summary(void);
void test_cidr_lists(void);
void test_allow_judge(void);
void test_pp_parse(void);
void test_pp_read_header(void);
void test_addr_notation(void);
void test_proxy_proto_headers(void);
void test_build_addr_members(void);

#endif
