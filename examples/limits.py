"""Per-key limits: a key from an argument or computed by a function, at most N running and at
most N starting per period for each key, across every worker process."""

import asyncio
import os

from asyncjobs import App, ConcurrencyKeyError, ReasonCode

DSN = os.environ.get("ASYNCJOBS_DSN", "postgresql://127.0.0.1/postgres")

app = App("limits")
running: dict[str, int] = {}
most: dict[str, int] = {}


# one import per tenant at a time, whatever the number of workers
@app.job(concurrency_key="tenant_id", key_concurrency=1)
async def import_file(tenant_id: str, path: str) -> str:
    running[tenant_id] = running.get(tenant_id, 0) + 1
    most[tenant_id] = max(most.get(tenant_id, 0), running[tenant_id])
    await asyncio.sleep(0.05)
    running[tenant_id] -= 1
    return path


# a key computed from the (validated) arguments: each tenant and region has its own limits,
# at most 2 calls running and at most 2 starting in any 2 seconds
@app.job(
    concurrency_key=lambda args: f"{args.tenant}:{args.region}",
    key_concurrency=2,
    key_rate_limit="2/2s",
)
async def call_provider(tenant: str, region: str, n: int) -> int:
    return n


async def main() -> None:
    async with app.worker(DSN, concurrency=8, poll_interval=0.1), app.client(DSN) as client:
        imports = await client.trigger_many(
            import_file,
            [{"tenant_id": t, "path": f"{t}-{n}.csv"} for t in ("acme", "zeta") for n in range(3)],
        )
        print("imported:", [await run.result() for run in imports])
        print("most running at once per tenant:", most)

        # three calls for acme:eu: two start now, the third when the window allows
        eu = await client.trigger_many(
            call_provider, [{"tenant": "acme", "region": "eu", "n": n} for n in range(3)]
        )
        # another key is not held back
        us = await client.trigger_async(call_provider, tenant="acme", region="us", n=9)
        print("acme:us:", await us.result())
        why = await client.explain(eu[-1].id)
        for reason in why.reasons:
            if reason.code is ReasonCode.RATE_LIMITED:
                print(f"{reason.code}: {reason.data['name']} waits {reason.data['seconds']:.1f} s")
        print("acme:eu:", [await run.result() for run in eu])

        # a key that cannot be computed (or stored) is refused before anything is written
        try:
            await client.trigger_async(call_provider, tenant="acme", region="x" * 300, n=0)
        except ConcurrencyKeyError as exc:
            print("refused:", exc)


if __name__ == "__main__":
    asyncio.run(main())
