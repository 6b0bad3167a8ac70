"""Every named query is plan-checked or listed as off the hot paths, with the reason.

The table: 100,000 runs in trees of ten (5,000 pending, 5,000 running, the rest finished) and
three events per run, analyzed. Each statement on the claim, completion, dashboard and feed
paths is explained with the parameter values and types the backend sends (``:now`` NULL), as
a custom plan and as a generic one (asyncpg keeps prepared statements, and PostgreSQL turns
to a generic plan after five executions): none may read ``runs`` or ``run_events``
sequentially. Statements whose plan is checked in another file are named with that file.

This would have caught the ``version`` subqueries of get_runs_by_ids_versioned and get_tree,
which looked events up by ``run_id`` with no index for it: the planner walked ``run_events``
backwards by id through every later event of every tree.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from asyncjobs.sql import QUERIES
from tests.plan_support import plan_nodes

pytestmark = pytest.mark.anyio

RUNS = 100_000
PLAN_MODES = ("force_custom_plan", "force_generic_plan")
IDS = list(range(RUNS - 990, RUNS + 1, 10))  # 100 roots among the newest
ROOT = RUNS - 999  # a tree of ten
HOUR = timedelta(hours=1)


def _page(**filters: Any) -> dict[str, Any]:
    """get_runs' parameters: no filter but ``filters``."""
    return {
        "job": None, "status": None, "parent_run_id": None, "root_run_id": None,
        "trigger": None, "before_id": None, "created_after": None, "created_before": None,
        "roots_only": False, "limit": 50, **filters,
    }


