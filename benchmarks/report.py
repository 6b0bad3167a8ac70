"""The tables the anchors' aggregator does not make, from one session's JSON lines.

Usage: python benchmarks/report.py results/<stamp>   (prints markdown; run_all.sh appends it
to table.md). Reads <library>.jsonl (the harness phases of asyncjobs and every anchor),
concurrent.jsonl (enqueue with 100 concurrent callers, one line per library and round),
extra.jsonl (run_async, SSE lag, limits; one line per round) and growth.jsonl (growth, soak).
Cells are "median (min–max)" over the rounds, formatted by the anchors' own aggregate.py. The
claim and completion plans of the growth phase are written to <folder>/plans/. Every target of
issues 12 and 14 is a row that says met, not met, or not measured (its phase did not run).
"""

from __future__ import annotations

import os
import re
import statistics
import sys
from pathlib import Path
from typing import Any

HARNESS = Path(os.environ.get("BENCH_HARNESS")
               or Path(__file__).resolve().parents[2] / "shared" / "bench-anchors")
sys.path.insert(0, str(HARNESS))

from aggregate import cell, load  # noqa: E402  (the anchors' aggregator)

ANCHORS = ["dbos", "graphile-worker", "oban", "pgqueuer", "procrastinate"]
OURS = "asyncjobs"
# harness result files, one per library (the library name inside is what counts)
LIB_FILES = ["asyncjobs", "pgqueuer", "procrastinate", "graphile", "dbos", "oban"]
MET, NOT_MET, UNMEASURED = "met", "**not met**", "not measured"


def dig(run: dict[str, Any], *keys: str) -> Any:
    value: Any = run
    for key in keys:
        value = value[key]
    return value


def median_of(runs: list[dict[str, Any]], keys: tuple[str, ...]) -> float | None:
    values = []
    for run in runs:
        try:
            values.append(float(dig(run, *keys)))
        except (KeyError, TypeError):
            continue
    return statistics.median(values) if values else None


def verdict(ok: bool | None) -> str:
    return UNMEASURED if ok is None else MET if ok else NOT_MET


# (row, result set, keys under the JSON line, higher is better, target ratio, format); the
# result set is "main" (<library>.jsonl) or "concurrent" (concurrent.jsonl)
RATIO_ROWS: list[tuple[str, str, tuple[str, ...], bool, float, str]] = [
    ("enqueue 1-by-1 jobs/s", "main", ("phases", "enqueue_single", "jobs_per_s"), True, 1.3,
     "{:,.0f}"),
    ("enqueue, 100 concurrent callers jobs/s", "concurrent",
     ("phases", "enqueue_concurrent", "jobs_per_s"), True, 3.0, "{:,.0f}"),
    ("enqueue bulk jobs/s", "main", ("phases", "enqueue_bulk", "jobs_per_s"), True, 1.8,
     "{:,.0f}"),
    ("process c=10 jobs/s", "main", ("phases", "process_c10", "jobs_per_s"), True, 2.0, "{:,.0f}"),
    ("process c=100 jobs/s", "main", ("phases", "process_c100", "jobs_per_s"), True, 2.0,
     "{:,.0f}"),
    ("trigger→start p50 ms", "main", ("phases", "latency", "latency_ms", "p50"), False, 0.75,
     "{:.2f}"),
    ("trigger→start p99 ms", "main", ("phases", "latency", "latency_ms", "p99"), False, 1.0,
     "{:.2f}"),
    ("mixed processed jobs/s", "main", ("phases", "mixed", "processed_per_s"), True, 2.0,
     "{:,.0f}"),
]


