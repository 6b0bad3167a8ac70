"""Sync callers — a Django or Flask view, a management command, a script — use SyncClient:
one per process, shared by every thread, closed at exit."""

import atexit
import os
import threading
from typing import Any

from anyio.from_thread import start_blocking_portal

from asyncjobs import App, InvalidArguments, SyncClient

DSN = os.environ.get("ASYNCJOBS_DSN", "postgresql://127.0.0.1/postgres")

# The worker's side (its own process in production): a plain `def` job runs in a thread.
jobs = App("reports")


@jobs.job
def render_report(customer_id: int, month: str) -> dict[str, Any]:
    if customer_id < 0:
        raise ValueError("no such customer")
    return {"customer_id": customer_id, "month": month, "pages": 3}


# The web process: no event loop, no job code. One client, made on first use.
_lock = threading.Lock()
_client: SyncClient | None = None


def jobs_client() -> SyncClient:
    global _client
    with _lock:
        if _client is None:
            _client = SyncClient(DSN)
            atexit.register(_client.close)
        return _client


def report_view(customer_id: Any, month: Any) -> tuple[int, dict[str, Any]]:
    """Like a view: (HTTP status, JSON body). Returns at once; the report renders later."""
    try:
        run = jobs_client().trigger("render_report", customer_id=customer_id, month=month)
    except InvalidArguments as exc:
        return 400, {"errors": exc.errors}
    return 202, {"run_id": run.id}


def report_status_view(run_id: int) -> tuple[int, dict[str, Any]]:
    outcome = jobs_client().wait(run_id, timeout=10)  # a RunResult: no exception to catch
    if outcome.ok:
        return 200, {"report": outcome.value}
    return 500, {"status": outcome.status, "error": outcome.error and outcome.error.message}


def rerender_command(customer_ids: list[int], month: str) -> None:
    """Like a management command: blocks until each report is done."""
    for customer_id in customer_ids:
        report = jobs_client().run("render_report", customer_id=customer_id, month=month,
                                   timeout=30)
        print(f"re-rendered {customer_id}: {report['pages']} pages")


def main() -> None:
    with start_blocking_portal() as portal:  # stands in for `asyncjobs worker ...`
        worker = portal.wrap_async_context_manager(jobs.worker(DSN, migrate=True))
        with worker:
            status, body = report_view(42, "2026-11")
            print("view:", status, body)
            print("status:", *report_status_view(body["run_id"]))
            print("bad input:", *report_view("forty-two", "2026-11"))
            status, body = report_view(-1, "2026-11")
            print("failing:", *report_status_view(body["run_id"]))
            rerender_command([1, 2], "2026-10")
    # jobs_client() is closed at exit (atexit): its loop thread and pool end there


if __name__ == "__main__":
    main()