#: statement -> the arguments to explain it with, by name (several for filters that change the
#: plan; ``:now`` is added, NULL)
CHECKED: dict[str, list[dict[str, Any]]] = {
    # one run (the fields of asyncjobs.backends.postgres._ENQUEUE_FIELDS)
    "enqueue_runs": [{
        "runs": '[["j1", "default", "{}", 0, null, null, "d", 1, null, null, "user", 10, null,'
                ' null, null, null]]',
        "origin": None,
    }],
    "runs_by_step": [{"parent_run_ids": IDS, "step_keys": ["s"] * len(IDS)}],
    "active_run_ids_by_dedup": [{"jobs": ["j1"], "dedup_ids": ["d"]}],
    "release_step": [{"parent_run_id": ROOT, "step_key": "s"}],
    "sweep": [{"worker_ttl": timedelta(seconds=30), "batch": 500}],
    "get_runs": [
        _page(),
        _page(job="j3"),
        _page(status="pending"),
        _page(root_run_id=ROOT),
        _page(before_id=RUNS // 2, roots_only=True),
        _page(created_after=datetime(2000, 1, 1, tzinfo=UTC)),
    ],
    "get_runs_of_parent": [_page(parent_run_id=ROOT), _page(parent_run_id=ROOT, job="j3")],
    "get_events": [{"run_id": ROOT + 3, "after_id": 0, "limit": 100}],
    "get_runs_by_ids_versioned": [{"ids": IDS}],
    "get_tree": [{"root_run_id": ROOT, "limit": 1000}],
    "run_facts": [{"run_id": ROOT + 3, "worker_ttl": timedelta(seconds=30)}],
    "slot_holders": [{"job": "j1", "queue": "default", "job_full": True, "queue_full": True,
                      "key": "k", "key_full": True}],
    "job_summary": [{"jobs": ["j1"], "window": HOUR}],
    "get_workers": [{"max_runs": 100}],
    "feed_position": [{"grace": timedelta(seconds=5)}],
    "prune_trees": [{"finished_before": datetime(2000, 1, 1, tzinfo=UTC), "max_trees": 500}],
}

#: statements whose plan another test checks, on a table built for it
ELSEWHERE = {
    "claim_runs": "test_schema.py::test_claim_uses_the_pending_index (a plpgsql function)",
    "heartbeat": "test_plans.py (1,000,000 runs, stale statistics)",
    "complete_runs": "test_plans.py",
    "add_events": "test_plans.py",
    "cancel_runs": "test_plans.py",
    "terminal_runs": "test_plans.py",
    "get_run": "test_plans.py",
    "cluster_gauges": "test_metrics.py::test_the_gauges_query_reads_no_finished_run",
    "finished_per_minute": (
        "test_web_views.py::test_the_view_queries_read_indexes_not_the_whole_table"
    ),
    "read_feed": "test_feed.py::test_the_feed_queries_use_their_indexes",
    "read_tree_feed": "test_feed.py::test_the_feed_queries_use_their_indexes",
}

#: statements off the hot paths, and why their plan needs no check at this size
NOT_HOT = {
    "schema_installed": "catalog lookup at startup",
    "wal_flushed": "reads no table: compares two WAL positions",
    "schema_version": "schema_version has one row per migration",
    "applied_migrations": "schema_version has one row per migration",
    "records_compatibility": "catalog lookup at migration",
    "record_compatibility": "schema_version has one row per migration",
    "register_definitions": "jobs and queues: one row per declared name, written at start",
    "register_worker": "workers by primary key, at worker start",
    "unregister_worker": "workers by primary key, at worker stop",
    "set_job_enabled": "jobs by primary key, an operator's switch",
    "set_queue_enabled": "queues by primary key, an operator's switch",
    "set_schedule_enabled": "schedules by primary key, an operator's switch",
    "rename_schedules": "schedules: one row per declared schedule, at worker start",
    "upsert_schedules": "schedules: one row per declared schedule, at worker start",
    "delete_stale_schedules": "schedules: one row per declared schedule, at worker start",
    "get_schedules": "schedules, jobs and queues: rows per declared name, no runs read",
    "fire_schedule": "one schedule by primary key; runs only inserted (unique index probe)",
    "list_queues": "queues: one row per declared name",
    "list_jobs": "jobs: one row per declared name",
    "get_job_definition": "jobs by primary key",
}


async def _build(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """INSERT INTO asyncjobs.runs (id, job, queue, args, status, root_run_id,
                                          parent_run_id, attempt, started_at, finished_at,
                                          worker_id, lease_expires_at)
               SELECT g, 'j' || g % 7, 'default', '{}', s.status, (g - 1) / 10 * 10 + 1,
                      CASE WHEN g % 10 <> 1 THEN (g - 1) / 10 * 10 + 1 END,
                      CASE WHEN s.status = 'pending' THEN 0 ELSE 1 END,
                      CASE WHEN s.status <> 'pending' THEN now() END,
                      CASE WHEN s.status NOT IN ('pending', 'running') THEN now() END,
                      CASE WHEN s.status = 'running' THEN 'w' || g % 4 END,
                      CASE WHEN s.status = 'running' THEN now() + interval '1 hour' END
                 FROM generate_series(1, $1::bigint) g,
                      LATERAL (SELECT (CASE WHEN g % 20 = 0 THEN 'pending'
                                            WHEN g % 20 = 1 THEN 'running'
                                            ELSE 'succeeded' END)::asyncjobs.run_status
                                      AS status) s""",
            RUNS,
        )
        await conn.execute("SELECT setval('asyncjobs.run_ids', $1::bigint)", RUNS)
        await conn.execute(
            """INSERT INTO asyncjobs.run_events (run_id, root_run_id, kind)
               SELECT r.id, r.root_run_id, k.kind
                 FROM asyncjobs.runs r,
                      unnest(ARRAY['pending', 'running', 'succeeded']) AS k(kind)
                ORDER BY r.id"""
        )
        await conn.execute("ANALYZE asyncjobs.runs")
        await conn.execute("ANALYZE asyncjobs.run_events")
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def big_dsn(module_dsn: str) -> Iterator[str]:
    import asyncio

    asyncio.run(_build(module_dsn))
    yield module_dsn


@pytest.fixture
async def conn(big_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(big_dsn)
    try:
        yield connection
    finally:
        await connection.close()



def _with_now(name: str, args: dict[str, Any]) -> list[Any]:
    """The statement's arguments as the backend sends them, ``:now`` NULL."""
    query = QUERIES[name]
    named = {**args, "now": None} if query.takes_now else args
    return query.arguments((), named)


def test_every_query_is_checked_or_listed() -> None:
    groups = [set(CHECKED), set(ELSEWHERE), set(NOT_HOT)]
    for i, group in enumerate(groups):
        for other in groups[i + 1 :]:
            assert not group & other, f"listed twice: {group & other}"
    listed = set().union(*groups)
    assert set(QUERIES) - listed == set(), "queries with no plan check and no reason"
    assert listed - set(QUERIES) == set(), "listed queries that no longer exist"


@pytest.mark.parametrize("mode", PLAN_MODES)
@pytest.mark.parametrize("name", sorted(CHECKED))
async def test_no_sequential_scan_of_runs_or_events(
    conn: asyncpg.Connection, name: str, mode: str
) -> None:
    await conn.execute(f"SET plan_cache_mode = {mode}")
    for args in CHECKED[name]:
        text = await conn.fetchval(
            f"EXPLAIN (FORMAT JSON) {QUERIES[name].text}", *_with_now(name, args)
        )
        plan = json.loads(text)[0]["Plan"]
        scanned = [
            (node["Node Type"], node["Relation Name"])
            for node in plan_nodes(plan)
            if node.get("Relation Name") in ("runs", "run_events")
            and node["Node Type"] == "Seq Scan"
        ]
        assert not scanned, f"{name} ({mode}) with {args}: {scanned}"


async def test_versions_read_the_run_tree_only(conn: asyncpg.Connection) -> None:
    """The ``version`` of a run is found through its root's events: the pages read stay
    those of a few trees, not of the events table."""
    # the oldest trees: a walk of run_events backwards by id would pass every later event
    for name, named in (("get_runs_by_ids_versioned", {"ids": list(range(1, 100, 10))}),
                        ("get_tree", {"root_run_id": 1, "limit": 100})):
        args = _with_now(name, named)
        text = await conn.fetchval(
            f"EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) {QUERIES[name].text}", *args
        )
        plan = json.loads(text)[0]["Plan"]
        event_pages = sum(
            node.get("Shared Hit Blocks", 0) + node.get("Shared Read Blocks", 0)
            for node in plan_nodes(plan)
            if node.get("Relation Name") == "run_events"
            or node.get("Index Name", "").startswith("run_events")
        )
        # ten trees of 30 events: a few pages each; the events table has ~2,000 pages
        assert event_pages < 200, (name, event_pages)
        rows = await conn.fetch(QUERIES[name].text, *args)
        assert rows and all(row["version"] > 0 for row in rows)


async def test_the_claim_is_never_jit_compiled(conn: asyncpg.Connection) -> None:
    """Above about a million pending runs the claim's generic plan costs more than
    jit_above_cost, and compiling took 875 of 876 ms of a claim at 5M (migration 0009)."""
    settings = await conn.fetchval(
        "SELECT proconfig FROM pg_proc WHERE proname = 'claim_runs' AND pronargs = 7"
    )
    assert "jit=off" in settings
