# NAT-traversal tunnel: proxy_public (server with a public address) and
# proxy_private (home side). `make` builds both; `make test` runs every test,
# including the AddressSanitizer+UBSan and ThreadSanitizer builds.

CC      ?= cc
VERSION := 0.1.0
WARN    := -std=c11 -Wall -Wextra -Werror -Wshadow -Wformat=2 -Wvla \
           -Wstrict-prototypes -Wmissing-prototypes -Wimplicit-fallthrough
CFLAGS  ?= -O2 -g
HARDEN  := -D_FORTIFY_SOURCE=2 -fstack-protector-strong -fPIE
CPPFLAGS += -D_GNU_SOURCE -DPROXY_VERSION='"$(VERSION)"' -I. -Ibuild
LDFLAGS += -pie -Wl,-z,relro,-z,now
LIBS    := -ljansson -lssl -lcrypto -lpthread
PUB_LIBS := -lcivetweb -lhiredis -ldl

COMMON_SRC := packet.c log.c netio.c tcp_info.c cidr.c allow.c proxy_proto.c proxy_header.c tunnel.c udp.c ftp.c ftp_data.c tls.c tls_io.c state.c json_depth.c config.c service.c
PUBLIC_SRC := proxy_public.c public_opts.c cluster.c registry.c tokens.c web_api.c ratelimit.c web_front.c web_head.c build/web_assets.c
PRIVATE_SRC := proxy_private.c private_opts.c diag.c
HEADERS := $(wildcard *.h)
WEB_FILES := $(wildcard web/*)

# Sanitizer builds live in their own directories so they never mix with the
# release objects; tests pick a build with BIN_DIR.
SAN_ASAN := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
SAN_TSAN := -fsanitize=thread -fno-omit-frame-pointer

.PHONY: all clean test test-unit test-asan test-tsan test-quick tools fuzz fuzz-smoke bench soak demo deps \
        install uninstall units deb

all: proxy_public proxy_private

build/web_assets.c: $(WEB_FILES) tools/embed_web.sh
	@mkdir -p build
	sh tools/embed_web.sh web > $@.tmp && mv $@.tmp $@

proxy_public: $(COMMON_SRC) $(PUBLIC_SRC) $(HEADERS)
	$(CC) $(WARN) $(CFLAGS) $(HARDEN) $(CPPFLAGS) -o $@ $(COMMON_SRC) $(PUBLIC_SRC) $(LDFLAGS) $(LIBS) $(PUB_LIBS)

proxy_private: $(COMMON_SRC) $(PRIVATE_SRC) $(HEADERS)
	$(CC) $(WARN) $(CFLAGS) $(HARDEN) $(CPPFLAGS) -o $@ $(COMMON_SRC) $(PRIVATE_SRC) $(LDFLAGS) $(LIBS)

build/asan/proxy_public build/asan/proxy_private build/tsan/proxy_public build/tsan/proxy_private: \
		$(COMMON_SRC) $(PUBLIC_SRC) $(PRIVATE_SRC) $(HEADERS)
	@mkdir -p $(dir $@)
	$(CC) $(WARN) -O1 -g $(if $(findstring asan,$@),$(SAN_ASAN),$(SAN_TSAN)) $(CPPFLAGS) -o $@ \
		$(COMMON_SRC) $(if $(findstring public,$@),$(PUBLIC_SRC),$(PRIVATE_SRC)) \
		$(LIBS) $(if $(findstring public,$@),$(PUB_LIBS))

# Unit tests (tests/unit/): packet.c, state.c, registry_spec_from_json,
# json_depth.c, ratelimit.c and web_head.c under ASan+UBSan. registry.c needs the common
# objects to link; only those run.
UNIT_SRC := $(wildcard tests/unit/*.c)
UNIT_LIB_SRC := $(sort $(COMMON_SRC) registry.c tokens.c state.c ratelimit.c web_head.c)
build/test_packet: $(UNIT_SRC) tests/unit/unit.h $(UNIT_LIB_SRC) $(HEADERS)
	@mkdir -p build
	$(CC) $(WARN) -O1 -g $(SAN_ASAN) $(CPPFLAGS) -Itests/unit -o $@ $(UNIT_SRC) $(UNIT_LIB_SRC) $(LIBS)

test-unit: build/test_packet
	./build/test_packet

# Test tools: a hostile TLS client that sends records no well-behaved peer
# sends (tests/test_preauth.py), using the record sealer of tests/tools/.
TOOLS := build/tls_hostile
build/tls_hostile: tests/tools/tls_hostile.c tests/tools/tls_records.c tests/tools/tls_records.h
	@mkdir -p build
	$(CC) $(WARN) -O1 -g $(CPPFLAGS) -Itests/tools -o $@ tests/tools/tls_hostile.c \
		tests/tools/tls_records.c -lssl -lcrypto

tools: $(TOOLS)

# libFuzzer harnesses (fuzz/): `make fuzz` runs each for FUZZ_SECONDS, `make
# fuzz-smoke` for FUZZ_SMOKE_SECONDS after replaying fuzz/regressions/ and the
# seeds; both fail on any crash. Needs clang and libclang-rt-14-dev.
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_FLAGS := -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
              -fno-omit-frame-pointer
FUZZ_HARNESSES := fuzz_packet fuzz_api_body fuzz_web_head fuzz_config fuzz_ftp fuzz_proxy_header \
                  fuzz_cluster
FUZZ_BINS := $(addprefix build/fuzz/,$(FUZZ_HARNESSES))
FUZZ_LIB_SRC := $(sort $(COMMON_SRC) registry.c tokens.c state.c web_head.c)

$(FUZZ_BINS): build/fuzz/%: fuzz/%.c fuzz/guard.h $(FUZZ_LIB_SRC) $(HEADERS)
	@mkdir -p build/fuzz
	$(FUZZ_CC) $(WARN) $(FUZZ_FLAGS) $(CPPFLAGS) -o $@ $< $(FUZZ_LIB_SRC) \
		$(if $(findstring cluster,$@),cluster.c -lhiredis) $(LIBS)

fuzz: $(FUZZ_BINS)
	sh fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_HARNESSES)

fuzz-smoke: $(FUZZ_BINS)
	sh fuzz/run.sh $(FUZZ_SMOKE_SECONDS) $(FUZZ_HARNESSES)

# The whole suite: unit tests, integration tests against the release build,
# fuzz smoke runs, the browser test and the real-NAT test, then the integration
# tests again under ASan+UBSan and under TSan.
test: all test-unit tools
	sh tests/run.sh release
	$(MAKE) test-asan
	$(MAKE) test-tsan

test-asan: build/asan/proxy_public build/asan/proxy_private tools
	sh tests/run.sh asan

test-tsan: build/tsan/proxy_public build/tsan/proxy_private tools
	sh tests/run.sh tsan

# Installation: `make install` (PREFIX=/usr/local) or, for a package,
# `make install PREFIX=/usr DESTDIR=debian/tmp UNITDIR=/lib/systemd/system`.
# The web files are embedded in proxy_public. Config files in SYSCONFDIR are
# installed only when absent (never overwritten); `make uninstall` leaves them.
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
MANDIR     ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
UNITDIR    ?= $(PREFIX)/lib/systemd/system
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
EXAMPLEDIR ?= $(PREFIX)/share/doc/proxy-tunnel/examples
UNITS := proxy_public.service proxy_private.service proxy_private@.service
INSTALL ?= install

# Made anew every time: BINDIR may differ from the last run.
build/systemd/%: systemd/%.in FORCE
	@mkdir -p build/systemd
	sed 's|@BINDIR@|$(BINDIR)|g' $< > $@.tmp && mv $@.tmp $@

units: $(addprefix build/systemd/,$(UNITS))

FORCE:

install: all units
	$(INSTALL) -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(EXAMPLEDIR) $(DESTDIR)$(SYSCONFDIR)
	$(INSTALL) -m 755 proxy_public proxy_private $(DESTDIR)$(BINDIR)/
	$(INSTALL) -m 644 man/proxy_public.1 man/proxy_private.1 $(DESTDIR)$(MANDIR)/man1/
	$(INSTALL) -m 644 $(addprefix build/systemd/,$(UNITS)) $(DESTDIR)$(UNITDIR)/
	$(INSTALL) -m 644 systemd/proxy-tunnel.sysusers $(DESTDIR)$(SYSUSERSDIR)/proxy-tunnel.conf
	$(INSTALL) -m 644 examples/proxy_public.conf examples/proxy_private.conf $(DESTDIR)$(EXAMPLEDIR)/
	for f in proxy_public.conf proxy_private.conf; do \
		[ -e $(DESTDIR)$(SYSCONFDIR)/$$f ] || $(INSTALL) -m 644 examples/$$f $(DESTDIR)$(SYSCONFDIR)/$$f; \
	done

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/proxy_public $(DESTDIR)$(BINDIR)/proxy_private
	rm -f $(DESTDIR)$(MANDIR)/man1/proxy_public.1 $(DESTDIR)$(MANDIR)/man1/proxy_private.1
	rm -f $(addprefix $(DESTDIR)$(UNITDIR)/,$(UNITS))
	rm -f $(DESTDIR)$(SYSUSERSDIR)/proxy-tunnel.conf
	rm -f $(DESTDIR)$(EXAMPLEDIR)/proxy_public.conf $(DESTDIR)$(EXAMPLEDIR)/proxy_private.conf
	-rmdir $(DESTDIR)$(EXAMPLEDIR) $(DESTDIR)$(PREFIX)/share/doc/proxy-tunnel 2>/dev/null
	@echo "kept: $(SYSCONFDIR)/proxy_public.conf, $(SYSCONFDIR)/proxy_private.conf (remove them by hand)"

# The Debian packages (debian/): proxy-public and proxy-private .debs in ..
deb:
	dpkg-buildpackage -us -uc -b

bench: all
	sh bench/run.sh

soak: all
	sh tests/soak.sh

demo: all
	sh tools/demo.sh

clean:
	rm -rf build proxy_public proxy_private
