#!/usr/bin/env bash
# Run the test layers and print one closing summary.
#   scripts/test.sh all|unit|pg|regress|isolation|client|http|browser|upgrade|ops|docs|package
# Every database layer runs once per PostgreSQL version in $PG_VERSIONS
# (default "15 18", see scripts/env.sh); unit and package run once.
# unit      - plain Rust #[test]s (token format, rules, errors) and the
#             proptest fuzzing of the parser and rules (src/fuzz.rs): no database
# pg        - #[pg_test]s in a throw-away cluster (cargo pgrx test, as postgres)
# regress   - tests/pg_regress against the local cluster, as real roles
# isolation - tests/isolation: races under PostgreSQL's isolation tester,
#             against the same cluster
# client    - tests/client: PostgREST's request sequence over a real connection
#             (psycopg 3 over TCP), against the same cluster
# http      - tests/http: the same flow through a real PostgREST-compatible
#             HTTP server (postrust-server), against the same cluster, with
#             plain requests and through postgrest-js and postgrest-py
# browser   - tests/browser: the public-key widget in headless Chromium
#             (Debian's chromium and chromium-driver), two origins, the same
#             server; skipped with a message where Chromium cannot be installed
# upgrade   - tests/ops/test_upgrade.py: CREATE EXTENSION VERSION '0.1.0' with
#             live data, ALTER EXTENSION UPDATE, then the schema compared with a
#             fresh install (throw-away clusters)
# ops       - tests/ops: dump and restore, kill -9 crash recovery, a streaming
#             hot standby, each in throw-away clusters of its own
# docs      - tests/docs: every sql block of README.md, docs/managing-keys.md
#             and docs/postgrest.md, run as written (throw-away clusters)
# package   - make package: the Debian package for PostgreSQL 15, installed
#             with dpkg and used (tests/package/check.sh)
set -uo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
mkdir -p target

what="${1:-all}"
read -r -a versions <<<"$PG_VERSIONS"
declare -A passed failed secs
order=()
current=""   # the layer running now, as "layer" or "layer@pgNN"

# record a layer's counts under its current name
note() { passed[$current]=$1; failed[$current]=$2; order+=("$current"); }

# run one layer and note how long it took
timed() {
    local t0=$SECONDS
    "$@"
    secs[$current]=$((SECONDS - t0))
}
started=$(date +%s)

# Switch every script this one calls to PostgreSQL $1 (env.sh derives the
# rest from PG_MAJOR; the children source it again).
use_pg() {
    export PG_MAJOR="$1"
    unset PG_CONFIG PGPORT
    . "$ROOT/scripts/env.sh"
    export PG_CONFIG PGPORT PGBIN
}

# Parse "test result: ok. N passed; M failed" lines from cargo's output.
cargo_counts() {
    local log="$1" p=0 f=0
    while read -r np nf; do p=$((p + np)); f=$((f + nf)); done < <(
        sed -n 's/^test result: [A-Za-z]*\. \([0-9]*\) passed; \([0-9]*\) failed.*/\1 \2/p' "$log")
    echo "$p $f"
}

# Parse pg_regress's (and pg_isolation_regress's) closing line: "N P"
pg_regress_counts() {
    local line
    line=$(grep -E 'tests (passed|failed)|All [0-9]+ tests passed' "$1" | tail -1)
    if [[ "$line" =~ All\ ([0-9]+)\ tests\ passed ]]; then
        echo "${BASH_REMATCH[1]} 0"
    elif [[ "$line" =~ ([0-9]+)\ of\ ([0-9]+)\ tests\ failed ]]; then
        echo "$((BASH_REMATCH[2] - BASH_REMATCH[1])) ${BASH_REMATCH[1]}"
    else
        echo "0 1"
    fi
}

# the log of the current layer
log_of() { echo "target/test-${current/@/-}.log"; }

run_unit() {
    say "layer: Rust unit tests"
    local log; log=$(log_of)
    cargo test --lib -- --skip pg_tests:: 2>&1 | tee "$log" | grep -E '^test |^test result' || true
    read -r p f < <(cargo_counts "$log")
    grep -q '^test result' "$log" || f=$((f + 1))
    note "$p" "$f"
}

