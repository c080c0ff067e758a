# pg_apikeys — the two commands are `make run` and `make test`.
# Everything else is a piece of those, runnable alone.
SHELL := /bin/bash
PG_MAJOR ?= 15
PG_CONFIG ?= /usr/lib/postgresql/$(PG_MAJOR)/bin/pg_config
export PG_MAJOR PG_CONFIG

.PHONY: run test stop clean bootstrap install start test-unit test-pg test-regress test-isolation test-client test-ops psql lint bench

## make run: install what is missing, build and install the extension, start a
## local PostgreSQL $(PG_MAJOR) under target/pg, and walk through the main flow.
run: install start
	@scripts/demo.sh

## make test: every test layer (Rust unit + fuzz, #[pg_test], pg_regress,
## isolation, client, ops), one summary.
test: bootstrap
	@scripts/test.sh all

test-unit: bootstrap
	@scripts/test.sh unit

test-pg: bootstrap
	@scripts/test.sh pg

test-regress: bootstrap
	@scripts/test.sh regress

test-isolation: bootstrap
	@scripts/test.sh isolation

test-client: bootstrap
	@scripts/test.sh client

test-ops: bootstrap
	@scripts/test.sh ops

## make lint: rustfmt and clippy, warnings as errors (not part of make test).
lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

## make bench: pgbench harness (bench/README.md) in a throw-away cluster of its
## own on port 28840; 10 k and 1 M keys, about 15 minutes (not part of make test).
bench: install
	@bench/run.sh

bootstrap:
	@scripts/bootstrap.sh

install: bootstrap
	@scripts/install.sh

start:
	@scripts/cluster.sh start

stop:
	@scripts/cluster.sh stop

psql: start
	@source scripts/env.sh && psql_local -d apikeys_demo

clean: stop
	rm -rf target/pg target/regress
