"""asyncjobs: an asyncio job framework on PostgreSQL.

Typed jobs, cluster-wide concurrency limits, fenced completions, trace trees of child runs.
``__all__`` is the public API; everything else may change without notice.

Importing the package wires ``App`` to what is built from it (``asyncjobs.wiring``, the
composition root, explains the layers of the import graph).
"""

from asyncjobs.app import App as App
from asyncjobs.backends.base import PruneResult as PruneResult
from asyncjobs.client import Client as Client
from asyncjobs.client import Run as Run
from asyncjobs.context import Context as Context
from asyncjobs.context import get_context as get_context
from asyncjobs.errors import AsyncJobsError as AsyncJobsError
from asyncjobs.errors import ConcurrencyKeyError as ConcurrencyKeyError
from asyncjobs.errors import ConfigurationError as ConfigurationError
from asyncjobs.errors import DatabaseBusy as DatabaseBusy
from asyncjobs.errors import DatabaseError as DatabaseError
from asyncjobs.errors import DatabaseUnavailable as DatabaseUnavailable
from asyncjobs.errors import DuplicateRun as DuplicateRun
from asyncjobs.errors import EmbeddedPostgresError as EmbeddedPostgresError
from asyncjobs.errors import InvalidArguments as InvalidArguments
from asyncjobs.errors import JobTimeout as JobTimeout
from asyncjobs.errors import ResultNotStorable as ResultNotStorable
from asyncjobs.errors import RunCancelled as RunCancelled
from asyncjobs.errors import RunError as RunError
from asyncjobs.errors import RunExpired as RunExpired
from asyncjobs.errors import RunFailed as RunFailed
from asyncjobs.errors import RunNotFound as RunNotFound
from asyncjobs.errors import RunTimeout as RunTimeout
from asyncjobs.errors import SchemaMismatch as SchemaMismatch
from asyncjobs.errors import StepMismatch as StepMismatch
from asyncjobs.errors import UnknownJob as UnknownJob
from asyncjobs.explain import Explanation as Explanation
from asyncjobs.explain import Reason as Reason
from asyncjobs.explain import ReasonCode as ReasonCode
from asyncjobs.explain import SlotHolder as SlotHolder
from asyncjobs.feed import TraceUpdate as TraceUpdate
from asyncjobs.feed import UpdateKind as UpdateKind
from asyncjobs.jobs import Job as Job
from asyncjobs.jobs import RunOptions as RunOptions
from asyncjobs.remote import JobRef as JobRef
from asyncjobs.results import RunErrorInfo as RunErrorInfo
from asyncjobs.results import RunResult as RunResult
from asyncjobs.retry import RetryPolicy as RetryPolicy
from asyncjobs.runs import EventCursor as EventCursor
from asyncjobs.runs import RunEvent as RunEvent
from asyncjobs.runs import RunPage as RunPage
from asyncjobs.runs import RunRecord as RunRecord
from asyncjobs.runs import RunStatus as RunStatus
from asyncjobs.runs import Trigger as Trigger
from asyncjobs.schedules import ScheduleState as ScheduleState
from asyncjobs.summary import JobSummary as JobSummary
from asyncjobs.summary import LastSuccess as LastSuccess
from asyncjobs.sync import SyncClient as SyncClient
from asyncjobs.sync import SyncRun as SyncRun
from asyncjobs.worker import Worker as Worker
from asyncjobs.worker import WorkerStats as WorkerStats


def _wire() -> None:
    # Python runs this file before any submodule is usable, so App always finds its factories
    from asyncjobs.wiring import wire_app

    wire_app()


_wire()

__all__ = (
    "App",
    "AsyncJobsError",
    "Client",
    "ConcurrencyKeyError",
    "ConfigurationError",
    "Context",
    "DatabaseBusy",
    "DatabaseError",
    "DatabaseUnavailable",
    "DuplicateRun",
    "EmbeddedPostgresError",
    "EventCursor",
    "Explanation",
    "InvalidArguments",
    "Job",
    "JobRef",
    "JobSummary",
    "JobTimeout",
    "LastSuccess",
    "PruneResult",
    "Reason",
    "ReasonCode",
    "ResultNotStorable",
    "RetryPolicy",
    "Run",
    "RunCancelled",
    "RunError",
    "RunErrorInfo",
    "RunEvent",
    "RunExpired",
    "RunFailed",
    "RunNotFound",
    "RunOptions",
    "RunPage",
    "RunRecord",
    "RunResult",
    "RunStatus",
    "RunTimeout",
    "ScheduleState",
    "SchemaMismatch",
    "SlotHolder",
    "StepMismatch",
    "SyncClient",
    "SyncRun",
    "TraceUpdate",
    "Trigger",
    "UnknownJob",
    "UpdateKind",
    "Worker",
    "WorkerStats",
    "get_context",
)
