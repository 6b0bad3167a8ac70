"""Durable children: the step key that identifies a child among its parent's triggers.

A run triggered from inside a job is stored with ``(parent_run_id, step_key)``, and a unique
index refuses a second child at the same step. So when the parent runs again (a retry after
its error, a restart after its worker died), triggering the "same" child returns the child of
the earlier attempt — its stored result if it finished, or a handle to wait on while it runs —
instead of running it again.

The key is, by default, the call's position among the parent's *unnamed* child triggers in
this attempt: ``#1``, ``#2``, ... (``trigger_many`` takes one position per item). Positions
are stable as long as the parent triggers the same children in the same order on every
attempt — i.e. the order does not depend on timing, randomness or data that changes between
attempts. Name a step for anything else: ``job.options(step="charge")`` (``trigger_many``
makes ``charge#1``, ``charge#2``, ...); named steps do not move the positions of unnamed ones.
If the code changed between attempts and a step now asks for another job, the trigger raises
``StepMismatch`` rather than reuse a child of the wrong job.
"""

from __future__ import annotations

from asyncjobs.errors import ConfigurationError
from asyncjobs.rules import MAX_NAME_CHARS, check_name

#: room left for the ``#N`` suffix ``trigger_many`` adds, inside the stored 200 characters
MAX_STEP_CHARS = MAX_NAME_CHARS - 20


def check_step(step: object) -> str:
    """An explicit step name: storable text of 1 to 180 characters without ``#`` (which
    marks positions and ``trigger_many`` items, so a name can never collide with them)."""
    name = check_name(step, "step", ConfigurationError)
    if len(name) > MAX_STEP_CHARS:
        raise ConfigurationError(f"step must be at most {MAX_STEP_CHARS} characters")
    if "#" in name:
        raise ConfigurationError(f"step {name!r} may not contain '#'")
    return name


def step_keys(step: str | None, first_position: int, count: int) -> list[str]:
    """Keys of ``count`` children triggered in one call: positions from ``first_position``
    for unnamed ones, the name (``name#i`` for several) for a named step."""
    if step is None:
        return [f"#{first_position + i}" for i in range(count)]
    if count == 1:
        return [step]
    return [f"{step}#{i + 1}" for i in range(count)]
