"""What a run tells its caller as it goes: one Event per file written, failed or skipped, and progress.

Runs never print; the CLI turns these events into stdout/stderr lines, and library users may pass
their own callback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class Event:
    """Something a user may want to see: a file written ("written"), failed ("failed"),
    skipped because it was already done ("skipped"), a step of progress ("progress"), a new stage of
    progress ("stage", source: its label, total: its steps), or one line for the user ("warning",
    "note": in `reason`).
    `missed_bars` marks a ciphertext that did not meet every quality bar; `entry` is the file's
    manifest entry (status, reason, figures) for written, skipped and failed files, so that a
    caller can report them as they come without reading the manifest."""

    kind: str
    source: str = ""
    output: Path | None = None
    reason: str = ""
    done: int = 0
    total: int = 0
    missed_bars: bool = False
    entry: dict[str, Any] | None = None


EventCallback = Callable[[Event], None]


def ignore_events(event: Event) -> None:
    """The callback of a caller that wants no events."""
