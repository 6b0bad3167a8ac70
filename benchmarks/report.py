"""The tables the anchors' aggregator does not make, from one session's JSON lines.

Usage: python benchmarks/report.py results/<stamp>   (prints markdown; run_all.sh appends it
to table.md). Reads asyncjobs/pgqueuer/procrastinate/graphile.jsonl (the harness phases),
extra.jsonl (run_async, SSE lag; one line per round) and growth.jsonl (growth, soak). Cells
are "median (min–max)" over the rounds, formatted by the anchors' own aggregate.py. The claim
and completion plans of the growth phase are written to <folder>/plans/.
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

ANCHORS = ["graphile-worker", "pgqueuer", "procrastinate"]
OURS = "asyncjobs"


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


# (row, keys under the JSON line, higher is better, target ratio, format)
RATIO_ROWS: list[tuple[str, tuple[str, ...], bool, float, str]] = [
    ("enqueue 1-by-1 jobs/s", ("phases", "enqueue_single", "jobs_per_s"), True, 1.3, "{:,.0f}"),
    ("enqueue bulk jobs/s", ("phases", "enqueue_bulk", "jobs_per_s"), True, 1.8, "{:,.0f}"),
    ("process c=10 jobs/s", ("phases", "process_c10", "jobs_per_s"), True, 2.0, "{:,.0f}"),
    ("process c=100 jobs/s", ("phases", "process_c100", "jobs_per_s"), True, 2.0, "{:,.0f}"),
    ("trigger→start p50 ms", ("phases", "latency", "latency_ms", "p50"), False, 0.75, "{:.2f}"),
    ("trigger→start p99 ms", ("phases", "latency", "latency_ms", "p99"), False, 1.0, "{:.2f}"),
    ("mixed processed jobs/s", ("phases", "mixed", "processed_per_s"), True, 2.0, "{:,.0f}"),
]


def ratio_table(by_lib: dict[str, list[dict[str, Any]]]) -> list[str]:
    anchors = [a for a in ANCHORS if a in by_lib]
    out = ["## asyncjobs against the anchors (medians of this session)", "",
           "Ratio = asyncjobs / anchor (throughput: higher is better; latency: lower is better).",
           "",
           "| row | asyncjobs | best anchor | asyncjobs / best | target | met | "
           + " | ".join(f"/ {a}" for a in anchors) + " |",
           "|---|---|---|---|---|---|" + "---|" * len(anchors)]
    ours = by_lib.get(OURS, [])
    for name, keys, higher, target, fmt in RATIO_ROWS:
        mine = median_of(ours, keys)
        meds = {a: median_of(by_lib[a], keys) for a in anchors}
        known = {a: m for a, m in meds.items() if m}
        if mine is None or not known:
            out.append(f"| {name} | n/a | n/a | n/a | | |" + " |" * len(anchors))
            continue
        best = (max if higher else min)(known, key=lambda a: known[a])
        ratio = mine / known[best]
        met = ratio >= target if higher else ratio <= target
        goal = f"≥ {target:g}×" if higher else f"≤ {target:g}×"
        per = [f"{mine / m:.2f}" if m else "n/a" for m in meds.values()]
        out.append(f"| {name} | {fmt.format(mine)} | {best} {fmt.format(known[best])} | "
                   f"{ratio:.2f} | {goal} | {'yes' if met else '**no**'} | "
                   + " | ".join(per) + " |")
    return out


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
            cells = []
            for side in ("python_cpu_s", "postgres_cpu_s"):
                values = []
                for run in by_lib[lib]:
                    try:
                        p = run["phases"][phase]
                        jobs = p.get("jobs") or p.get("processed_in_window")
                        cpu = p["cpu"].get(side, p["cpu"].get("node_cpu_s"))
                        if cpu is not None and jobs:
                            values.append(cpu / jobs * 1000)
                    except (KeyError, TypeError):
                        continue
                cells.append(f"{statistics.median(values):.3f}" if values else "n/a")
            row.append(" / ".join(cells))
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
           f"p50 < 5 | trigger call alone p50 {c('run_async', 'trigger_call_ms', 'p50')} ms |"]
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


def main(folder: Path) -> None:
    files = [folder / f"{n}.jsonl" for n in ("asyncjobs", "pgqueuer", "procrastinate", "graphile")]
    by_lib = load([str(f) for f in files if f.exists()])
    lines = [*ratio_table(by_lib), "", *cpu_per_job_table(by_lib)]
    extra = folder / "extra.jsonl"
    if extra.exists():
        lines += ["", *extra_table(load([str(extra)])["asyncjobs-extra"])]
    growth = folder / "growth.jsonl"
    if growth.exists():
        last = load([str(growth)])["asyncjobs-extra"][-1]
        lines += ["", *growth_table(last, folder), "", *soak_table(last)]
    verified = {lib: all(r.get("all_verified") for r in runs) for lib, runs in by_lib.items()}
    lines += ["", "Every phase verified (all jobs executed once and completed in the DB): "
              + ", ".join(f"{lib} {'yes' if ok else '**NO**'}" for lib, ok in verified.items())]
    print("\n".join(lines))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
