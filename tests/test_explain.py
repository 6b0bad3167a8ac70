"""``Client.explain``: each reason a run can wait for, and the state of running and finished
runs. The states are set up through the backend directly (a claim by a named worker, a
completion, a switch), so nothing depends on timing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from asyncjobs import App, Explanation, ReasonCode, RunNotFound, RunStatus, Trigger
from asyncjobs.backends.base import Backend, Completion, NewRun, ScheduleFire, WorkerInfo
from asyncjobs.client import Client

pytestmark = pytest.mark.anyio

LEASE = 60.0


def make_app() -> App:
    app = App("t")
    app.queue("narrow", max_concurrency=1)

    @app.job
    async def plain() -> None: ...

    @app.job(max_concurrency=1)
    async def single() -> None: ...

    @app.job(queue="narrow")
    async def squeezed() -> None: ...

    @app.job(retries=2)
    async def flaky() -> None: ...

    return app


@pytest.fixture
async def client(dsn: str) -> AsyncIterator[Client]:
    app = make_app()
    async with app.client(dsn) as opened:
        await opened.backend.register_definitions(*app.definitions())
        yield opened


async def worker(backend: Backend, worker_id: str = "w1", jobs: tuple[str, ...] = ()) -> None:
    """Register a live worker serving every queue of the app (and knowing ``jobs``)."""
    known = jobs or ("plain", "single", "squeezed", "flaky")
    await backend.register_worker(WorkerInfo(worker_id, "host", 1, ("default", "narrow"), known, 4))


async def claim(backend: Backend, job: str, worker_id: str = "w1") -> list[int]:
    records = await backend.claim(worker_id, ["default", "narrow"], [job], 10, LEASE)
    return [r.id for r in records]


async def explained(client: Client, run_id: int, **options: float) -> Explanation:
    explanation = await client.explain(run_id, **options)
    assert explanation.run_id == run_id
    return explanation


async def test_a_run_with_nothing_in_its_way_is_ready(client: Client) -> None:
    await worker(client.backend)
    runs = [await client.trigger_async("plain") for _ in range(3)]
    urgent = await client.trigger_async(client.app.get_job("plain").options(priority=5))
    last = await explained(client, runs[-1].id)
    assert last.codes == [ReasonCode.READY] and not last.blocked
    assert last.reasons[0].data == {"ahead": 3, "queue": "default"}  # two older, one urgent
    first = await explained(client, urgent.id)
    assert first.reasons[0].data["ahead"] == 0
    assert "nothing holds it back" in str(first)


async def test_not_before_in_the_future(client: Client) -> None:
    await worker(client.backend)
    later = client.app.get_job("plain").options(not_before=timedelta(hours=1))
    run = await client.trigger_async(later)
    explanation = await explained(client, run.id)
    assert explanation.codes == [ReasonCode.NOT_BEFORE] and explanation.blocked
    assert 3500 < explanation.reasons[0].data["seconds"] <= 3600


async def test_waiting_for_a_retry_backoff(client: Client) -> None:
    await worker(client.backend)
    run = await client.trigger_async("flaky")
    (claimed,) = await claim(client.backend, "flaky")
    error = {"type": "ValueError", "message": "boom", "traceback": "", "attempt": 1}
    failed = Completion(claimed, 1, RunStatus.FAILED, error=error, retry_in=600)
    assert await client.backend.complete("w1", [failed]) == {run.id}
    explanation = await explained(client, run.id)
    assert explanation.codes == [ReasonCode.RETRY_BACKOFF]
    reason = explanation.reasons[0]
    data = reason.data
    assert (data["attempt"], data["retries"], data["max_attempts"]) == (1, 1, 3)
    assert "retry 1 of 2 after it failed (ValueError: boom)" in reason.message
    assert (await client.get_run(run.id)).trigger is Trigger.RETRY


async def test_past_its_deadline(client: Client) -> None:
    await worker(client.backend)
    gone = datetime.now(UTC) - timedelta(minutes=1)
    run = await client.trigger_async(client.app.get_job("plain").options(not_after=gone))
    assert (await explained(client, run.id)).codes == [ReasonCode.PAST_DEADLINE]


async def test_job_and_queue_disabled(client: Client) -> None:
    await worker(client.backend)
    run = await client.trigger_async("squeezed")
    await client.set_job_enabled("squeezed", False)
    await client.set_queue_enabled("narrow", False)
    explanation = await explained(client, run.id)
    assert explanation.codes == [ReasonCode.JOB_DISABLED, ReasonCode.QUEUE_DISABLED]
    assert explanation.reasons[0].data == {"job": "squeezed"}
    await client.set_job_enabled("squeezed", True)
    await client.set_queue_enabled("narrow", True)
    assert (await explained(client, run.id)).codes == [ReasonCode.READY]


async def test_job_limit_full_names_the_holders_and_parents_waiting_on_children(
    client: Client,
) -> None:
    backend = client.backend
    await worker(backend)
    holder = await client.trigger_async("single")
    waiting = await client.trigger_async("single")
    assert await claim(backend, "single") == [holder.id]  # the limit of one is used up
    # the holder triggered a child and waits for it: it still holds its slot
    (child,) = await backend.enqueue(
        [
            NewRun(
                "plain",
                "default",
                "{}",
                parent_run_id=holder.id,
                root_run_id=holder.id,
                trigger=Trigger.CHILD,
            )
        ]
    )
    explanation = await explained(client, waiting.id)
    assert explanation.codes == [ReasonCode.JOB_LIMIT_FULL]
    reason = explanation.reasons[0]
    assert (reason.data["limit"], reason.data["running"]) == (1, 1)
    (slot,) = reason.data["holders"]
    assert (slot.run_id, slot.worker_id, slot.waiting_on) == (holder.id, "w1", (child.run_id,))
    assert f"run {holder.id} holds its slot while it waits on child runs {child.run_id}" in (
        reason.message
    )
    parent = await explained(client, holder.id)
    assert parent.codes == [ReasonCode.RUNNING, ReasonCode.WAITING_ON_CHILDREN]
    assert parent.reasons[1].data == {"children": [child.run_id]}
    assert "still counts as running for the limits of job 'single'" in parent.reasons[1].message


async def test_queue_limit_full(client: Client) -> None:
    await worker(client.backend)
    first = await client.trigger_async("squeezed")
    second = await client.trigger_async("squeezed")
    assert await claim(client.backend, "squeezed") == [first.id]
    explanation = await explained(client, second.id)
    assert explanation.codes == [ReasonCode.QUEUE_LIMIT_FULL]
    assert [h.run_id for h in explanation.reasons[0].data["holders"]] == [first.id]
    assert "queue 'narrow' allows 1 running at once" in explanation.reasons[0].message


async def test_no_live_worker(client: Client) -> None:
    run = await client.trigger_async("plain")
    nobody = await explained(client, run.id)
    assert nobody.codes == [ReasonCode.NO_WORKER]
    assert "no live worker serves queue 'default'" in nobody.reasons[0].message
    await worker(client.backend, jobs=("single",))  # serves the queue, not the job
    stranger = await explained(client, run.id)
    assert stranger.codes == [ReasonCode.NO_WORKER]
    assert "none knows job 'plain'" in stranger.reasons[0].message
    await worker(client.backend, "w2")
    assert (await explained(client, run.id)).codes == [ReasonCode.READY]
    # a worker whose heartbeat is older than the ttl counts as gone
    assert (await explained(client, run.id, worker_ttl=0)).codes == [ReasonCode.NO_WORKER]


async def test_an_all_nodes_copy_whose_worker_is_gone(client: Client) -> None:
    backend = client.backend
    await worker(backend)
    app = App("t")

    @app.job(name="plain", every=timedelta(minutes=1), all_nodes=True)
    async def plain() -> None: ...

    await backend.register_schedules(list(app.schedules.values()), ["plain"])
    tick = datetime.now(UTC)
    fired = await backend.fire_schedule(
        ScheduleFire(
            schedule="plain", job="plain", queue="default", args_json="{}", priority=0,
            max_attempts=1, fires=(tick,), next_fire_at=tick + timedelta(minutes=1),
            expected=None, target_worker="node-7", expires=timedelta(minutes=1),
        )
    )  # fmt: skip
    (copy,) = fired.run_ids
    gone = await explained(client, copy)
    assert gone.codes == [ReasonCode.TARGET_WORKER_GONE]
    assert gone.reasons[0].data == {"worker": "node-7"}
    await worker(backend, "node-7")
    assert (await explained(client, copy)).codes == [ReasonCode.READY]


async def test_running_and_finished_runs_explain_their_state(client: Client) -> None:
    backend = client.backend
    await worker(backend)
    done, broken, cancelled = [await client.trigger_async("plain") for _ in range(3)]
    claimed = await claim(backend, "plain")
    assert claimed == [done.id, broken.id, cancelled.id]
    running = await explained(client, done.id)
    assert running.codes == [ReasonCode.RUNNING]
    assert running.reasons[0].data["worker"] == "w1" and running.reasons[0].data["attempt"] == 1
    error = {"type": "KeyError", "message": "'sku'", "traceback": "", "attempt": 1}
    await backend.complete(
        "w1",
        [
            Completion(done.id, 1, RunStatus.SUCCEEDED, result_json="null"),
            Completion(broken.id, 1, RunStatus.FAILED, error=error),
            Completion(cancelled.id, 1, RunStatus.CANCELLED),
        ],
    )
    for run, status in ((done, "succeeded"), (broken, "failed"), (cancelled, "cancelled")):
        explanation = await explained(client, run.id)
        assert explanation.status is RunStatus(status)
        assert explanation.codes == [ReasonCode.FINISHED]
        assert explanation.reasons[0].data["status"] == status
    assert "KeyError: 'sku'" in str(await explained(client, broken.id))
    with pytest.raises(RunNotFound):
        await client.explain(10_000)


async def test_an_expired_run(client: Client) -> None:
    await worker(client.backend)
    gone = datetime.now(UTC) - timedelta(seconds=1)
    run = await client.trigger_async(client.app.get_job("plain").options(not_after=gone))
    assert (await client.backend.sweep(LEASE)).expired == 1
    explanation = await explained(client, run.id)
    assert (explanation.status, explanation.codes) == (RunStatus.EXPIRED, [ReasonCode.FINISHED])
    assert "not_after passed before a worker started it" in explanation.reasons[0].message