def ratio_table(sets: dict[str, dict[str, list[dict[str, Any]]]]) -> list[str]:
    anchors = [a for a in ANCHORS if any(a in by_lib for by_lib in sets.values())]
    out = ["## asyncjobs against the anchors (medians of this session)", "",
           "Ratio = asyncjobs / anchor (throughput: higher is better; latency: lower is better).",
           "",
           "| row | asyncjobs | best anchor | asyncjobs / best | target | met | "
           + " | ".join(f"/ {a}" for a in anchors) + " |",
           "|---|---|---|---|---|---|" + "---|" * len(anchors)]
    for name, source, keys, higher, target, fmt in RATIO_ROWS:
        by_lib = sets[source]
        goal = f"≥ {target:g}×" if higher else f"≤ {target:g}×"
        mine = median_of(by_lib.get(OURS, []), keys)
        meds = {a: median_of(by_lib.get(a, []), keys) for a in anchors}
        known = {a: m for a, m in meds.items() if m}
        if mine is None or not known:
            out.append(f"| {name} | n/a | n/a | n/a | {goal} | {UNMEASURED} |"
                       + " n/a |" * len(anchors))
            continue
        best = (max if higher else min)(known, key=lambda a: known[a])
        ratio = mine / known[best]
        met = ratio >= target if higher else ratio <= target
        per = [f"{mine / m:.2f}" if m else "n/a" for m in meds.values()]
        out.append(f"| {name} | {fmt.format(mine)} | {best} {fmt.format(known[best])} | "
                   f"{ratio:.2f} | {goal} | {verdict(met)} | " + " | ".join(per) + " |")
    return out


def concurrent_table(by_lib: dict[str, list[dict[str, Any]]]) -> list[str]:
    if not by_lib:
        return []
    out = ["## Enqueue with 100 concurrent callers (per library)", "",
           "100 tasks (Node: promises) share one producer, each enqueueing its share one call "
           "at a time; how each library's producer is built: `config.concurrent_producer` in "
           "concurrent.jsonl, and benchmarks/README.md.", "",
           "| library | runs | jobs/s | call p50 ms | call p99 ms | cores process / pg | "
           "commits / rows inserted per job | verified |",
           "|---|---|---|---|---|---|---|---|"]
    for lib in sorted(by_lib):
        runs = by_lib[lib]

        def c(*keys: str, fmt: str = "{:.2f}", runs: list[dict[str, Any]] = runs) -> str:
            return cell(runs, lambda line: dig(line, "phases", "enqueue_concurrent", *keys), fmt)

        cores = "python_cores" if lib != "graphile-worker" else "node_cores"
        out.append(
            f"| {lib} | {len(runs)} | {c('jobs_per_s', fmt='{:,.0f}')} | "
            f"{c('enqueue_call_ms', 'p50')} | {c('enqueue_call_ms', 'p99')} | "
            f"{c('cpu', cores).split(' ')[0]} / {c('cpu', 'postgres_cores').split(' ')[0]} | "
            f"{c('db_per_job', 'xact_commit').split(' ')[0]} / "
            f"{c('db_per_job', 'tup_inserted').split(' ')[0]} | "
            f"{'yes' if all(r.get('all_verified') for r in runs) else '**NO**'} |")
    return out


def cpu_ms_per_job(runs: list[dict[str, Any]], phase: str, side: str) -> float | None:
    """Median over rounds of CPU ms per job of one phase; side python_cpu_s (node_cpu_s for
    the Node library) or postgres_cpu_s."""
    values = []
    for run in runs:
        try:
            p = run["phases"][phase]
            jobs = p.get("jobs") or p.get("processed_in_window")
            cpu = p["cpu"].get(side, p["cpu"].get("node_cpu_s"))
            if cpu is not None and jobs:
                values.append(cpu / jobs * 1000)
        except (KeyError, TypeError):
            continue
    return statistics.median(values) if values else None


def cpu_per_job_table(by_lib: dict[str, list[dict[str, Any]]]) -> list[str]:
    phases = ["enqueue_single", "enqueue_bulk", "process_c10", "process_c100", "mixed"]
    out = ["## CPU per job, ms (median of rounds): benchmark process / PostgreSQL server", "",
           "Process CPU = CPU seconds of the benchmark process (producer, worker and observer "
           "share it) / jobs; server CPU includes every postgres process on the machine.", "",
           "| library | " + " | ".join(phases) + " |", "|---|" + "---|" * len(phases)]
    for lib in sorted(by_lib):
        if lib.startswith("raw-") or lib == "asyncjobs-extra":
            continue
        row = [lib]
        for phase in phases:
            cells = [cpu_ms_per_job(by_lib[lib], phase, side)
                     for side in ("python_cpu_s", "postgres_cpu_s")]
            row.append(" / ".join("n/a" if v is None else f"{v:.3f}" for v in cells))
        out.append("| " + " | ".join(row) + " |")
    return out


