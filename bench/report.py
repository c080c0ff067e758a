"""Summary of a bench/run.sh run: a table on stdout, every number in JSON, a chart.

Reads runs.csv (one row per pgbench run) and facts.csv (load times, memory,
machine). The chart needs matplotlib (bench/requirements.txt); without it the
summary and the JSON are still written.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from collections import defaultdict
from statistics import median

STEADY = [("floor", "(a) floor"), ("verify", "(b) verify_key"), ("postgrest", "(c) PostgREST")]
TARGETS = {"b_over_a": 0.85, "wal_per_verify": 1.0, "flat": 0.77}


def num(v: str):
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v.strip('"')


def load(runs_path: str, facts_path: str):
    with open(runs_path) as f:
        runs = [{k: num(v) for k, v in r.items()} for r in csv.DictReader(f)]
    facts: dict[int, dict] = defaultdict(dict)
    with open(facts_path) as f:
        for r in csv.DictReader(f):
            facts[int(r["size"])][r["key"]] = num(r["value"])
    return runs, facts


def per_round_ratio(rows, num_s, den_s):
    by = defaultdict(dict)
    for r in rows:
        by[r["round"]][r["script"]] = r["tps"]
    return [v[num_s] / v[den_s] for v in by.values() if num_s in v and den_s in v and v[den_s]]


def summarise(runs, facts):
    sizes = sorted({r["size"] for r in runs})
    out = {}
    for n in sizes:
        rs = [r for r in runs if r["size"] == n]
        steady = [r for r in rs if r["phase"] == "steady"]
        mint = [r for r in rs if r["phase"] == "mint"]
        cold = {r["round"]: r for r in rs if r["phase"] == "cold"}
        s = {"facts": facts.get(n, {}), "steady": {}, "mint": {}, "cold": {}}
        for script in ["floor", "verify", "postgrest"]:
            rows = [r for r in steady if r["script"] == script]
            txns = sum(r["txns"] for r in rows)
            s["steady"][script] = {
                "tps": [r["tps"] for r in rows],
                "median_tps": median(r["tps"] for r in rows),
                "wal_bytes_per_txn": sum(r["wal_bytes"] for r in rows) / txns if txns else None,
                "writes": sum(r["writes"] for r in rows),
                "lock_waits": sum(r["lock_waits"] for r in rows),
            }
        s["ratios"] = {
            "b_over_a": median(per_round_ratio(steady, "verify", "floor")),
            "c_over_a": median(per_round_ratio(steady, "postgrest", "floor")),
        }
        for script in ["create_key", "bare_insert"]:
            rows = [r for r in mint if r["script"] == script]
            txns = sum(r["txns"] for r in rows)
            s["mint"][script] = {
                "tps": [r["tps"] for r in rows],
                "median_tps": median(r["tps"] for r in rows) if rows else None,
                "wal_bytes_per_txn": sum(r["wal_bytes"] for r in rows) / txns if txns else None,
            }
        if mint:
            s["ratios"]["d_over_bare"] = median(per_round_ratio(mint, "create_key", "bare_insert"))
        floor = s["steady"]["floor"]["median_tps"]
        names = {1: "spread", 2: "contended", 3: "again", 4: "in_transaction"}
        f = s["facts"]
        used = {1: f.get("cold_spread_used_keys"), 2: f.get("cold_contended_used_keys"),
                4: f.get("cold_tx_used_keys")}
        # the usage engine's flush after the run writes what the run recorded
        flush_wal = {1: f.get("cold_spread_flush_wal", 0), 2: f.get("cold_contended_flush_wal", 0),
                     3: f.get("cold_again_flush_wal", 0), 4: 0}
        # floor runs of the same shape as a cold set (rounds 5 and 6: before
        # the engine's spread set and before the one without the preload)
        same_shape = {1: cold.get(5), 2: cold.get(5), 3: cold.get(5), 4: cold.get(6)}
        for rnd, r in sorted(cold.items()):
            if rnd in (5, 6):
                continue
            ff = same_shape.get(rnd)
            s["cold"][names.get(rnd, str(rnd))] = {
                "ratio_to_same_shape_floor": r["tps"] / ff["tps"] if ff else None,
                "verifies": r["txns"], "tps": r["tps"], "ratio_to_floor": r["tps"] / floor,
                "last_used_at_writes": r["writes"], "keys_stamped": used.get(rnd),
                "lock_waits": r["lock_waits"], "wal_bytes_per_verify": r["wal_bytes"] / r["txns"],
                "wal_bytes_per_verify_with_flush": (r["wal_bytes"] + (flush_wal.get(rnd) or 0)) / r["txns"],
            }
        lim = [r for r in rs if r["phase"] == "limits"]
        if lim:
            s["limits"] = {
                "ratio": median(per_round_ratio(lim, "check", "floor")),
                "floor": median(r["tps"] for r in lim if r["script"] == "floor"),
                "check": median(r["tps"] for r in lim if r["script"] == "check"),
            }
        hot = [r for r in rs if r["phase"] == "hot"]
        if hot:
            s["hot_tps"] = hot[0]["tps"]
        out[n] = s
    return out


SAME = "/(a')"


def fmt_n(n) -> str:
    return f"{n:,}"


def report(summary, general) -> list[str]:
    L = []
    g = general
    L.append(f"pg_apikeys {g.get('extension_version')} bench on PostgreSQL {g.get('pg_version')}: "
             f"{g.get('cpus')} CPUs ({g.get('cpu_model')}), {g.get('mem_total_mb')} MB, "
             f"shared_buffers {g.get('shared_buffers')}")
    L.append(f"pgbench -M prepared -c {g.get('clients')} -j {g.get('jobs')}, Unix socket; "
             f"{g.get('rounds')} alternating rounds x {g.get('seconds')} s ((d): {g.get('mint_seconds')} s); "
             f"apikeys.last_used_interval = {g.get('last_used_interval')} s; "
             f"load average {g.get('load_avg_at_start')} at start, {g.get('load_avg_at_end')} at end; "
             f"{g.get('total_s')} s in all")
    L.append("")
    L.append("Steady state (every key used within the interval): TPS per round")
    L.append(f"{'keys':>12}  {'':16}{'rounds':>26}  {'median':>8}  {'WAL B/txn':>9}  {'writes':>6}")
    for n, s in summary.items():
        for i, (script, label) in enumerate(STEADY):
            st = s["steady"][script]
            rounds = " ".join(f"{t:8.0f}" for t in st["tps"])
            L.append(f"{fmt_n(n) if i == 0 else '':>12}  {label:16}{rounds:>26}  {st['median_tps']:8.0f}  "
                     f"{st['wal_bytes_per_txn']:9.3f}  {st['writes']:6d}")
    L.append("")
    L.append("Ratios (median of the per-round ratios)")
    L.append(f"{'keys':>12}  {'(b)/(a)':>8}  {'(c)/(a)':>8}  {'(d)/(bare)':>10}  "
             f"{'create_key':>10}  {'bare':>8}  {'WAL B: create_key':>17}  {'bare':>6}")
    for n, s in summary.items():
        r, m = s["ratios"], s["mint"]
        L.append(f"{fmt_n(n):>12}  {r['b_over_a']:8.3f}  {r['c_over_a']:8.3f}  {r.get('d_over_bare', 0):10.3f}  "
                 f"{m['create_key']['median_tps'] or 0:10.0f}  {m['bare_insert']['median_tps'] or 0:8.0f}  "
                 f"{m['create_key']['wal_bytes_per_txn'] or 0:17.0f}  {m['bare_insert']['wal_bytes_per_txn'] or 0:6.0f}")
    L.append("")
    L.append("Cold verifies (never-used keys: first use in the interval), pgbench, same clients")
    L.append("  (usage engine unless marked; writes = last_used_at updates during the run; the WAL with the")
    L.append("   flush adds the usage engine's flush that wrote the run's use afterwards)")
    L.append("  /(a): to the steady floor's median; /(a'): to the floor run over a set of the same shape")
    L.append("  (the same short pgbench run, right before), which leaves out what a short run costs anyway")
    L.append(f"{'keys':>12}  {'set':38}{'verifies':>9}  {'TPS':>7}  {'/(a)':>6}  {SAME:>6}  {'writes':>7}  "
             f"{'stamped':>7}  {'lock waits':>10}  {'WAL B/verify':>12}  {'with flush':>10}")
    what = {"spread": "each key once, clients apart",
            "contended": "every client the same keys, in step",
            "again": "first set again, within interval",
            "in_transaction": "each key once, NO preload (in transaction)"}
    for n, s in summary.items():
        for i, (name, c) in enumerate(s["cold"].items()):
            stamped = "" if c["keys_stamped"] is None else c["keys_stamped"]
            L.append(f"{fmt_n(n) if i == 0 else '':>12}  {what.get(name, name):38}{c['verifies']:9d}  {c['tps']:7.0f}  "
                     f"{c['ratio_to_floor']:6.3f}  {c['ratio_to_same_shape_floor'] or 0:6.3f}  "
                     f"{c['last_used_at_writes']:7d}  {stamped:>7}  "
                     f"{c['lock_waits']:10d}  {c['wal_bytes_per_verify']:12.1f}  "
                     f"{c['wal_bytes_per_verify_with_flush']:10.1f}")
    L.append("")
    L.append("Limits: (e) check_key on keys with a rate limit and credits, vs (a) over the same keys")
    for n, s in summary.items():
        lim = s.get("limits")
        if not lim:
            continue
        f = s["facts"]
        L.append(f"  {fmt_n(n):>12} keys ({f.get('limit_keys', 0):,} limited): (e)/(a) {lim['ratio']:.3f}  "
                 f"(a) {lim['floor']:.0f} tps, (e) {lim['check']:.0f} tps; limits table "
                 f"{f.get('limits_shmem_bytes', 0) / 2**20:.1f} MB for {f.get('limit_slots', 0):,} slots")
        if f.get("hot_limit"):
            secs = f["hot_seconds"]
            L.append(f"  {'':>12}  one hot key, {f['hot_limit']:,}/s, {s.get('hot_tps', 0):.0f} checks/s: "
                     f"{f['hot_accepted']:,} accepted in {secs:.1f} s ({f['hot_accepted'] / secs:,.0f}/s), "
                     f"{f['hot_refused']:,} refused")
    L.append("")
    L.append("Usage engine")
    for n, s in summary.items():
        f = s["facts"]
        if f.get("flush_keys"):
            L.append(f"  {fmt_n(n):>12} keys: one flush of {f['flush_keys']:,} distinct keys ({f.get('flush_pending', 0):,} entries): "
                     f"{f['flush_s']:.3f} s, {f['flush_wal'] / 2**20:.1f} MB WAL "
                     f"({f['flush_wal'] / f['flush_keys']:.0f} B per key; key_usage rows after: {f.get('flush_rows', 0):,})")
        if f.get("usage_shmem_bytes"):
            per = f["usage_shmem_bytes"] / f["usage_slots"]
            L.append(f"  {fmt_n(n):>12} keys: shared memory {f['usage_shmem_bytes'] / 2**20:.1f} MB for "
                     f"{f['usage_slots']:,} slots ({per:.1f} B each; the default 65,536 slots: "
                     f"{per * 65536 / 2**20:.1f} MB)")
    L.append("")
    L.append("Loading")
    L.append(f"{'keys':>12}  {'mint s':>8}  {'keys/s':>7}  {'warm s':>7}  {'vacuum s':>8}  {'database':>9}  {'hot set':>8}"
             f"  {'warm lock waits (extension)':>27}")
    for n, s in summary.items():
        f = s["facts"]
        vac = (f.get("vacuum_after_load_s") or 0) + (f.get("vacuum_prewarm_s") or 0)
        L.append(f"{fmt_n(n):>12}  {f.get('load_s', 0):8.1f}  {f.get('load_keys_per_s', 0):7d}  {f.get('warm_s', 0):7.1f}  "
                 f"{vac:8.1f}  {f.get('db_bytes', 0) / 2**20:7.0f}MB  {f.get('hot_bytes', 0) / 2**20:6.0f}MB"
                 f"  {f.get('warm_lock_waits', 0):>17} ({f.get('warm_lock_waits_extension', 0)})")
    L.append("  (mint: create_key in big transactions, parallel sessions; warm: one verify_key per key,")
    L.append("   big statements as the client role; vacuum: after load, and VACUUM (ANALYZE) + CHECKPOINT + pg_prewarm)")
    mem = next(((n, s["facts"]) for n, s in summary.items() if "mem_verifies" in s["facts"]), None)
    if mem:
        n, f = mem
        L.append("")
        L.append(f"Memory: {f['mem_verifies']:,} verifies in one backend ({fmt_n(n)} keys, "
                 f"{f['mem_loop_s']} s, {f['mem_verifies'] / f['mem_loop_s']:,.0f}/s), kB before -> after:")
        for k in ["RssAnon", "VmRSS", "RssShmem", "VmHWM"]:
            b, a = f[f"mem_before_{k}_kB"], f[f"mem_after_{k}_kB"]
            L.append(f"  {k:9} {b:9,} -> {a:9,}  ({a - b:+,})")
        L.append("  (RssAnon is the backend's own memory; RssShmem grows as it touches more of shared_buffers)")
    # targets
    L.append("")
    L.append("Targets")
    sizes = list(summary)
    for n, s in summary.items():
        v = s["ratios"]["b_over_a"]
        L.append(f"  (b)/(a) >= 0.85 at {fmt_n(n)} keys: {v:.3f}  {'met' if v >= TARGETS['b_over_a'] else 'NOT met'}")
    for n, s in summary.items():
        if "limits" in s:
            v = s["limits"]["ratio"]
            L.append(f"  check_key with a rate limit and credits >= 0.8 of the floor at {fmt_n(n)} keys: {v:.3f}  "
                     f"{'met' if v >= 0.8 else 'NOT met'}")
        f = s["facts"]
        if f.get("hot_limit"):
            secs = f["hot_seconds"]
            most = f["hot_limit"] * (int(secs) + 2)
            ok = f["hot_accepted"] <= most
            L.append(f"  one hot key admits at most its limit per window at {fmt_n(n)} keys: "
                     f"{f['hot_accepted']:,} <= {most:,} ({int(secs) + 2} windows touched)  {'met' if ok else 'NOT met'}")
    for n, s in summary.items():
        v = s["steady"]["verify"]["wal_bytes_per_txn"]
        L.append(f"  WAL per steady verify at {fmt_n(n)} keys (the usage engine's flushes of key_usage included): "
                 f"{v:.3f} B")
    for n, s in summary.items():
        c = s["cold"]
        ok = all(x["lock_waits"] == 0 for x in c.values())
        if "contended" in c and c["contended"]["keys_stamped"] is not None:
            ok = ok and c["contended"]["last_used_at_writes"] <= c["contended"]["keys_stamped"]
        if "spread" in c and c["spread"]["keys_stamped"] is not None:
            ok = ok and c["spread"]["last_used_at_writes"] <= c["spread"]["keys_stamped"]
        if "again" in c:
            ok = ok and c["again"]["last_used_at_writes"] == 0
        L.append(f"  cold at {fmt_n(n)} keys: writes <= keys stamped, none again within the interval, "
                 f"no lock wait: {'met' if ok else 'NOT met'}")
        v = c.get("spread", {}).get("ratio_to_same_shape_floor") or 0
        v0 = c.get("spread", {}).get("ratio_to_floor", 0)
        tx = c.get("in_transaction", {}).get("ratio_to_same_shape_floor")
        L.append(f"  cold path with the usage engine >= 0.85 of the floor at {fmt_n(n)} keys: {v:.3f}  "
                 f"{'met' if v >= 0.85 else 'NOT met'} (to the steady floor: {v0:.3f}"
                 + (f"; without the preload: {tx:.3f})" if tx is not None else ")"))
    if len(sizes) > 1:
        lo, hi = sizes[0], sizes[-1]
        v = summary[hi]["steady"]["verify"]["median_tps"] / summary[lo]["steady"]["verify"]["median_tps"]
        note = "" if hi >= 10_000_000 else " (the target is stated for 10 M keys)"
        fl = summary[hi]["steady"]["floor"]["median_tps"] / summary[lo]["steady"]["floor"]["median_tps"]
        L.append(f"  (b) at {fmt_n(hi)} / (b) at {fmt_n(lo)} >= 0.77: {v:.3f}  "
                 f"{'met' if v >= TARGETS['flat'] else 'NOT met'}{note}; the floor's own: (a) {fl:.3f}")
    if mem:
        n, f = mem
        d = f["mem_after_RssAnon_kB"] - f["mem_before_RssAnon_kB"]
        L.append(f"  backend memory flat across {f['mem_verifies']:,} verifies: RssAnon {d:+,} kB  "
                 f"{'met' if d <= 1024 else 'NOT met'} (flat: within 1 MB)")
    return L


def chart(summary, general, path: str) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sizes = list(summary)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for script, label in STEADY:
        med = [summary[n]["steady"][script]["median_tps"] for n in sizes]
        lo = [m - min(summary[n]["steady"][script]["tps"]) for m, n in zip(med, sizes)]
        hi = [max(summary[n]["steady"][script]["tps"]) - m for m, n in zip(med, sizes)]
        ax1.errorbar(sizes, med, yerr=[lo, hi], marker="o", capsize=4, label=label)
    ax1.set_xscale("log")
    ax1.set_ylim(bottom=0)
    ax1.set_xlabel("keys")
    ax1.set_ylabel("TPS (median; bars: min-max of rounds)")
    ax1.set_title("Throughput vs key count")
    ax1.legend()
    ax1.grid(alpha=0.3)
    for key, label in [("b_over_a", "(b)/(a) verify_key / floor"), ("c_over_a", "(c)/(a) PostgREST / floor")]:
        ax2.plot(sizes, [summary[n]["ratios"][key] for n in sizes], marker="o", label=label)
    ax2.axhline(TARGETS["b_over_a"], color="grey", linestyle="--", label="target (b)/(a) = 0.85")
    ax2.set_xscale("log")
    ax2.set_ylim(0, 1.1)
    ax2.set_xlabel("keys")
    ax2.set_title("Ratio to the floor (median of rounds)")
    ax2.legend(loc="lower left")
    ax2.grid(alpha=0.3)
    fig.suptitle(f"pg_apikeys {general.get('extension_version')}, PostgreSQL {general.get('pg_version')}, "
                 f"{general.get('cpus')} CPUs, pgbench -M prepared -c {general.get('clients')}, "
                 f"steady state", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", required=True)
    ap.add_argument("--facts", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--chart")
    ap.add_argument("--publish", help="also copy the chart here (docs/performance.png)")
    a = ap.parse_args()
    runs, facts = load(a.runs, a.facts)
    general = facts.pop(0, {})
    summary = summarise(runs, facts)
    lines = report(summary, general)
    print("\n".join(lines))
    with open(a.json, "w") as f:
        json.dump({"machine_and_settings": general, "sizes": {str(n): s for n, s in summary.items()},
                   "runs": runs, "summary": lines}, f, indent=2)
    print(f"\nresults: {a.json}")
    if a.chart:
        if chart(summary, general, a.chart):
            print(f"chart: {a.chart}")
            if a.publish:
                shutil.copyfile(a.chart, a.publish)
                print(f"chart copied to {a.publish}")
        else:
            print("chart: skipped (no matplotlib)")


if __name__ == "__main__":
    main()
