"""The demo app behind ``asyncjobs demo``: an order checkout that fans out into a tree of
child runs three levels deep, with progress, log lines, a retried failure, a job limit that
makes a child wait (``reserve_item`` runs two at a time, a checkout reserves three items) and
typed results.

``pace`` scales every pause: at 1.0 a checkout takes about ten seconds, slow enough to watch
its tree grow in the dashboard; tests pass a small pace.
"""

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


async def _pause(pace: float, low: float, high: float) -> None:
    await asyncio.sleep(random.uniform(low, high) * pace)


@app.job(queue="emails", retries=2, backoff_base=0.2)
async def send_email(ctx: Context, to: str, subject: str, pace: float = 1.0) -> str:
    await ctx.log(f"rendering {subject!r} for {to}")
    await _pause(pace, 0.3, 0.8)
    if ctx.attempt == 1 and "receipt" in subject:
        await ctx.log("SMTP server busy", level="warning")
        raise ConnectionError("SMTP server said 421, try again")  # the retry shows in the tree
    await ctx.log(f"sent to {to}")
    return f"<{ctx.run_id}@demo.asyncjobs>"


# two reservations at a time cluster-wide: the third item of a checkout waits for a slot
@app.job(max_concurrency=2)
async def reserve_item(ctx: Context, sku: str, pace: float = 1.0) -> str:
    await ctx.log(f"reserving {sku}")
    for step in range(1, 4):
        await _pause(pace, 0.4, 0.8)
        await ctx.progress(step / 3, f"reserving {sku}: step {step}/3")
    return sku


@app.job
async def ship(ctx: Context, order_id: int, skus: list[str], pace: float = 1.0) -> list[str]:
    await ctx.log(f"shipping {len(skus)} items of order {order_id}")
    reserved = await asyncio.gather(
        *(reserve_item.run_async(sku=sku, pace=pace) for sku in skus)
    )
    await ctx.log(f"all {len(reserved)} items reserved; telling the warehouse")
    await send_email.run_async(
        to="warehouse@example.com", subject=f"pick order {order_id}", pace=pace
    )
    return list(reserved)


@app.job
async def charge_card(ctx: Context, order_id: int, total_cents: int, pace: float = 1.0) -> str:
    await ctx.progress(0.2, "talking to the bank")
    await ctx.log(f"charging {total_cents / 100:.2f} EUR for order {order_id}")
    await _pause(pace, 0.8, 1.6)
    await ctx.progress(1.0, "approved")
    await ctx.log("the bank approved the charge")
    return f"ch_{order_id}_{total_cents}"


@app.job
async def checkout(ctx: Context, order_id: int, skus: list[str], pace: float = 1.0) -> Receipt:
    total = 1250 * len(skus)
    await ctx.log(f"order {order_id}: {len(skus)} items, {total / 100:.2f} EUR")
    await ctx.progress(0.1, "charging")
    await charge_card.run_async(order_id=order_id, total_cents=total, pace=pace)
    await ctx.progress(0.4, "shipping")
    shipped = await ship.run_async(order_id=order_id, skus=skus, pace=pace)
    await ctx.progress(0.9, "sending the receipt")
    message_id = await send_email.run_async(
        to="buyer@example.com", subject=f"receipt {order_id}", pace=pace
    )
    await ctx.log(f"order {order_id} done")
    return Receipt(order_id=order_id, total_cents=total, message_id=message_id,
                   shipped_items=shipped)


#: what the checkouts of ``asyncjobs demo`` buy, in turn
BASKETS = (
    ["apple", "pear", "fig"],
    ["coffee", "milk", "sugar"],
    ["paper", "pen", "ink"],
)