def extra_table(runs: list[dict[str, Any]]) -> list[str]:
    def c(*keys: str, fmt: str = "{:.2f}") -> str:
        return cell(runs, lambda r: dig(r, "phases", *keys), fmt)

    sse_skipped = {r["phases"].get("sse_lag", {}).get("skipped") for r in runs} - {None}
    out = ["## Rows no anchor has (asyncjobs only)", "",
           "| row | p50 ms | p95 ms | p99 ms | max ms | target | notes |",
           "|---|---|---|---|---|---|---|",
           f"| run_async round trip (idle worker c=10, sequential) | "
           f"{c('run_async', 'round_trip_ms', 'p50')} | {c('run_async', 'round_trip_ms', 'p95')} | "
           f"{c('run_async', 'round_trip_ms', 'p99')} | {c('run_async', 'round_trip_ms', 'max')} | "
           f"p50 < 3 | trigger call alone p50 {c('run_async', 'trigger_call_ms', 'p50')} ms |"]
    if sse_skipped:
        out.append(f"| SSE lag | skipped: {'; '.join(sorted(sse_skipped))} | | | | p50 < 50 | |")
        return out
    for kind, label in (("pending", "trigger → `pending` at subscriber"),
                        ("succeeded", "job returned → `succeeded` at subscriber")):
        key = f"lag_{kind}_ms"
        out.append(
            f"| SSE lag, {label} (100 clients, /api/events) | {c('sse_lag', key, 'p50')} | "
            f"{c('sse_lag', key, 'p95')} | {c('sse_lag', key, 'p99')} | "
            f"{c('sse_lag', key, 'max')} | p50 < 50 | delivered "
            f"{c('sse_lag', f'delivered_{kind}', fmt='{:,.0f}')} of "
            f"{c('sse_lag', 'expected_per_kind', fmt='{:,.0f}')} |")
    out += ["", f"Dashboard process CPU during the SSE window: "
                f"{c('sse_lag', 'dashboard_process_cores')} cores; benchmark process (100 clients "
                f"+ worker + trigger loop): {c('sse_lag', 'cpu', 'python_cores')} cores."]
    return out


def completion_plan(explain: dict[str, Any]) -> tuple[str, float | None]:
    """The completion's own auto_explain notice and its duration (older result files hold
    every notice of the completion step in one text)."""
    for block in re.split(r"(?=duration: )", explain.get("complete_plan", "")):
        if "retry_in" in block and "typeinfo_tree" not in block:
            found = re.match(r"duration: ([\d.]+) ms", block)
            return block, float(found.group(1)) if found else None
    return "", None


def mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2**20:,.1f}"


