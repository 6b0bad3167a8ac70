"""The demo app behind ``asyncjobs demo``: an order checkout that fans out into a tree of
child runs three levels deep, with progress, logs, a retried failure and typed results."""

from __future__ import annotations

import asyncio
import random

from pydantic import BaseModel

from asyncjobs import App, Context

app = App("demo")
app.queue("emails", max_concurrency=3)


class Receipt(BaseModel):
    order_id: int
    total_cents: int
    message_id: str
    shipped_items: list[str]


@app.job(queue="emails", retries=2, backoff_base=0.2)
async def send_email(ctx: Context, to: str, subject: str) -> str:
    await ctx.log(f"rendering {subject!r} for {to}")
    await asyncio.sleep(random.uniform(0.05, 0.2))
    if ctx.attempt == 1 and "receipt" in subject:
        raise ConnectionError("SMTP server said 421, try again")  # the retry shows in the tree
    return f"<{ctx.run_id}@demo.asyncjobs>"


@app.job
async def reserve_item(ctx: Context, sku: str) -> str:
    for step in range(1, 4):
        await asyncio.sleep(random.uniform(0.05, 0.15))
        await ctx.progress(step / 3, f"reserving {sku}: step {step}/3")
    return sku


@app.job
async def ship(ctx: Context, order_id: int, skus: list[str]) -> list[str]:
    await ctx.log(f"shipping {len(skus)} items of order {order_id}")
    reserved = await asyncio.gather(*(reserve_item.run_async(sku=sku) for sku in skus))
    await send_email.run_async(to="warehouse@example.com", subject=f"pick order {order_id}")
    return list(reserved)


@app.job
async def charge_card(ctx: Context, order_id: int, total_cents: int) -> str:
    await ctx.progress(0.5, "talking to the bank")
    await asyncio.sleep(random.uniform(0.1, 0.3))
    return f"ch_{order_id}_{total_cents}"


@app.job
async def checkout(ctx: Context, order_id: int, skus: list[str]) -> Receipt:
    await ctx.progress(0.1, "charging")
    total = 1250 * len(skus)
    await charge_card.run_async(order_id=order_id, total_cents=total)
    await ctx.progress(0.5, "shipping")
    shipped = await ship.run_async(order_id=order_id, skus=skus)
    await ctx.progress(0.9, "sending the receipt")
    message_id = await send_email.run_async(to="buyer@example.com", subject=f"receipt {order_id}")
    return Receipt(order_id=order_id, total_cents=total, message_id=message_id,
                   shipped_items=shipped)
