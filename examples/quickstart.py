"""Define jobs, run a worker, trigger runs and await typed results."""

import asyncio
import os

from pydantic import BaseModel

from asyncjobs import App, Context

DSN = os.environ.get("ASYNCJOBS_DSN", "postgresql://127.0.0.1/postgres")

app = App("shop")
app.queue("emails", max_concurrency=5)  # at most 5 running across all workers


class Receipt(BaseModel):
    order_id: int
    message_id: str


@app.job(queue="emails", max_concurrency=2, retries=3, timeout=30)
async def send_receipt(order_id: int, email: str) -> str:
    return f"<receipt-{order_id}@shop>"


@app.job
async def checkout(ctx: Context, order_id: int) -> Receipt:
    await ctx.progress(0.5, "charging card")
    # a run triggered inside a job is recorded as its child
    message_id = await send_receipt.run_async(order_id=order_id, email="a@b.c")
    return Receipt(order_id=order_id, message_id=message_id)


async def main() -> None:
    async with app.worker(DSN, migrate=True), app.client(DSN) as client:
        run = await client.trigger_async(checkout, order_id=7)  # returns at once
        receipt = await run.result(timeout=10)  # a Receipt, not a dict
        print("run", run.id, "->", receipt)
        again = await client.run_async(checkout, order_id=8)  # trigger and wait
        print("again:", again)


if __name__ == "__main__":
    asyncio.run(main())
