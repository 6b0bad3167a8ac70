"""Cron and interval schedules, stored in the database and fired once per tick cluster-wide."""

import asyncio
import os
from datetime import timedelta

from asyncjobs import App, Context, RunRecord

DSN = os.environ.get("ASYNCJOBS_DSN", "postgresql://127.0.0.1/postgres")

app = App("reports")


# every weekday at 07:30 in Oslo; one catch-up run after downtime (misfire="once", the default)
@app.job(schedule="30 7 * * 1-5", timezone="Europe/Oslo", schedule_args={"region": "no"})
async def morning_report(region: str) -> str:
    return f"report for {region}"


# every second (cron with a sixth field: seconds); after downtime, every missed tick (up to 100)
@app.job(schedule="* * * * * *", misfire="all")
async def heartbeat() -> None: ...


# every 10 minutes, first 30 s after the schedule is first stored; missed ticks are skipped
@app.job(every=timedelta(minutes=10), initial_delay=timedelta(seconds=30), misfire="skip")
async def refresh_cache() -> None: ...


# on every worker (each serving the job's queue), one run per tick each
@app.job(every=timedelta(minutes=5), all_nodes=True)
async def clear_local_tmp() -> None: ...


# a second schedule on the same job, with other arguments and its own name
app.schedule(morning_report, cron="0 8 * * 1-5", timezone="America/New_York",
             args={"region": "us"}, name="morning_report_us")  # fmt: skip


heartbeats: list[RunRecord] = []
two_heartbeats = asyncio.Event()


@app.on("executed")  # a lifecycle hook: called after each run that succeeded
def count_heartbeats(ctx: Context) -> None:
    if ctx.job == "heartbeat":
        heartbeats.append(ctx.run)
        if len(heartbeats) == 2:
            two_heartbeats.set()


async def main() -> None:
    async with app.worker(DSN, migrate=True), app.client(DSN) as client:
        async with asyncio.timeout(10):
            await two_heartbeats.wait()
        first, second = heartbeats
        print("heartbeat ticks", first.scheduled_at, "and", second.scheduled_at,
              "trigger:", second.trigger.value)  # fmt: skip

        await client.set_schedule_enabled("heartbeat", False)  # `asyncjobs disable schedule`
        for schedule in await client.get_schedules():
            timing = schedule.cron or f"every {schedule.every}"
            state = "enabled" if schedule.enabled else "disabled"
            print(f"{schedule.name:<18} {timing:<16} {state:<8} next: {schedule.next_fire_at}")
        await client.set_schedule_enabled("heartbeat", True)  # `asyncjobs enable schedule`


if __name__ == "__main__":
    asyncio.run(main())
