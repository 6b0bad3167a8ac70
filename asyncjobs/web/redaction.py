"""Per-job argument redaction on the way out of the dashboard.

Redaction happens here, on the way out, so the HTTP API, the SSE streams and the viewer
(which only ever sees what those send) all show the same thing. Values are replaced, keys
are kept, so the viewer can say that something was there.

``Redactor.args`` is the only maker of ``RedactedArgs``, and the response models
(``asyncjobs/web/models.py``) accept and write arguments only as ``RedactedArgs``: a run or
a schedule cannot reach a response without passing through here.
"""

from __future__ import annotations

import copy
from typing import Any

from asyncjobs.app import App
from asyncjobs.errors import UnknownJob
from asyncjobs.redact import KeyPath, redact_args

#: what the args of a run of a job this app does not know show (``redact_unknown_jobs``)
UNKNOWN_JOB_ARGS = {"[redacted]": "this job is not registered in the dashboard's app"}

_SEAL = object()


class RedactedArgs:
    """Arguments after redaction; made by ``Redactor.args`` only."""

    __slots__ = ("value",)

    def __init__(self, value: dict[str, Any], seal: object = None) -> None:
        if seal is not _SEAL:
            raise TypeError("RedactedArgs are made by Redactor.args only")
        self.value = value

    def __repr__(self) -> str:
        return f"RedactedArgs({self.value!r})"


class Redactor:
    """Applies each job's ``redact`` paths to run arguments."""

    def __init__(self, app: App, *, redact_unknown_jobs: bool = True) -> None:
        self.app = app
        self.redact_unknown_jobs = redact_unknown_jobs

    def keys(self, job_name: str) -> tuple[KeyPath, ...] | None:
        """The stored key paths the job redacts; ``None`` for a job the app does not know."""
        try:
            return self.app.get_job(job_name).redact_keys
        except UnknownJob:
            return None

    def args(self, job_name: str, args: dict[str, Any]) -> RedactedArgs:
        keys = self.keys(job_name)
        if keys is None:
            value = dict(UNKNOWN_JOB_ARGS) if self.redact_unknown_jobs else args
        else:
            value = redact_args(args, keys)
        return RedactedArgs(value, _SEAL)

    def schema(self, job_name: str, schema: dict[str, Any]) -> dict[str, Any]:
        """Mark redacted top-level fields ``writeOnly`` / ``format: password`` for the form."""
        top = {path[0] for path in self.keys(job_name) or () if len(path) == 1}
        properties = schema.get("properties")
        if not top or not isinstance(properties, dict):
            return schema
        marked = copy.deepcopy(schema)
        for name in top & marked["properties"].keys():
            marked["properties"][name].update(writeOnly=True, format="password")
        return marked
