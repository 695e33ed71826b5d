# Omnigate: the two commands of the quick start are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help deps run test test-services fmt lint bench check fuzz

help:
	@echo "make run    - Apache Kafka + Omnigate with every role on 127.0.0.1 (data in ./data)"
	@echo "make test   - install and start what tests need, then run every test"
	@echo "make bench  - benchmarks with same-run baselines"
	@echo "make fuzz   - every fuzz target for FUZZ_SECONDS (default 60) each"
	@echo "make fmt    - format;  make lint - clippy with warnings as errors"

deps:
	@scripts/deps.sh

run: deps
	@scripts/run.sh

# Services the tests talk to, installed and started when missing: Apache Kafka (KRaft,
# data in a temporary folder) on 127.0.0.1:9092 and PostgreSQL on 127.0.0.1:5432;
# Dovecot and Postfix (IMAP 127.0.0.1:11143, SMTP :12525); Kamailio and baresip (each
# voice test starts its own Kamailio); and the providers'
# own client libraries the tests sign requests with (Python, in a venv).
test-services: deps
	@scripts/kafka.sh test
	@scripts/postgres.sh
	@scripts/mail.sh test
	@scripts/sip.sh install
	@scripts/browser.sh
	@scripts/python-tools.sh

test: test-services
	cargo build --workspace --all-targets
	cargo test --workspace --no-fail-fast -- --test-threads=4

fmt:
	cargo fmt --all

lint: deps
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

# Benchmarks run against a fresh broker of their own (127.0.0.1:19092), stopped after.
# Only the bench programs of tests/: --workspace --benches would also link every
# library's empty bench harness, each with the release profile's LTO.
bench: deps
	cargo build --release --workspace --bins
	cargo build --release -p omnigate-e2e --benches
	@scripts/kafka.sh bench
	OMNIGATE_TEST_BROKERS=127.0.0.1:19092 cargo bench -p omnigate-e2e --bench webhook_ingest
	OMNIGATE_TEST_BROKERS=127.0.0.1:19092 cargo bench -p omnigate-e2e --bench router_throughput
	OMNIGATE_TEST_BROKERS=127.0.0.1:19092 cargo bench -p omnigate-e2e --bench webhook_delivery
	@scripts/mail.sh bench
	OMNIGATE_TEST_BROKERS=127.0.0.1:19092 cargo bench -p omnigate-e2e --bench email_ingest
	OMNIGATE_TEST_BROKERS=127.0.0.1:19092 cargo bench -p omnigate-e2e --bench livechat_sockets
	@scripts/kafka.sh stop bench

# Fuzzing with cargo-fuzz (libFuzzer). The machine's toolchain is stable, which has no
# AddressSanitizer runtime, so targets run without a sanitizer (-s none): Rust code is
# memory-safe; what is looked for is panics and broken invariants. Crash inputs land in
# fuzz/artifacts/<target>/; fix the bug and keep the input as a regression test
# (crates/connector-whatsapp/tests/fuzz_regressions/).
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := whatsapp_normalize whatsapp_signature webhook_signature voice_parsers email_normalize livechat_frames
fuzz:
	@command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
	@cd fuzz && for target in $(FUZZ_TARGETS); do \
	  mkdir -p corpus/$$target; \
	  seeds=""; [ $$target = whatsapp_normalize ] && seeds="../crates/connector-whatsapp/tests/fixtures ../crates/connector-whatsapp/tests/fuzz_regressions"; \
	  [ $$target = voice_parsers ] && seeds="../crates/connector-voice/tests/fixtures"; \
	  [ $$target = email_normalize ] && seeds="../crates/connector-email/tests/fixtures"; \
	  echo "==> $$target for $(FUZZ_SECONDS) s"; \
	  cargo fuzz run -s none $$target corpus/$$target $$seeds -- -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 || exit 1; \
	done
