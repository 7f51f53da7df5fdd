# Kiln: `make run` starts the server, `make test` runs every test.
# Both install the Debian packages Kiln needs when they are missing.

SWIFT ?= swift
APT_PACKAGES := libmicrohttpd-dev libsqlite3-dev libcurl4-openssl-dev pkg-config curl bubblewrap runsc postgresql
CONFIG ?= release

.PHONY: deps build release run test test-tsan fuzz clean

deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@python3 -c 'import openapi_spec_validator, yaml' 2>/dev/null || python3 -m pip install -q openapi-spec-validator pyyaml

build: deps
	$(SWIFT) build

release: deps
	$(SWIFT) build -c release

run: deps
	$(SWIFT) build -c $(CONFIG)
	.build/$(CONFIG)/kiln serve $(ARGS)

test: deps
	$(SWIFT) build
	node --test Sources/KilnBackends/isolate/host-test.mjs
	$(SWIFT) test

# The log broker, engine and HTTP-layer suites under ThreadSanitizer.
test-tsan: deps
	$(SWIFT) test --sanitize=thread --scratch-path .build-tsan --filter 'KilnEngineTests|KilnCoreTests|KilnHTTPTests|KilnLogsTests'

# libFuzzer (with AddressSanitizer) over request decoding and routing, for FUZZ_TIME
# seconds: Sources/KilnFuzzSupport/FuzzHarness.swift. New inputs go to .build-fuzz/corpus
# (the committed seeds in Tests/fuzz-corpus are read only), a crash to
# .build-fuzz/artifacts/; replay one with `swift run kiln-fuzz -v FILE`.
FUZZ_TIME ?= 60
FUZZ_ARGS ?=
fuzz: deps
	$(SWIFT) build --scratch-path .build-fuzz -c debug --product kiln-fuzz \
		-Xswiftc -sanitize=fuzzer,address -Xswiftc -DKILN_FUZZ
	mkdir -p .build-fuzz/corpus .build-fuzz/artifacts
	SWIFT_BACKTRACE=enable=no .build-fuzz/debug/kiln-fuzz .build-fuzz/corpus Tests/fuzz-corpus -dict=Tests/fuzz.dict \
		-max_total_time=$(FUZZ_TIME) -max_len=16384 -timeout=10 -rss_limit_mb=4096 \
		-artifact_prefix=.build-fuzz/artifacts/ -print_final_stats=1 $(FUZZ_ARGS)

clean:
	rm -rf .build .build-tsan .build-fuzz

# Reliability checks (benchmarks/README.md, "Reliability"): R1 1,000 stream
# connect/disconnect cycles under load, R2 SIGKILL during a 1,000,000-line workload and
# restart, R3 the bad-request corpus (Tests/tools/badrequests.py), R4 mixed load for 60 s.
# Each server is started and stopped by kiln-bench; PASS/FAIL per figure, results in
# benchmarks/results/reliability.json, non-zero exit on a failure. About 2.5 minutes;
# RELIABILITY_ARGS="--quick" for small sizes (about 20 s), or name checks: "r1 r2".
RELIABILITY_ARGS ?=
.PHONY: reliability
reliability: deps
	$(SWIFT) build -c release --product kiln
	cd benchmarks && $(SWIFT) build -c release
	benchmarks/.build/release/kiln-bench reliability --kiln $(CURDIR)/.build/release/kiln $(RELIABILITY_ARGS)

# Every benchmark (B1-B5, benchmarks/README.md) and every reliability check, then
# benchmarks/RESULTS.md with the figures, the date and the commit. About 8 minutes on
# 2 cores; run it on an otherwise idle machine. BENCH_ARGS go to `kiln-bench run`
# (e.g. "--quick" for small sizes, about 3 minutes). A missed target does not stop the
# run: RESULTS.md says by how much.
BENCH_ARGS ?=
.PHONY: bench
bench: deps
	@$(MAKE) --no-print-directory deps APT_PACKAGES="$(APT_PACKAGES) wrk"
	$(SWIFT) build -c release --product kiln
	cd benchmarks && $(SWIFT) build -c release
	cd benchmarks/peers/hummingbird-peer && $(SWIFT) build -c release
	-benchmarks/.build/release/kiln-bench run --kiln $(CURDIR)/.build/release/kiln $(BENCH_ARGS)
	-benchmarks/.build/release/kiln-bench reliability --kiln $(CURDIR)/.build/release/kiln $(if $(findstring --quick,$(BENCH_ARGS)),--quick,)
	python3 benchmarks/render_results.py
