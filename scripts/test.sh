#!/usr/bin/env bash
# Run the test layers and print one closing summary.
#   scripts/test.sh all|unit|pg|regress|isolation|client|ops
# unit      - plain Rust #[test]s (token format, rules, errors) and the
#             proptest fuzzing of the parser and rules (src/fuzz.rs): no database
# pg        - #[pg_test]s in a throw-away cluster (cargo pgrx test, as postgres)
# regress   - tests/pg_regress against the local cluster, as real roles
# isolation - tests/isolation: races under PostgreSQL's isolation tester,
#             against the same cluster
# client    - tests/client: PostgREST's request sequence over a real connection
#             (psycopg 3 over TCP), against the same cluster
# ops       - tests/ops: dump and restore, kill -9 crash recovery, a streaming
#             hot standby, each in throw-away clusters of its own
set -uo pipefail
. "$(dirname "$0")/env.sh"
cd "$ROOT"
mkdir -p target

what="${1:-all}"
declare -A passed failed secs
order=()
# run one layer and note how long it took
timed() {
    local t0=$SECONDS
    "$@"
    secs[${order[-1]}]=$((SECONDS - t0))
}
started=$(date +%s)

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

run_unit() {
    say "layer: Rust unit tests"
    cargo test --lib -- --skip pg_tests:: 2>&1 | tee target/test-unit.log | grep -E '^test |^test result' || true
    read -r p f < <(cargo_counts target/test-unit.log)
    grep -q '^test result' target/test-unit.log || f=$((f + 1))
    passed[unit]=$p; failed[unit]=$f; order+=(unit)
}

run_pg() {
    say "layer: #[pg_test] (cargo pgrx test, cluster owned by postgres)"
    local dir=/tmp/pg_apikeys_pgtest
    rm -rf "$dir"; mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    local runas=()
    [ "$(id -u)" = 0 ] && runas=(--runas postgres --pgdata "$dir/data")
    cargo pgrx test "pg$PG_MAJOR" "${runas[@]}" pg_tests 2>&1 | tee target/test-pg.log | grep -E '^test |^test result|error' || true
    read -r p f < <(cargo_counts target/test-pg.log)
    grep -q '^test result' target/test-pg.log || f=$((f + 1))
    passed[pg]=$p; failed[pg]=$f; order+=(pg)
}

run_regress() {
    say "layer: pg_regress (tests/pg_regress, real roles)"
    # cargo pgrx test installs a test build: install the real one again
    scripts/install.sh || { passed[regress]=0; failed[regress]=1; order+=(regress); return; }
    scripts/cluster.sh restart
    scripts/regress.sh 2>&1 | tee target/test-regress.log
    local p f
    read -r p f < <(pg_regress_counts target/test-regress.log)
    passed[regress]=$p; failed[regress]=$f; order+=(regress)
}

run_isolation() {
    say "layer: isolation (tests/isolation, pg_isolation_regress)"
    local p f
    scripts/isolation.sh 2>&1 | tee target/test-isolation.log
    read -r p f < <(pg_regress_counts target/test-isolation.log)
    passed[isolation]=$p; failed[isolation]=$f; order+=(isolation)
}

# A pytest layer: its script ends with "N passed, N failed" (scripts/pytest-lib.sh)
run_pytest_layer() {
    local layer="$1" title="$2" p f
    say "layer: $layer ($title)"
    scripts/$layer.sh 2>&1 | tee "target/test-$layer-run.log"
    read -r p f < <(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "target/test-$layer-run.log" | tail -1)
    passed[$layer]=${p:-0}; failed[$layer]=${f:-1}; order+=("$layer")
}
run_ops() { run_pytest_layer ops "tests/ops: dump/restore, crash, hot standby"; }
run_client() { run_pytest_layer client "tests/client, PostgREST request sequence over TCP"; }

case "$what" in
    unit) timed run_unit ;;
    pg) timed run_pg ;;
    regress) timed run_regress ;;
    isolation) scripts/install.sh && scripts/cluster.sh start && timed run_isolation ;;
    client) scripts/install.sh && scripts/cluster.sh start && timed run_client ;;
    ops) scripts/install.sh && timed run_ops ;;
    all) timed run_unit; timed run_pg; timed run_regress; timed run_isolation; timed run_client; timed run_ops ;;
    *) echo "usage: $0 all|unit|pg|regress|isolation|client|ops" >&2; exit 2 ;;
esac

total_p=0; total_f=0
echo
say "summary ($(( $(date +%s) - started ))s)"
for layer in "${order[@]}"; do
    printf '  %-9s %4d passed, %d failed  (%ds)\n' "$layer" "${passed[$layer]}" "${failed[$layer]}" "${secs[$layer]:-0}"
    total_p=$((total_p + passed[$layer])); total_f=$((total_f + failed[$layer]))
done
echo "$total_p passed, $total_f failed"
[ "$total_f" = 0 ]
