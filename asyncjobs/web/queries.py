"""The dashboard's query parameters as models, for the OpenAPI document.

The handlers read them with ``asyncjobs/web/http.py`` (its error messages name the
parameter); ``tests/test_web_openapi.py`` sends every one documented for a JSON endpoint
and checks it is accepted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from asyncjobs.runs import RunStatus, Trigger


class RunFilters(BaseModel):
    job: str | None = Field(None, description="Job name")
    status: RunStatus | None = Field(None, description="Run status")
    trigger: Trigger | None = Field(None, description="Why the run exists")
    parent: int | None = Field(None, ge=0, description="Parent run id")
    root: int | None = Field(None, ge=0, description="Root run id (a whole trace tree)")
    since: datetime | None = Field(
        None, description="Created at or after (ISO 8601 with time zone)"
    )
    until: datetime | None = Field(None, description="Created before (ISO 8601 with time zone)")
    roots: Literal["0", "1", "false", "true"] | None = Field(
        None, description="1: only root runs (no children)"
    )
    limit: int = Field(50, ge=1, le=1000, description="Page size")


class RunsQuery(RunFilters):
    cursor: int | None = Field(None, ge=0, description="next_cursor of the previous page")


class FeedQuery(RunFilters):
    after: str | None = Field(None, description="Resume cursor (as Last-Event-ID)")


class RunEventsQuery(BaseModel):
    after: str | None = Field(
        None, description="Stream: resume cursor (as Last-Event-ID); JSON: an event id"
    )
    limit: int = Field(1000, ge=1, le=1000, description="JSON only: at most this many events")


class TreeQuery(BaseModel):
    limit: int = Field(5000, ge=1, le=5000, description="At most this many runs")


class WorkersQuery(BaseModel):
    ttl: int = Field(
        30, ge=1, le=86400, description="Seconds of silence after which a worker is not alive"
    )


class ActivityQuery(BaseModel):
    window: int = Field(3600, ge=60, le=86400, description="Seconds to look back")
