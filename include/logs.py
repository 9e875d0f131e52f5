"""Readable task logs: progress lines, library noise at its proper level, and rank output forwarded.

Shared by every stage and import-light (no Airflow, no torch): the trainer and evaluator images use it.

- `Progress` emits one plain line every `progress_interval_s()` seconds (LLMOPS_PROGRESS_INTERVAL_S,
  default 5 s, so a one-minute local run shows several): done of total, rate, ETA, counts so far.
  No carriage returns, no ANSI colours: the Airflow UI's log view shows each line as it is.
- `quiet_libraries()` puts MLflow's and absl's messages through Python logging at their own level
  (MLflow writes INFO to stderr, which a task log shows as red ERROR lines), turns MLflow's artifact
  progress bar off, and lets a message repeated per sample (rouge_score's "Using default tokenizer.")
  through once. Called wherever the lifecycle reaches MLflow or RAGAS; idempotent.
- `forward_lines` copies a child process's pipe into a file (the launcher's failure tails read it)
  and hands each line, cleaned, to a callback as it arrives.
- `failure_cause` reads a failure's one-line cause out of a task log (Airflow's JSON lines) or a
  command's console output (a Python traceback), for a summary that leaves the traceback in the log.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

PROGRESS_INTERVAL_ENV = "LLMOPS_PROGRESS_INTERVAL_S"
DEFAULT_PROGRESS_INTERVAL_S = 5.0

# ANSI escape sequences (CSI and OSC), then any other control character except tab.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def progress_interval_s(environ: Mapping[str, str] | None = None,
                        default: float = DEFAULT_PROGRESS_INTERVAL_S) -> float:
    """Seconds between progress lines: LLMOPS_PROGRESS_INTERVAL_S, else `default` (5 s; a long NeMo run
    passes a longer one)."""
    raw = (os.environ if environ is None else environ).get(PROGRESS_INTERVAL_ENV, "").strip()
    try:
        value = float(raw) if raw else default
    except ValueError:
        return default
    return value if value >= 0 else default


def printable(text: str) -> str:
    """One readable line: ANSI sequences dropped, a carriage-return redraw reduced to its last state,
    every other control character (newlines included) removed, trailing blanks stripped."""
    text = _ANSI.sub("", text).rstrip("\r\n")
    if "\r" in text:
        text = [part for part in text.split("\r") if part.strip()][-1:] or [""]
        text = text[0]
    return _CONTROL.sub("", text).rstrip()


def duration(seconds: float | None) -> str:
    """45 s, 3 min 05 s, 2 h 07 min; '?' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def number(value: Any) -> str:
    """A count or a measurement, short: 12345, 812, 61.1, 3.412, 0.0451, 1.2e-05."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 100 or value == 0:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.3f}"
    return f"{value:.3g}"


def format_progress(label: str, done: int | float, total: int | float | None, unit: str, elapsed_s: float,
                    fields: Mapping[str, Any] | None = None, *, fraction: float | None = None) -> str:
    """'curate: 4096 of 12000 records (34%), 812 records/s, ETA 10 s; written 3900, quarantined 20'.

    `fraction` (0..1) overrides done/total for the percentage and ETA when the total is not a count
    of `unit` (curation knows the bytes it has read, not the records still to come).
    """
    rate = done / elapsed_s if elapsed_s > 0 else None
    if fraction is None and total:
        fraction = done / total
    head = f"{label}: {number(done)}" + (f" of {number(total)}" if total is not None else "") + f" {unit}"
    parts = [head + (f" ({min(fraction, 1.0):.0%})" if fraction is not None else "")]
    if rate is not None:
        parts.append(f"{number(rate)} {unit}/s")
    if fraction is not None:
        eta = 0.0 if fraction >= 1 else (elapsed_s * (1 - fraction) / fraction if fraction > 0 else None)
        parts.append(f"ETA {duration(eta)}")
    line = ", ".join(parts)
    extra = [f"{k} {number(v)}" for k, v in (fields or {}).items() if v is not None]
    return printable(line + ("; " + ", ".join(extra) if extra else ""))


class Progress:
    """Rate-limited progress lines for one piece of work: `update` emits at most one line per interval
    (and always when forced or done); each line goes to `emit` (a logger's info, or print)."""

    def __init__(self, label: str, unit: str, *, total: int | float | None = None,
                 interval_s: float | None = None, emit: Callable[[str], Any] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.label, self.unit, self.total = label, unit, total
        self.interval_s = progress_interval_s() if interval_s is None else interval_s
        self.emit = emit or logging.getLogger("include.progress").info
        self.clock = clock
        self.started = clock()
        self._last: float | None = None
        self.lines = 0

    def due(self, *, finished: bool = False, force: bool = False) -> bool:
        """Whether a line is due now (an interval since the last one, or since the start); marks it sent."""
        now = self.clock()
        since = now - (self.started if self._last is None else self._last)
        if not (force or finished or since >= self.interval_s):
            return False
        self._last = now
        return True

    def elapsed(self) -> float:
        return self.clock() - self.started

    def update(self, done: int | float, fields: Mapping[str, Any] | None = None, *, force: bool = False,
               fraction: float | None = None) -> str | None:
        """Emit and return a progress line when one is due (or forced, or done reaches the total)."""
        if not self.due(finished=self.total is not None and done >= self.total, force=force):
            return None
        line = format_progress(self.label, done, self.total, self.unit, self.elapsed(), fields, fraction=fraction)
        self.emit(line)
        self.lines += 1
        return line


# --------------------------------------------------------------------------- library noise

class OncePerMessage(logging.Filter):
    """Let each distinct message of a logger through once (per process)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is the handler's business
            return True
        with self._lock:
            if message in self.seen:
                return False
            self.seen.add(message)
            return True


_LIBRARY_ENV = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # "Downloading artifacts" bars on stderr
    "MLFLOW_CONFIGURE_LOGGING": "false",  # no stderr handler of its own: records propagate to the task log
}
# Loggers MLflow gives a stderr handler of its own when it configures logging; their level if unset.
_MLFLOW_LOGGERS = {"mlflow": logging.INFO, "alembic": logging.WARNING, "sqlalchemy.engine": logging.WARNING,
                   "huey": logging.WARNING}
_ONCE_LOGGERS = ("absl",)  # rouge_score logs "Using default tokenizer." once per scorer, i.e. per sample


def quiet_libraries() -> None:
    """Library messages through logging, at their own level, once; see the module docstring."""
    for key, value in _LIBRARY_ENV.items():
        os.environ.setdefault(key, value)
    for name, level in _MLFLOW_LOGGERS.items():
        logger = logging.getLogger(name)
        # MLflow imported before this ran: drop its stderr handler; a level already set (MLFLOW_LOGGING_LEVEL) stays.
        logger.handlers = [h for h in logger.handlers if not _is_mlflow_stream_handler(h)]
        logger.propagate = True
        if logger.level == logging.NOTSET:
            logger.setLevel(level)
    for name in _ONCE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OncePerMessage) for f in logger.filters):
            logger.addFilter(OncePerMessage())


def _is_mlflow_stream_handler(handler: logging.Handler) -> bool:
    stream = getattr(handler, "stream", None)
    return type(stream).__name__ == "MlflowLoggingStream"


# --------------------------------------------------------------------------- child process output

def forward_lines(pipe: IO[bytes], sink: str | os.PathLike | None, on_line: Callable[[str], Any],
                  name: str = "forward") -> threading.Thread:
    """A daemon thread: each line of `pipe` is appended to the file `sink` (raw, flushed) and passed to
    `on_line` as printable text (blank lines are not). Ends at EOF, closing both."""

    def pump() -> None:
        out = open(sink, "ab") if sink is not None else None  # noqa: SIM115 - closed below
        try:
            for raw in iter(pipe.readline, b""):
                if out is not None:
                    out.write(raw)
                    out.flush()
                text = printable(raw.decode("utf-8", errors="replace"))
                if text:
                    try:
                        on_line(text)
                    except Exception:  # noqa: BLE001 - a broken log handler must not stall the child
                        pass
        except (OSError, ValueError):
            pass  # the pipe was closed under us: the child is gone
        finally:
            for f in (pipe, out):
                if f is not None:
                    try:
                        f.close()
                    except OSError:
                        pass

    thread = threading.Thread(target=pump, name=name, daemon=True)
    thread.start()
    return thread


# --------------------------------------------------------------------------- failure summaries

_TRACEBACK = "Traceback (most recent call last):"
_EXCEPTION_LINE = re.compile(r"^(?P<type>[A-Za-z_][\w.]*)(?::\s?(?P<message>.*))?$")
MAX_CAUSE_CHARS = 400


def failure_cause(text: str) -> str | None:
    """'InputFailure: dataset version ... is not published under ...': the exception a failed task (or
    command) ended with, as the last line of its traceback says it, on one line; None when `text` shows
    none. `text` is a task log (Airflow's JSON lines: the last record carrying an exception, else the
    last error record) or console output (the last traceback's exception line). A message that opens a
    list ("...may only tighten ...:") keeps its first item; long messages are cut to MAX_CAUSE_CHARS."""
    lines = text.splitlines()
    records = [r for r in (_json_record(line) for line in lines) if r is not None]
    if records:
        for record in reversed(records):
            raised = record.get("exception")
            if isinstance(raised, list) and raised and isinstance(raised[0], dict):
                return _one_line(str(raised[0].get("exc_type") or "Exception"), str(raised[0].get("exc_value") or ""))
        for record in reversed(records):
            if str(record.get("level", "")).lower() in ("error", "critical"):
                return _clip(printable(str(record.get("event", ""))))
    return _console_cause(lines)


def _json_record(line: str) -> dict | None:
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _console_cause(lines: list[str]) -> str | None:
    starts = [i for i, line in enumerate(lines) if line.strip() == _TRACEBACK]
    if not starts:
        return None
    for i in range(starts[-1] + 1, len(lines)):
        line = lines[i]
        if not line.strip() or line.startswith((" ", "\t")):
            continue  # a frame, its source line, its carets
        match = _EXCEPTION_LINE.match(line.strip())
        if not match:
            return _clip(printable(line))
        rest = [candidate for candidate in lines[i + 1:i + 4] if candidate.strip()]
        message = "\n".join([match["message"] or "", *rest])
        return _one_line(match["type"].rsplit(".", 1)[-1], message)
    return None


def _one_line(exc_type: str, message: str) -> str:
    parts = [printable(part).strip() for part in message.splitlines()]
    parts = [part for part in parts if part]
    head = parts[0] if parts else ""
    if head.endswith(":") and len(parts) > 1:  # "... may only tighten the reviewed policy ...:" then "- why"
        head = f"{head} {parts[1]}"
    return _clip(f"{exc_type}: {head}" if head else exc_type)


def _clip(text: str) -> str:
    return text if len(text) <= MAX_CAUSE_CHARS else text[:MAX_CAUSE_CHARS - 1] + "…"