def growth_table(line: dict[str, Any], folder: Path) -> list[str]:
    sizes = line["phases"].get("growth", {}).get("sizes", {})
    if not sizes:
        return []
    (folder / "plans").mkdir(exist_ok=True)
    out = ["## Cost growth (one run, end of the session)", "",
           "Backlog inserted with `trigger_many` (5,000 a call), VACUUM ANALYZE, then a worker "
           "with c=100 processes the first 10,000 runs. Claim plan: auto_explain of the statement "
           "inside `claim_runs` (6th call of the session, 100 runs), plans in `plans/`.", "",
           "| backlog | insert runs/s | claim: scan on runs | claim ms (auto_explain) | "
           "complete 100 ms | process c=100 jobs/s | cores py / pg | commits / ins / upd per job | "
           "runs heap MiB | run_events heap MiB | indexes MiB |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for size, g in sizes.items():
        ex, pr, rel = g["explain"], g["process"], g["relation_bytes"]
        complete_plan, complete_ms = completion_plan(ex)
        (folder / "plans" / f"claim-{size}.txt").write_text(ex.get("claim_plan", ""))
        (folder / "plans" / f"complete-{size}.txt").write_text(complete_plan)
        scans = [s for s in ex.get("claim_scans", []) if s.endswith(" runs")]
        heap_runs = rel.get("runs")
        heap_events = rel.get("run_events")
        indexes = sum(v for k, v in rel.items() if k not in ("runs", "run_events"))
        db = pr.get("db_per_job", {})
        out.append(
            f"| {int(size):,} | {g['preload']['runs_per_s']:,.0f} | "
            f"{'; '.join(scans) or ex.get('error', 'n/a')} | {ex.get('claim_exec_ms')} | "
            f"{complete_ms} | {pr['jobs_per_s']:,.0f}"
            f"{' (capped: ' + format(pr['jobs'], ',') + ' done)' if pr.get('capped') else ''} | "
            f"{pr['cpu']['python_cores']} / {pr['cpu']['postgres_cores']} | "
            f"{db.get('xact_commit')} / {db.get('tup_inserted')} / {db.get('tup_updated')} | "
            f"{mib(heap_runs)} | {mib(heap_events)} | {mib(indexes)} |")
    return out


def soak_table(line: dict[str, Any]) -> list[str]:
    s = line["phases"].get("soak")
    if not s:
        return []
    rss = s["rss_mib"]
    return ["## Worker memory over a soak (one run)", "",
            f"{s['runs']:,} runs queued by a child process, then one worker (c={s['concurrency']}) "
            "in the sampled process; RSS from /proc/self/status every second.", "",
            "| runs | jobs/s | RSS start MiB | at half | peak | end | growth in 2nd half, MiB "
            "per 10k runs | gc objects before / after | verified |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| {s['runs']:,} | {s['jobs_per_s']:,.0f} | {rss['start']} | {rss['at_half']} | "
            f"{rss['peak']} | {rss['end']} | {s['rss_mib_per_10k_runs_second_half']} | "
            f"{s['gc_objects']['before']:,} / {s['gc_objects']['after']:,} | {s['verified']} |",
            "",
            f"Claim plan at the start (no ANALYZE after the bulk insert): "
            f"{'; '.join(s.get('claim_scans_at_start', [])) or 'n/a'}; autovacuum analyzed "
            f"`runs` during the soak: {s.get('autoanalyzed_during_soak', 'n/a')}."]


def limits_table(runs: list[dict[str, Any]]) -> list[str]:
    lines = [r["phases"]["limits"] for r in runs if "limits" in r.get("phases", {})]
    if not lines:
        return []
    rates = {v: [x for line in lines for x in line["jobs_per_s"][v]]
             for v in ("plain", "keyed", "rated")}
    med = {v: statistics.median(xs) for v, xs in rates.items()}

    def spread(xs: list[float]) -> str:
        return f"{statistics.median(xs):,.0f} ({min(xs):,.0f}–{max(xs):,.0f})"

    rounds = sum(line["rounds"] for line in lines)
    out = ["## Cost of limits (asyncjobs, worker c=100)", "",
           f"{lines[0]['n']:,} runs per variant and round, {rounds} round(s) in all, variants "
           "interleaved, a fresh database each: a plain job, a job with a per-key limit (100 "
           "keys of 10 slots) and one with a rate limit that does not bind (10,000/s).", "",
           "| variant | jobs/s | / plain | target | met |", "|---|---|---|---|---|",
           f"| plain | {spread(rates['plain'])} | 1.00 | | |"]
    for variant, label in (("keyed", "per-key limit"), ("rated", "rate limit (not binding)")):
        ratio = med[variant] / med["plain"]
        out.append(f"| {label} | {spread(rates[variant])} | {ratio:.2f} | ≥ 0.8× | "
                   f"{verdict(ratio >= 0.8)} |")
    ok = all(line["verified"] for line in lines)
    out += ["", f"Every limits run processed every run once: {'yes' if ok else '**NO**'}."]
    return out


def growth_ratio(growth: dict[str, Any] | None) -> tuple[str, str, bool | None, str]:
    """(row, cell, met, note) for "throughput at 1M pending >= 0.8x the 10k figure": the
    largest backlog of the growth phase against the smallest (10k and 1M by default)."""
    sizes = (growth or {}).get("phases", {}).get("growth", {}).get("sizes", {})
    if len(sizes) < 2:
        return ("process c=100 at 1M pending / at 10k pending", "n/a", None,
                "needs the growth phase with two sizes or more")
    small, big = min(sizes, key=int), max(sizes, key=int)
    rate_small, rate_big = (sizes[k]["process"] for k in (small, big))
    ratio = rate_big["jobs_per_s"] / rate_small["jobs_per_s"]
    note = f"{rate_big['jobs_per_s']:,.0f} vs {rate_small['jobs_per_s']:,.0f} jobs/s"
    if rate_big.get("capped"):
        note += f"; capped at {rate_big['jobs']:,} runs"
    if (small, big) != ("10000", "1000000"):
        note += "; the target is set for 10k and 1M"
    return (f"process c=100 at {int(big):,} pending / at {int(small):,} pending",
            f"{ratio:.2f}×", ratio >= 0.8, note)


def targets_table(main: dict[str, list[dict[str, Any]]], extra: list[dict[str, Any]],
                  growth: dict[str, Any] | None) -> list[str]:
    """The targets that are not a ratio to the best anchor (those are in the ratio table)."""
    rows: list[tuple[str, str, str, bool | None, str]] = []  # row, value, target, met, note

    def extra_median(*keys: str) -> float | None:
        return median_of(extra, ("phases", *keys))

    value = extra_median("run_async", "round_trip_ms", "p50")
    rows.append(("run_async round trip p50 (idle worker c=10)",
                 "n/a" if value is None else f"{value:.2f} ms", "< 3 ms",
                 None if value is None else value < 3, ""))
    for kind in ("pending", "succeeded"):
        value = extra_median("sse_lag", f"lag_{kind}_ms", "p50")
        rows.append((f"SSE lag p50, `{kind}` (100 clients)",
                     "n/a" if value is None else f"{value:.1f} ms", "< 50 ms",
                     None if value is None else value < 50, ""))
    for c in (10, 100):
        mine = cpu_ms_per_job(main.get(OURS, []), f"process_c{c}", "python_cpu_s")
        theirs = cpu_ms_per_job(main.get("pgqueuer", []), f"process_c{c}", "python_cpu_s")
        label = f"Python CPU per processed job, process c={c}"
        if mine is None or theirs is None:
            rows.append((label, "n/a", "≤ pgqueuer", None, ""))
        else:
            rows.append((label, f"{mine:.3f} ms", f"≤ pgqueuer ({theirs:.3f} ms)",
                         mine <= theirs, f"{mine / theirs:.2f}× pgqueuer"))
    row, cell_, met, note = growth_ratio(growth)
    rows.append((row, cell_, "≥ 0.8×", met, note))
    limits = [r["phases"]["limits"] for r in extra if "limits" in r.get("phases", {})]
    for variant, label in (("keyed", "per-key limit"), ("rated", "rate limit (not binding)")):
        row = f"process c=100 with a {label} / plain job"
        if not limits:
            rows.append((row, "n/a", "≥ 0.8×", None, ""))
            continue
        med = {v: statistics.median(x for line in limits for x in line["jobs_per_s"][v])
               for v in ("plain", variant)}
        ratio = med[variant] / med["plain"]
        rows.append((row, f"{ratio:.2f}×", "≥ 0.8×", ratio >= 0.8,
                     f"{med[variant]:,.0f} vs {med['plain']:,.0f} jobs/s"))
    out = ["## Targets that are not a ratio to an anchor (medians of this session)", "",
           "| row | asyncjobs | target | met | notes |", "|---|---|---|---|---|"]
    out += [f"| {row} | {value_} | {target} | {verdict(ok)} | {note_} |"
            for row, value_, target, ok, note_ in rows]
    return out


def main(folder: Path) -> None:
    files = [folder / f"{n}.jsonl" for n in LIB_FILES]
    by_lib = load([str(f) for f in files if f.exists()])
    concurrent_file = folder / "concurrent.jsonl"
    concurrent = load([str(concurrent_file)]) if concurrent_file.exists() else {}
    extra_file, growth_file = folder / "extra.jsonl", folder / "growth.jsonl"
    extra = load([str(extra_file)])["asyncjobs-extra"] if extra_file.exists() else []
    growth = load([str(growth_file)])["asyncjobs-extra"][-1] if growth_file.exists() else None
    sections = [ratio_table({"main": by_lib, "concurrent": concurrent}),
                targets_table(by_lib, extra, growth), concurrent_table(concurrent),
                cpu_per_job_table(by_lib)]
    if extra:
        sections += [extra_table(extra), limits_table(extra)]
    if growth is not None:
        sections += [growth_table(growth, folder), soak_table(growth)]
    verified = {lib: all(r.get("all_verified") for r in runs)
                for lib, runs in [*by_lib.items(), *((f"{k} (concurrent)", v)
                                                     for k, v in concurrent.items())]}
    sections.append(["Every phase verified (all jobs executed once and completed in the DB): "
                     + ", ".join(f"{lib} {'yes' if ok else '**NO**'}"
                                 for lib, ok in verified.items())])
    print("\n\n".join("\n".join(lines) for lines in sections if lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
