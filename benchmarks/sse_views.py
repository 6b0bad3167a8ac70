"""SSE lag with and without the dashboard's views open (issue 15), on a private server.

Runs ``bench_extra.py --phases sse_lag`` ``--rounds`` times for each of: no views open,
``--sse-views browser`` (headless Chromium tabs) and, with ``--http``, ``--sse-views http`` (the
same polls from httpx, no browser), interleaved round by round, against a private PostgreSQL
(``asyncjobs.embedded``) so no other database's transactions hold the feed back: the feed's
"final" rule reads ``pg_current_snapshot()``, whose xmin is cluster-wide, so on a shared server
one long transaction in any database delays every event by the feed's grace (5 s). Prints one
JSON line per round (with ``uptime``'s load average before it) and a Markdown table of medians.

Usage: BENCH_HARNESS=../shared/bench-anchors python benchmarks/sse_views.py [--rounds 3]
       [bench_extra options, e.g. --sse-runs 400 for a 20 s window at 50 ms]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

from asyncjobs.embedded import EmbeddedPostgres

HERE = Path(__file__).resolve().parent


def one_round(env: dict[str, str], views: str, extra: list[str]) -> dict[str, object]:
    load = os.getloadavg()
    cmd = [sys.executable, str(HERE / "bench_extra.py"), "--phases", "sse_lag", *extra]
    out = subprocess.run(
        cmd + ([] if views == "no" else ["--sse-views", views]),
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    phase = json.loads(out.strip().splitlines()[-1])["phases"]["sse_lag"]
    return {**phase, "views_open": views, "loadavg_1_5_15": [round(x, 2) for x in load]}


def table(rounds: list[dict[str, object]]) -> str:
    lines = [
        "| views open | rounds | pending p50 ms | pending p99 ms | succeeded p50 ms | "
        "succeeded p99 ms | view API requests/s | browser cores | dashboard cores | "
        "load avg (1 min) | all delivered |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for views in ("no", "browser", "http"):
        rs = [r for r in rounds if r["views_open"] == views]
        shown = views != "no"
        if not rs:
            continue

        def med(kind: str, q: str, rs: list[dict[str, object]] = rs) -> str:
            return f"{statistics.median(r[kind][q] for r in rs):.1f}"  # type: ignore[index]

        per_s = [r["views"]["api_requests_per_s"] for r in rs if r["views"]]  # type: ignore[index]
        browser = [r["views"].get("browser_cores", 0) for r in rs if r["views"]]  # type: ignore[index]
        served = statistics.median(r["dashboard_process_cores"] for r in rs)  # type: ignore[misc]
        loads = ", ".join(f"{r['loadavg_1_5_15'][0]:.1f}" for r in rs)  # type: ignore[index]
        lines.append(
            f"| {views} | {len(rs)} | {med('lag_pending_ms', 'p50')} | "
            f"{med('lag_pending_ms', 'p99')} | {med('lag_succeeded_ms', 'p50')} | "
            f"{med('lag_succeeded_ms', 'p99')} | "
            f"{statistics.median(per_s) if shown else '—'} | "
            f"{statistics.median(browser) if views == 'browser' else '—'} | {served} | {loads} | "
            f"{all(r['verified'] for r in rs)} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json-out", default=None, help="append each round's JSON line here")
    p.add_argument("--http", action="store_true", help="also rounds with HTTP pollers")
    args, extra = p.parse_known_args()  # the rest goes to bench_extra.py (--sse-clients ...)
    rounds = []
    with EmbeddedPostgres() as pg:
        url = urlsplit(pg.dsn)
        env = {
            **os.environ,
            "BENCH_PGHOST": url.hostname or "127.0.0.1",
            "BENCH_PGPORT": str(url.port),
            "BENCH_PGUSER": url.username or "postgres",
        }
        modes = ["no", "browser", "http"] if args.http else ["no", "browser"]
        for i in range(len(modes) * args.rounds):
            r = one_round(env, views=modes[i % len(modes)], extra=extra)
            line = json.dumps(r, separators=(",", ":"))
            print(line, flush=True)
            if args.json_out:
                with open(args.json_out, "a") as f:
                    f.write(line + "\n")
            rounds.append(r)
    print(table(rounds))


if __name__ == "__main__":
    main()
