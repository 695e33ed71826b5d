# Omnigate: the two commands of the quick start are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help

.PHONY: help deps run test test-services fmt lint bench check

help:
	@echo "make run    - Tansu + Omnigate with every role on 127.0.0.1 (data in ./data)"
	@echo "make test   - install and start what tests need, then run every test"
	@echo "make bench  - benchmarks with same-run baselines"
	@echo "make fmt    - format;  make lint - clippy with warnings as errors"

deps:
	@scripts/deps.sh

run: deps
	@scripts/run.sh

# Services the tests talk to: Tansu (memory storage) on 127.0.0.1:9092, PostgreSQL on 5432.
test-services: deps
	@scripts/tansu.sh memory
	@scripts/postgres.sh

test: test-services
	cargo build --workspace --all-targets
	cargo test --workspace --no-fail-fast -- --test-threads=4

fmt:
	cargo fmt --all

lint: deps
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

bench: test-services
	cargo build --release --workspace --benches --bins
	cargo bench -p omnigate-e2e --bench webhook_ingest
	cargo bench -p omnigate-e2e --bench router_throughput
	cargo bench -p omnigate-e2e --bench webhook_delivery
