"""Values exchanged between the job runner and the job kinds."""

from __future__ import annotations

from attrs import frozen


@frozen
class BatchResult:
    """What one batch of a job did.

    ``next_cursor`` is where the next batch starts (opaque to the runner, a
    keyset position to the kind); it is persisted with the counts before the
    next batch runs. ``processed`` and ``failed`` count this batch's items;
    ``errors`` describes some of the failures (the job keeps the last few).
    ``done`` ends the job as complete.
    """

    next_cursor: str | None
    processed: int = 0
    failed: int = 0
    errors: tuple[str, ...] = ()
    done: bool = False
