"""Test your jobs with pytest on a real PostgreSQL: `python -m pytest examples/unit_testing.py`."""

from datetime import timedelta

import pytest

from asyncjobs import App, RunFailed, RunStatus, testing

app = App("billing")


@app.job(retries=1, backoff_base=0)
async def invoice(customer_id: int, cents: int) -> str:
    if cents < 0:
        raise ValueError("negative invoice")
    return f"INV-{customer_id}-{cents}"


@app.job()
async def remind(customer_id: int) -> str:
    return f"reminded {customer_id}"


pytestmark = pytest.mark.anyio  # anyio's pytest plugin (installed with asyncjobs) runs them


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # asyncjobs runs on asyncio; without this anyio also tries trio if present


async def test_the_function_alone() -> None:
    # No database, no worker: the function you decorated, called as written.
    assert await invoice.fn(customer_id=1, cents=500) == "INV-1-500"


async def test_through_a_worker(asyncjobs_dsn: str) -> None:
    # asyncjobs_dsn: a fresh database with the schema, for this test only.
    async with testing.run_app(app, asyncjobs_dsn) as client:
        assert await client.run_async(invoice, customer_id=1, cents=500) == "INV-1-500"
        with pytest.raises(RunFailed) as failed:
            await client.run_async(invoice, customer_id=1, cents=-1)
        assert failed.value.error_type == "ValueError"
        assert (await client.get_run(failed.value.run_id)).attempt == 2  # retried once


async def test_an_hour_later_in_no_time(asyncjobs_dsn: str) -> None:
    # The database works at the test clock's time: advancing it an hour runs the reminder now.
    clock = testing.TestClock()
    async with testing.run_app(app, asyncjobs_dsn, clock=clock) as client:
        run = await client.trigger_async(remind.options(not_before=timedelta(hours=1)), 7)
        assert (await client.get_run(run.id)).status is RunStatus.PENDING
        clock.advance(timedelta(hours=1))
        assert await run.result() == "reminded 7"