run_pg() {
    say "layer: #[pg_test] on PostgreSQL $PG_MAJOR (cargo pgrx test, cluster owned by postgres)"
    local dir=/tmp/pg_apikeys_pgtest log; log=$(log_of)
    rm -rf "$dir"; mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    local runas=()
    [ "$(id -u)" = 0 ] && runas=(--runas postgres --pgdata "$dir/data")
    cargo pgrx test "pg$PG_MAJOR" "${runas[@]}" pg_tests 2>&1 | tee "$log" | grep -E '^test |^test result|error' || true
    read -r p f < <(cargo_counts "$log")
    grep -q '^test result' "$log" || f=$((f + 1))
    note "$p" "$f"
}

# the release build in this version's PostgreSQL and its cluster running
# (cargo pgrx test installs a test build: install the real one again)
ready() {
    # (stopped first: the install writes the library over the file a
    # running server has mapped, which is only safe when nothing runs it)
    scripts/cluster.sh stop >/dev/null 2>&1
    scripts/install.sh && scripts/cluster.sh start
}

run_regress() {
    say "layer: pg_regress on PostgreSQL $PG_MAJOR (tests/pg_regress, real roles)"
    local p f log; log=$(log_of)
    ready || { note 0 1; return; }
    scripts/regress.sh 2>&1 | tee "$log"
    read -r p f < <(pg_regress_counts "$log")
    note "$p" "$f"
}

run_isolation() {
    say "layer: isolation on PostgreSQL $PG_MAJOR (tests/isolation, pg_isolation_regress)"
    local p f log; log=$(log_of)
    scripts/isolation.sh 2>&1 | tee "$log"
    read -r p f < <(pg_regress_counts "$log")
    note "$p" "$f"
}

# A layer whose script ends with "N passed, N failed" (scripts/pytest-lib.sh)
run_counted() {
    local title="$1" p f log; log=$(log_of)
    shift
    say "layer: $title"
    "$@" 2>&1 | tee "$log"
    read -r p f < <(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$log" | tail -1)
    note "${p:-0}" "${f:-1}"
}
run_client() { run_counted "client on PostgreSQL $PG_MAJOR (tests/client, PostgREST request sequence over TCP)" scripts/client.sh; }
run_http() { run_counted "http on PostgreSQL $PG_MAJOR (tests/http, postrust-server over HTTP)" scripts/http.sh; }
run_browser() { run_counted "browser on PostgreSQL $PG_MAJOR (tests/browser, the widget in headless Chromium)" scripts/browser.sh; }
run_upgrade() { run_counted "upgrade on PostgreSQL $PG_MAJOR (0.1.0 with data, ALTER EXTENSION UPDATE, schema diff)" scripts/ops.sh upgrade; }
run_ops() { run_counted "ops on PostgreSQL $PG_MAJOR (tests/ops: dump/restore, crash, hot standby, logical replication from 15)" scripts/ops.sh ops; }
run_docs() { run_counted "docs on PostgreSQL $PG_MAJOR (tests/docs: the docs' sql blocks, run as written)" scripts/docs.sh; }
run_package() { run_counted "package (Debian package for PostgreSQL 15)" tests/package/check.sh; }

# one layer on every version in $PG_VERSIONS
per_version() {
    local layer="$1" v
    for v in "${versions[@]}"; do
        use_pg "$v"
        current="$layer@pg$v"
        case "$layer" in
            isolation|client|http|browser|upgrade|ops|docs) ready >/dev/null || { note 0 1; continue; } ;;
        esac
        timed "run_$layer"
    done
}
once() { current="$1"; timed "run_$1"; }

scripts/bootstrap.sh "${versions[@]}" || { echo "bootstrap failed" >&2; exit 1; }

case "$what" in
    unit|package) once "$what" ;;
    pg|regress|isolation|client|http|browser|upgrade|ops|docs) per_version "$what" ;;
    all)
        once unit
        # one version at a time, every layer: a version's builds stay warm
        for v in "${versions[@]}"; do
            versions_all=("${versions[@]}"); versions=("$v")
            for layer in pg regress isolation client http browser upgrade ops docs; do per_version "$layer"; done
            versions=("${versions_all[@]}")
        done
        use_pg 15
        once package
        ;;
    *) echo "usage: $0 all|unit|pg|regress|isolation|client|http|browser|upgrade|ops|docs|package" >&2; exit 2 ;;
esac

total_p=0; total_f=0
echo
say "summary ($(( $(date +%s) - started ))s)"
for layer in "${order[@]}"; do
    printf '  %-15s %4d passed, %d failed  (%ds)\n' "$layer" "${passed[$layer]}" "${failed[$layer]}" "${secs[$layer]:-0}"
    total_p=$((total_p + passed[$layer])); total_f=$((total_f + failed[$layer]))
done
echo "$total_p passed, $total_f failed"
[ "$total_f" = 0 ]
