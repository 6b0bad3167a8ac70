"""Test your own jobs without a database: the in-memory backend runs the same worker."""

import asyncio

from asyncjobs import App, RunFailed

app = App("billing")


@app.job(retries=1, backoff_base=0)
async def invoice(customer_id: int, cents: int) -> str:
    if cents < 0:
        raise ValueError("negative invoice")
    return f"INV-{customer_id}-{cents}"


async def main() -> None:
    backend = app.backend("memory://")  # shared by the worker and the client
    async with app.worker(backend), app.client(backend) as client:
        assert await client.run_async(invoice, customer_id=1, cents=500) == "INV-1-500"
        try:
            await client.run_async(invoice, customer_id=1, cents=-1)
        except RunFailed as exc:
            print("failed as expected:", exc.error_type, exc.error_message)
        print("ok")


if __name__ == "__main__":
    asyncio.run(main())
