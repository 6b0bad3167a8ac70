"""The endpoints of the dashboard's cluster views (workers, schedules, queue activity, why
pending, run again), the runs list's root-only filter, and their security: token, CSRF,
redaction. PostgreSQL only."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from asyncjobs import App, Client, InvalidArguments
from tests.views_support import SCHEDULE_SECRET, backdate, views_app
from tests.web_support import Card, Gates, dashboard, wait_for

pytestmark = pytest.mark.anyio
TOKEN = "views-token-for-tests-0123456789"
#: the ``api`` fixture: the test app, an open client, an HTTP client, the jobs' gates
ViewsFixture = tuple[App, Client, httpx.AsyncClient, Gates]


@pytest.fixture
async def api(dsn: str) -> AsyncIterator[ViewsFixture]:
    app, gates = views_app()
    async with (
        app.client(dsn) as client,
        app.worker(dsn, concurrency=3),
        dashboard(app, dsn) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        assert (await http.get("/")).status_code == 200  # sets the CSRF cookie
        http.headers["x-csrf-token"] = http.cookies["asyncjobs_csrf"]
        yield app, client, http, gates
        for gate in gates.events.values():
            gate.set()


async def test_workers_show_concurrency_running_runs_and_heartbeat(
    api: ViewsFixture, dsn: str
) -> None:
    _, client, http, gates = api
    run = await client.trigger_async("hold", gate="w")

    async def holding() -> Any:
        workers = (await http.get("/api/workers")).json()["workers"]
        return workers if workers and workers[0]["running"] == 1 else None

    (worker,) = await wait_for(holding)
    assert worker["alive"] and worker["concurrency"] == 3 and worker["silent_for"] < 30
    assert worker["queues"] == ["default"] and "hold" in worker["jobs"]
    assert worker["heartbeat_at"] >= worker["started_at"]
    assert worker["runs"] == [{"id": run.id, "job": "hold"}]
    (record,) = await client.get_workers()
    assert record.id == worker["id"] and record.runs == ((run.id, "hold"),)
    gates["w"].set()
    await client.wait(run.id, timeout=20)
    # a one-second ttl on a worker forced silent: not alive
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE asyncjobs.workers SET heartbeat_at = now() - interval '1h'")
    finally:
        await conn.close()
    (silent,) = (await http.get("/api/workers?ttl=5")).json()["workers"]
    assert not silent["alive"] and silent["silent_for"] >= 3600
    assert (await http.get("/api/workers?ttl=0")).status_code == 400
    with pytest.raises(InvalidArguments):
        await client.get_workers(worker_ttl=0)


async def test_schedules_list_redacted_and_switched(api: ViewsFixture) -> None:
    _, client, http, _ = api

    async def computed() -> Any:  # the worker's scheduler computes the next ticks on start
        listed = (await http.get("/api/schedules")).json()["schedules"]
        return listed if all(s["next_fire_at"] for s in listed) else None

    listed = await wait_for(computed)
    assert [s["name"] for s in listed] == ["nightly_report", "sweep_carts"]
    schedule, cron = listed
    assert cron["cron"] == "*/15 * * * *" and cron["timezone"] == "Europe/Berlin"
    assert cron["misfire"] == "once"
    assert schedule["job"] == "nightly_report"
    assert schedule["every"] == 6 * 3600 and schedule["cron"] is None
    assert schedule["misfire"] == "skip" and schedule["enabled"] and not schedule["paused"]
    assert schedule["last_fire_at"] is None
    assert schedule["args"] == {"region": "eu", "api_key": "[redacted]"}
    path = "/api/schedules/nightly_report/enabled"
    no_csrf = await http.post(path, json={"enabled": False}, headers={"x-csrf-token": ""})
    assert no_csrf.status_code == 403
    assert (await http.post(path, json={"enabled": False})).json() == {
        "name": "nightly_report",
        "enabled": False,
    }
    assert [s.enabled for s in await client.get_schedules()] == [False, True]
    listed = (await http.get("/api/schedules")).json()["schedules"]
    assert [s["enabled"] for s in listed] == [False, True]
    assert (await http.post(path, json={"enabled": "no"})).status_code == 400
    unknown = await http.post("/api/schedules/nope/enabled", json={"enabled": True})
    assert unknown.status_code == 409 and "not registered" in unknown.json()["error"]["message"]


async def test_activity_counts_queue_load_and_the_last_hours_finished_runs(
    api: ViewsFixture, dsn: str
) -> None:
    _, client, http, gates = api
    done = [await client.trigger_async("leaf", n=n) for n in range(6)]
    done += [await client.trigger_async("broken", text=str(n)) for n in range(2)]
    for run in done:
        await client.wait(run.id, timeout=20)
    await backdate(dsn, 50)  # spread over the last 50 minutes
    holder = await client.trigger_async("single", gate="a")
    waiting = await client.trigger_async("single", gate="b")

    async def loaded() -> Any:
        data = (await http.get("/api/activity")).json()
        queue = {q["name"]: q for q in data["queues"]}.get("default")
        return data if queue and queue["running"] == 1 and queue["pending"] == 1 else None

    data = await wait_for(loaded)
    (queue,) = data["queues"]
    assert queue["ready"] == 1 and queue["oldest_age"] >= 0
    loads = {j["name"]: j for j in data["job_loads"]}
    single = loads["single"]
    assert (single["running"], single["pending"], single["max_concurrency"]) == (1, 1, 1)
    assert single["enabled"] is True and loads["leaf"]["pending"] == 0
    pending = (await client.get_runs(status="pending", limit=1000)).runs
    assert [r.id for r in pending] == [waiting.id]  # the depth is what the database holds
    jobs = {j["job"]: j for j in data["jobs"]}
    assert (jobs["leaf"]["succeeded"], jobs["leaf"]["failed"]) == (6, 0)
    assert (jobs["broken"]["succeeded"], jobs["broken"]["failed"]) == (0, 2)
    assert jobs["leaf"]["p50"] is not None and jobs["leaf"]["p95"] >= jobs["leaf"]["p50"]
    minutes = data["minutes"]
    assert sum(m["succeeded"] for m in minutes) == 6 and sum(m["failed"] for m in minutes) == 2
    assert len({m["minute"] for m in minutes}) >= 5  # spread over the hour, per minute
    # a shorter window leaves out what finished before it
    recent = (await http.get("/api/activity?window=600")).json()
    assert sum(j["succeeded"] + j["failed"] for j in recent["jobs"]) < 8
    for bad in ("window=59", "window=86401", "window=x"):
        assert (await http.get(f"/api/activity?{bad}")).status_code == 400
    with pytest.raises(InvalidArguments):
        await client.activity(timedelta(seconds=10))
    gates["a"].set()
    gates["b"].set()
    await client.wait(holder.id, timeout=20)
    await client.wait(waiting.id, timeout=20)


async def test_per_minute_counts_skip_runs_created_before_the_search_bound(
    api: ViewsFixture, dsn: str
) -> None:
    """Runs created three hours ago are found by the binary search to lie before the
    window, whatever their finish time says; newer ones are all counted."""
    client = api[1]
    runs = [await client.trigger_async("leaf", n=n) for n in range(10)]
    for run in runs:
        await client.wait(run.id, timeout=20)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "UPDATE asyncjobs.runs SET created_at = now() - interval '3 hours' WHERE id <= $1",
            runs[3].id,
        )
    finally:
        await conn.close()
    activity = await client.activity()
    (leaf,) = activity.jobs
    assert leaf.succeeded == 6 and sum(m.succeeded for m in activity.minutes) == 6


async def test_why_pending_and_run_again(api: ViewsFixture) -> None:
    _, client, http, gates = api
    await client.set_job_enabled("leaf", False)
    run = await client.trigger_async("leaf", n=1)
    why = (await http.get(f"/api/runs/{run.id}/explain")).json()
    assert why["status"] == "pending" and why["blocked"] is True
    assert [r["code"] for r in why["reasons"]] == ["job_disabled"]
    assert "disabled" in why["reasons"][0]["message"]
    early = await http.post(f"/api/runs/{run.id}/retry", json={})
    assert early.status_code == 422 and "only a finished run" in early.json()["error"]["message"]
    await client.set_job_enabled("leaf", True)
    await client.wait(run.id, timeout=20)
    assert (await http.get(f"/api/runs/{run.id}/explain")).json()["reasons"][0]["code"] == (
        "finished"
    )
    again = await http.post(f"/api/runs/{run.id}/retry", json={})
    assert again.status_code == 201, again.text
    made = again.json()
    assert made["retry_of"] == run.id and made["job"] == "leaf"
    record = await client.wait(made["id"], timeout=20)
    assert record.parent_run_id == run.id and record.trigger.value == "retry"
    assert record.args == {"n": 1} and record.root_run_id == run.id
    assert (await http.get("/api/runs/424242/explain")).status_code == 404
    assert (await http.post("/api/runs/424242/retry", json={})).status_code == 404
    no_csrf = await http.post(f"/api/runs/{run.id}/retry", json={}, headers={"x-csrf-token": ""})
    assert no_csrf.status_code == 403
    # a run waiting on a full job limit names the run holding it
    holder = await client.trigger_async("single", gate="x")
    await wait_for(lambda: _status(client, holder.id, "running"))
    waiter = await client.trigger_async("single", gate="y")

    async def limited() -> Any:
        why = (await http.get(f"/api/runs/{waiter.id}/explain")).json()
        return why if "job_limit_full" in [r["code"] for r in why["reasons"]] else None

    why = await wait_for(limited)
    reason = next(r for r in why["reasons"] if r["code"] == "job_limit_full")
    assert str(holder.id) in reason["message"]
    gates["x"].set()
    gates["y"].set()
    await client.wait(waiter.id, timeout=20)


async def _status(client: Any, run_id: int, status: str) -> bool:
    return bool((await client.get_run(run_id)).status.value == status)


async def test_runs_can_be_listed_without_children(api: ViewsFixture) -> None:
    _, client, http, _ = api
    tree = await client.trigger_async("tree", width=2)
    await client.wait(tree.id, timeout=20)
    leaf = await client.trigger_async("leaf", n=3)
    await client.wait(leaf.id, timeout=20)
    everything = [r["id"] for r in (await http.get("/api/runs")).json()["runs"]]
    roots = [r["id"] for r in (await http.get("/api/runs?roots=1")).json()["runs"]]
    assert len(everything) == 4 and roots == [leaf.id, tree.id]
    assert [r.id for r in (await client.get_runs(roots_only=True)).runs] == roots
    assert (await http.get("/api/runs?roots=yes")).status_code == 400


async def test_without_a_token_foreign_hosts_and_origins_are_refused(api: ViewsFixture) -> None:
    """DNS rebinding and cross-site POSTs get nothing from the new endpoints either."""
    _, client, http, _ = api
    run = await client.trigger_async("leaf", n=1)
    await client.wait(run.id, timeout=20)
    for path in ("/api/workers", "/api/schedules", "/api/activity", f"/api/runs/{run.id}/explain"):
        foreign = await http.get(path, headers={"host": "evil.example"})
        assert foreign.status_code == 403, path
        ok = await http.get(path)
        assert (
            ok.status_code == 200
            and "frame-ancestors 'none'" in ok.headers["content-security-policy"]
        )
    for path, body in [
        (f"/api/runs/{run.id}/retry", {}),
        ("/api/schedules/nightly_report/enabled", {"enabled": False}),
    ]:
        cross = await http.post(path, json=body, headers={"origin": "https://evil.example"})
        assert cross.status_code == 403, path
    assert len((await client.get_runs()).runs) == 1  # nothing was retried
    assert all(s.enabled for s in await client.get_schedules())


async def test_the_new_endpoints_need_the_token_and_hide_secrets(dsn: str) -> None:
    app, gates = views_app()
    async with (
        app.client(dsn) as client,
        app.worker(dsn, concurrency=2),
        dashboard(app, dsn, token=TOKEN) as server,
        httpx.AsyncClient(base_url=server.url, timeout=30) as http,
    ):
        await client.set_job_enabled("secretive", False)
        secret = await client.trigger_async(
            "secretive",
            user="ada",
            password="hunter2-password",
            card=Card(holder="Ada", number="4111-1111-1111-1111"),
        )
        reads = [
            "/api/workers",
            "/api/schedules",
            "/api/activity",
            f"/api/runs/{secret.id}/explain",
            "/api/runs?roots=1",
        ]
        writes = [f"/api/runs/{secret.id}/retry", "/api/schedules/nightly_report/enabled"]
        for path in reads:
            assert (await http.get(path)).status_code == 401, path
        for path in writes:
            assert (await http.post(path, json={"enabled": True})).status_code == 403, path
        bearer = {"authorization": f"Bearer {TOKEN}"}
        bodies = []
        for path in reads:
            response = await http.get(path, headers=bearer)
            assert response.status_code == 200, (path, response.text)
            assert "content-security-policy" in response.headers
            bodies.append(response.text)
        text = "".join(bodies)
        for hidden in ("hunter2-password", "4111-1111-1111-1111", SCHEDULE_SECRET):
            assert hidden not in text
        assert "[redacted]" in text
        # the session cookie works for reads; its writes need the CSRF header
        await http.get(f"/?token={TOKEN}")
        await http.get("/")  # the page sets the CSRF cookie
        assert (await http.get("/api/workers")).status_code == 200
        path = "/api/schedules/nightly_report/enabled"
        assert (await http.post(path, json={"enabled": False})).status_code == 403
        csrf = {"x-csrf-token": http.cookies["asyncjobs_csrf"]}
        assert (await http.post(path, json={"enabled": False}, headers=csrf)).status_code == 200
        for gate in gates.events.values():
            gate.set()


async def test_the_view_queries_read_indexes_not_the_whole_table(dsn: str) -> None:
    """100,000 runs over ten days: the per-minute counts read only the last two hours'
    rows (found by the binary search over the primary key), and the load now (/metrics'
    cluster_gauges) reads the partial indexes of pending and running runs; both stay well
    under 100 ms."""
    from asyncjobs import sql

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            """
            INSERT INTO asyncjobs.runs (job, queue, args, root_run_id, status, created_at,
                                        started_at, finished_at)
            SELECT 'job' || (g % 7), 'q' || (g % 3), '{}', g,
                   CASE WHEN g % 13 = 0 THEN 'failed' ELSE 'succeeded' END::asyncjobs.run_status,
                   t, t + interval '1 s', t + interval '2 s'
              FROM generate_series(1, 100000) g,
                   LATERAL (SELECT now() - interval '10 days' * (1 - g / 100000.0) AS t) x
            """
        )
        await conn.execute(
            "INSERT INTO asyncjobs.runs (job, queue, args, root_run_id) "
            "SELECT 'job1', 'q1', '{}', g FROM generate_series(1, 50) g"
        )
        await conn.execute("ANALYZE asyncjobs.runs")
        plans = {}
        for name, named in [
            # :now NULL: the database clock
            ("finished_per_minute", {"window": "interval '1 hour'", "now": "NULL"}),
            ("cluster_gauges", {"worker_ttl": "interval '30 s'", "now": "NULL"}),
        ]:
            args = ", ".join(named[p] for p in sql.QUERIES[name].params)  # literals, in order
            query = sql.QUERIES[name].text.rstrip().rstrip(";")
            await conn.execute(f"PREPARE q AS {query}")
            rows = await conn.fetch(f"EXPLAIN (ANALYZE, FORMAT TEXT) EXECUTE q({args})")
            await conn.execute("DEALLOCATE q")
            plans[name] = "\n".join(r[0] for r in rows)
    finally:
        await conn.close()
    for name, plan in plans.items():
        assert "Seq Scan on runs" not in plan, plan
        took = float(plan.rsplit("Execution Time: ", 1)[1].split(" ms")[0])
        print(f"\n{name}: {took:.1f} ms on 100,050 runs")  # noqa: T201 - the measurement
        assert took < 100, plan
    assert "runs_pkey" in plans["finished_per_minute"]
    assert "runs_pending_idx" in plans["cluster_gauges"]
    assert "runs_running_idx" in plans["cluster_gauges"]
