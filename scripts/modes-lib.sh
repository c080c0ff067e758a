# Shared by scripts/regress.sh and scripts/isolation.sh; sourced after env.sh.
#
# in_both_modes NAME SCHEDULE MODES: run `run OUTDIR --schedule=SCHEDULE`
# (the caller's function) once per usage mode in MODES, the local cluster
# restarted without the preload (in_transaction) or with it (shared_memory)
# before each; results in target/NAME-<mode>. Leaves the cluster as
# `make run` starts it, prints one closing line in pg_regress's own shape for
# all runs together ("# All N tests passed." / "# F of N tests failed.") and
# returns non-zero when anything failed.
in_both_modes() {
    local name="$1" schedule="$2" modes="$3" mode preload log line
    local total=0 failed=0 status=0
    for mode in $modes; do
        preload=1; [ "$mode" = in_transaction ] && preload=0
        APIKEYS_PRELOAD=$preload scripts/cluster.sh restart >/dev/null
        say "$name, usage recorded $mode"
        log="$ROOT/target/$name-$mode.log"
        run "$ROOT/target/$name-$mode" --schedule="$schedule" 2>&1 | tee "$log" || status=1
        # pg_regress's closing line: "All N tests passed." or "F of N tests failed."
        line=$(grep -E 'tests (passed|failed)' "$log" | tail -1)
        if [[ "$line" =~ All\ ([0-9]+)\ tests\ passed ]]; then
            total=$((total + BASH_REMATCH[1]))
        elif [[ "$line" =~ ([0-9]+)\ of\ ([0-9]+)\ tests\ failed ]]; then
            total=$((total + BASH_REMATCH[2])); failed=$((failed + BASH_REMATCH[1]))
        else
            failed=$((failed + 1)); total=$((total + 1))
        fi
    done
    scripts/cluster.sh restart >/dev/null
    echo
    if [ "$failed" = 0 ] && [ "$status" = 0 ]; then
        echo "# All $total tests passed."
    else
        echo "# $failed of $total tests failed."
        return 1
    fi
}
