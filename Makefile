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
PUB_LIBS := -lcivetweb -ldl

COMMON_SRC := packet.c log.c netio.c tunnel.c tls.c tls_records.c state.c
PUBLIC_SRC := proxy_public.c registry.c web_api.c ratelimit.c web_tls.c build/web_assets.c
PRIVATE_SRC := proxy_private.c allow.c
HEADERS := $(wildcard *.h)
WEB_FILES := $(wildcard web/*)

# Sanitizer builds live in their own directories so they never mix with the
# release objects; tests pick a build with BIN_DIR.
SAN_ASAN := -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
SAN_TSAN := -fsanitize=thread -fno-omit-frame-pointer

.PHONY: all clean test test-unit test-asan test-tsan test-quick fuzz fuzz-smoke bench soak demo deps

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

# Unit tests (tests/unit/): packet.c, state.c and registry_spec_from_json under
# ASan+UBSan. registry.c needs the common objects to link; only those run.
UNIT_SRC := $(wildcard tests/unit/*.c)
UNIT_LIB_SRC := $(sort $(COMMON_SRC) registry.c state.c)
build/test_packet: $(UNIT_SRC) tests/unit/unit.h $(UNIT_LIB_SRC) $(HEADERS)
	@mkdir -p build
	$(CC) $(WARN) -O1 -g $(SAN_ASAN) $(CPPFLAGS) -Itests/unit -o $@ $(UNIT_SRC) $(UNIT_LIB_SRC) $(LIBS)

test-unit: build/test_packet
	./build/test_packet

# libFuzzer harnesses (fuzz/): `make fuzz` runs each for FUZZ_SECONDS, `make
# fuzz-smoke` for FUZZ_SMOKE_SECONDS after replaying fuzz/regressions/ and the
# seeds; both fail on any crash. Needs clang and libclang-rt-14-dev.
FUZZ_CC ?= clang
FUZZ_SECONDS ?= 60
FUZZ_SMOKE_SECONDS ?= 10
FUZZ_FLAGS := -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
              -fno-omit-frame-pointer
FUZZ_HARNESSES := fuzz_packet fuzz_api_body fuzz_tls_records
FUZZ_BINS := $(addprefix build/fuzz/,$(FUZZ_HARNESSES))
FUZZ_LIB_SRC := $(sort $(COMMON_SRC) registry.c state.c)

$(FUZZ_BINS): build/fuzz/%: fuzz/%.c fuzz/guard.h $(FUZZ_LIB_SRC) $(HEADERS)
	@mkdir -p build/fuzz
	$(FUZZ_CC) $(WARN) $(FUZZ_FLAGS) $(CPPFLAGS) -o $@ $< $(FUZZ_LIB_SRC) $(LIBS)

fuzz: $(FUZZ_BINS)
	sh fuzz/run.sh $(FUZZ_SECONDS) $(FUZZ_HARNESSES)

fuzz-smoke: $(FUZZ_BINS)
	sh fuzz/run.sh $(FUZZ_SMOKE_SECONDS) $(FUZZ_HARNESSES)

# The whole suite: unit tests, integration tests against the release build,
# fuzz smoke runs, the browser test and the real-NAT test, then the integration
# tests again under ASan+UBSan and under TSan.
test: all test-unit
	sh tests/run.sh release
	$(MAKE) test-asan
	$(MAKE) test-tsan

test-asan: build/asan/proxy_public build/asan/proxy_private
	sh tests/run.sh asan

test-tsan: build/tsan/proxy_public build/tsan/proxy_private
	sh tests/run.sh tsan

bench: all
	sh bench/run.sh

soak: all
	sh tests/soak.sh

demo: all
	sh tools/demo.sh

clean:
	rm -rf build proxy_public proxy_private
