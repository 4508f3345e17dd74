"""What `avp` shows: data lines on stdout (paths, JSON), one-line messages on stderr, progress bars,
and domain errors as one line and an exit code."""

from __future__ import annotations

import json
import os
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Literal

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from avpcli.errors import AvpError, UsageError

stderr = Console(stderr=True)

# What must not reach a line of output as it is: the backslash (so that escapes read back unambiguously),
# control characters (a newline splits a path in two; ESC sequences drive the terminal), Unicode line
# and paragraph separators, bidirectional overrides, and the bytes of names that are not UTF-8
# (Python holds them as lone surrogates).
_UNPRINTABLE = re.compile(r"[\\\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_character(match: re.Match) -> str:
    character = match.group()
    code = ord(character)
    if character in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[character]
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a name that is not UTF-8
        return f"\\x{code - 0xDC00:02x}"
    # \xNN from 0x80 up is a byte that is not UTF-8; the characters U+0080-U+009F are \u0080-\u009f.
    return f"\\x{code:02x}" if code < 0x80 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` safe for one line of output: backslash as \\\\, newline as \\n, ESC as \\x1b, a non-UTF-8 byte
    as \\xNN (80-ff), a line separator as \\u2028, ...; every other character (accents, scripts) as it is.
    unprintable reads it back."""
    return _UNPRINTABLE.sub(_escape_character, text)


_ESCAPE = re.compile(r"\\(?:([\\nrt])|x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4}))")
_UNESCAPED = {"\\": "\\", "n": "\n", "r": "\r", "t": "\t"}


def _unescape_match(match: re.Match) -> str:
    named, byte, character = match.groups()
    if named:
        return _UNESCAPED[named]
    if byte:
        code = int(byte, 16)
        return chr(code) if code < 0x80 else chr(0xDC00 + code)  # a byte that is not UTF-8, as os.fsdecode holds it
    return chr(int(character, 16))


def unprintable(line: str) -> str:
    """The text that `printable` turned into `line` (so that line mode reads the paths line mode prints):
    \\\\, \\n, \\r, \\t, \\xNN and \\uNNNN are read back; a backslash before anything else stays as it is."""
    return _ESCAPE.sub(_unescape_match, line)


def echo_path(path: Path, null: bool = False, file: IO[Any] | None = None) -> None:
    """One output path on stdout (or `file`): escaped on a line of its own, or (--null) as it is and ended by a
    NUL byte."""
    if null:
        typer.echo(os.fsencode(path) + b"\0", nl=False, file=file)
    else:
        typer.echo(printable(str(path)), file=file)


def say(prefix: str, text: str, console: Console = stderr) -> None:
    """One stderr line: a styled prefix, then `text` as it is (markup, emoji codes, control characters escaped)."""
    # soft_wrap: one line whatever the terminal's width, so that scripts can grep it.
    console.print(f"{prefix} {escape(printable(text))}", highlight=False, soft_wrap=True, emoji=False)


def _say_failed(event, console: Console = stderr) -> None:
    say("[red]failed:[/]", f"{event.source}: {event.reason}", console)


def _json_line(event) -> str:
    """A finished or failed file as one line of JSON: source, output (its path), status, reason, whether an
    earlier run had done it (skipped), then the rest of its manifest entry (an encryption's figures)."""
    entry = dict(event.entry or {})
    record = {"source": event.source, "output": str(event.output) if event.output is not None else None,
              "status": entry.pop("status", "failed" if event.kind == "failed" else "ok"),
              "reason": entry.pop("reason", None) or event.reason or None, "skipped": event.kind == "skipped"}
    record.update((field, value) for field, value in entry.items() if field not in ("source", "output"))
    # ensure_ascii: every name, whatever its bytes, reads back from a line that is safe on a terminal.
    return json.dumps(record, ensure_ascii=True)


def progress_bars() -> Progress:
    """avp's progress bars, on stderr: label, bar, done/total, time taken and left."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=stderr,
        transient=False,
    )


class EventPrinter:
    """Reports a run's events as they come, and counts them: a failure as one stderr line, each finished
    file on stdout (`stdout`: "paths", one path a line or NUL-ended with `null`; "json", one JSON
    object a line; "none") and progress on a bar of `progress`, if given, described by `description`
    and of `total` steps (None: not known until the first progress event)."""

    def __init__(self, stdout: Literal["paths", "json", "none"] = "none", null: bool = False,
                 progress: Progress | None = None, description: str = "", total: int | None = None) -> None:
        self.stdout, self.null, self.progress = stdout, null, progress
        self.data: IO[Any] | None = None  # where the data lines go (None: sys.stdout as it is at the time)
        self.console = progress.console if progress is not None else stderr
        self.task = progress.add_task(description, total=total) if progress is not None else None
        self.finished = self.failed = self.missed_bars = 0
        # Sealed containers written or kept (issue #23), and of those the sources sealed only (no model input).
        self.sealed = self.sealed_only = 0

    def __call__(self, event) -> None:
        if event.kind == "progress":
            if self.progress is not None:
                self.progress.update(self.task, completed=event.done, total=event.total)
            return
        if event.kind in ("warning", "note"):  # one stderr line, about the run rather than a file
            say("[yellow]warning:[/]" if event.kind == "warning" else "note:", event.reason, self.console)
            return
        if event.kind == "failed":
            self.failed += 1
            _say_failed(event, self.console)
        else:
            if (event.entry or {}).get("status") == "sealed":
                self.sealed += 1
                self.sealed_only += (event.entry or {}).get("output", "") is None
            else:
                self.finished += 1
            self.missed_bars += event.missed_bars
            if self.stdout == "paths":
                echo_path(event.output, self.null, self.data)
        if self.stdout == "json":
            typer.echo(_json_line(event), file=self.data)  # echo flushes: a reader downstream gets each file at once


@contextmanager
def ray_messages_to_stderr(printer: EventPrinter) -> Iterator[None]:
    """While a Ray run goes on in this process: sys.stdout is stderr, and `printer` writes its data lines to the
    stdout that was. Ray's driver prints the cluster's messages about the run (a worker died, a task is retried)
    on sys.stdout, which carries avp's data (paths, NDJSON); so they go beside avp's own messages."""
    data = sys.stdout
    printer.data, sys.stdout = data, sys.stderr
    try:
        yield
    finally:
        sys.stdout, printer.data = data, None


class StagePrinter:
    """Reports a library call that runs in stages (an `avp evaluate` analysis), as a context manager.

    The bars appear when the first "stage" event comes, so that a call that fails before draws
    none; each stage gets a bar labelled by the event's source, of its total steps (0: not known
    yet), fed by the events that follow (an EventPrinter: failures are stderr lines). A "warning" closes the bars and is one stderr line
    below them. The bars close when the call returns or fails.
    """

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.printer = EventPrinter()

    def __enter__(self) -> "StagePrinter":
        return self

    def __exit__(self, *error: object) -> None:
        self.close()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def __call__(self, event) -> None:
        if event.kind == "stage":
            if self.progress is None:
                self.progress = progress_bars()
                self.progress.start()
            self.printer = EventPrinter(progress=self.progress, description=event.source, total=event.total or None)
        elif event.kind == "warning":
            self.close()
            say("[yellow]warning:[/]", event.reason)
        else:
            self.printer(event)


def _fail(message: str, code: int = 1) -> typer.Exit:
    say("[bold red]error:[/]", message)
    return typer.Exit(code)


@contextmanager
def domain_errors() -> Iterator[None]:
    """Turn avp's domain errors into a one-line message and an exit code (2 for usage errors)."""
    try:
        yield
    except UsageError as error:
        raise _fail(str(error), 2) from None
    except AvpError as error:
        raise _fail(str(error), 1) from None
