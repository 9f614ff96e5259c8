"""Progress of long work (simulate, ingest, validate, training epochs, backfills).

A person at a terminal wants a live bar; an Airflow task log wants a few plain, dated lines it can
keep (a bar's carriage returns turn a log into one unreadable line). So one call site gives both:
a tqdm bar on stderr when stderr is a terminal, otherwise INFO lines through the ``hap.progress``
logger — one at the start, at most one every ``HAP_PROGRESS_INTERVAL_S`` seconds (default 10; 0: one
per update), and one at the end with the total, the elapsed time and the rate.

``HAP_PROGRESS=off`` silences it, ``bar`` / ``log`` force a mode (anything else: decide by the TTY).
Display problems never raise into the work, and an update costs about a microsecond in log mode,
so it can be called per training batch::

    with progress(total=len(days), desc="backfill", unit="day") as p:
        for ds in days:
            state = run(ds)
            p.update(1, last=f"{ds} {state}")

    for path in progress(files, desc="read", unit="file"):
        ...
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import Any, Generic, TextIO, TypeVar

__all__ = ["LOGGER", "Progress", "progress"]

LOGGER = "hap.progress"
DEFAULT_INTERVAL_S = 10.0
_BAR_POSTFIX_S = 0.1  # the bar redraws at most this often anyway: no need to format a postfix more often

T = TypeVar("T")
_clock = time.monotonic  # a module global so that tests can drive the throttle with a fake clock


class Progress(Generic[T]):
    """One piece of long work: a bar, log lines, or nothing (see the module docstring).

    Follows ``iterable`` (iterate it) or manual ``update`` calls (a context manager). ``total``
    defaults to ``len(iterable)`` where it has one; ``file`` is where a bar draws and whose TTY-ness
    picks the mode (default: ``sys.stderr``); ``enabled=False`` is silent (e.g. DDP ranks other than
    0, so a job logs its progress once).
    """

    def __init__(
        self,
        iterable: Iterable[T] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "step",
        file: TextIO | None = None,
        enabled: bool = True,
    ) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable = iterable
        self.desc, self.unit, self.n = desc, unit, 0
        self._total = total
        self._postfix: dict[str, Any] = {}
        self._closed = False
        self._bar: Any = None
        self._start = self._last = _clock()
        self.mode = _mode(file) if enabled else "off"
        if self.mode == "bar":
            self._bar = self._open_bar(file if file is not None else sys.stderr)
            if self._bar is None:
                self.mode = "log"  # no bar to be had: the lines still say how far it got
        if self.mode == "log":
            self._interval = _interval()
            self._logger = _logger()
            self._emit(f"started, {_count(total, unit)}" if total is not None else "started")

    # ------------------------------------------------------------------------------------ the API

    @property
    def total(self) -> int | None:
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        """For work whose size is known only once it has begun (e.g. after reading its input)."""
        self._total = value
        if self._bar is not None:
            try:
                self._bar.total = value
                self._bar.refresh()
            except Exception:  # noqa: BLE001 - display only
                self._bar = None

    def update(self, n: int = 1, **postfix: Any) -> None:
        """``n`` more units done; ``postfix`` values (``loss=…``, ``samples_per_s=…``) replace the shown ones."""
        if self.mode == "off":
            return
        self.n += n
        if postfix:
            self._postfix = postfix
        now = _clock()
        if self._bar is not None:
            try:
                if postfix and now - self._last >= _BAR_POSTFIX_S:  # before the update, which may redraw
                    self._last = now
                    self._bar.set_postfix_str(_postfix(postfix), refresh=False)
                self._bar.update(n)
            except Exception:  # noqa: BLE001 - a broken terminal must not stop the work
                self._bar = None
        elif self.mode == "log" and now - self._last >= self._interval:
            self._last = now
            self._emit(self._line(now))

    def close(self, error: BaseException | None = None) -> None:
        """The end line (or the bar's last draw); idempotent. ``error``: the work stopped because of it."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            try:
                if self._postfix:
                    self._bar.set_postfix_str(_postfix(self._postfix), refresh=False)
                self._bar.close()
            except Exception:  # noqa: BLE001
                pass
            self._bar = None
        elif self.mode == "log":
            now = _clock()
            elapsed = now - self._start
            rate = f"{_num(self.n / max(elapsed, 1e-9), 3)} {_plural(self.unit)}/s"
            if error is None:
                head = f"done {self._done()} in {_duration(elapsed)}, {rate}"
            else:  # a loop left early (GeneratorExit) has no reason to give
                why = "" if isinstance(error, GeneratorExit) else f" ({type(error).__name__})"
                head = f"stopped at {self._done()} after {_duration(elapsed)}{why}, {rate}"
            self._emit(head + self._tail())

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("progress(None, ...) is updated by hand: use it as `with progress(...) as p: p.update()`")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        except BaseException as exc:  # GeneratorExit included: the loop stopped before the end
            self.close(exc)
            raise
        self.close()

    def __enter__(self) -> Progress[T]:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(exc)

    # ---------------------------------------------------------------------------------- helpers

    def _open_bar(self, file: TextIO) -> Any:
        try:
            from tqdm import tqdm  # only a terminal needs it

            try:
                size = os.get_terminal_size(file.fileno())
                sized = size.columns >= 20 and size.lines >= 2
            except (AttributeError, OSError, ValueError):
                sized = False
            return tqdm(
                total=self._total,
                desc=self.desc or None,
                unit=self.unit,
                file=file,
                disable=False,  # tqdm's own TTY check would hide a bar the caller forced
                # follow the terminal's size; one that reports none (a bare pty: 0 × 0) would hide the bar
                **({"dynamic_ncols": True} if sized else {"ncols": 100, "nrows": 40}),
                mininterval=_BAR_POSTFIX_S,
            )
        except Exception:  # noqa: BLE001
            return None

    def _done(self) -> str:
        t = self._total
        if t is None:
            return _count(self.n, self.unit)
        pct = f" ({100 * self.n / t:.0f}%)" if t > 0 else ""
        return f"{self.n}/{_count(t, self.unit)}{pct}"

    def _line(self, now: float) -> str:
        elapsed = now - self._start
        rate = self.n / max(elapsed, 1e-9)
        text = f"{self._done()} {_duration(elapsed)} elapsed, {_num(rate, 3)} {_plural(self.unit)}/s"
        if self._total is not None and 0 < self.n < self._total and rate > 0:
            text += f", eta {_duration((self._total - self.n) / rate, whole=True)}"
        return text + self._tail()

    def _tail(self) -> str:
        return f" {_postfix(self._postfix)}" if self._postfix else ""

    def _emit(self, text: str) -> None:
        try:
            self._logger.info("%s", f"{self.desc}: {text}" if self.desc else text)
        except Exception:  # noqa: BLE001 - logging reports its own handler errors; this is for ours
            pass


progress = Progress  # the call sites' spelling: ``with progress(total=…, desc=…) as p`` / ``for x in progress(xs)``


def _mode(file: TextIO | None) -> str:
    """off / bar / log: the environment's choice, else a bar exactly when the output is a terminal."""
    forced = os.environ.get("HAP_PROGRESS", "").strip().lower()
    if forced in ("off", "bar", "log"):
        return forced
    try:
        return "bar" if (file if file is not None else sys.stderr).isatty() else "log"
    except Exception:  # noqa: BLE001 - a closed or odd stream: plain lines are always safe
        return "log"


def _interval() -> float:
    try:
        value = float(os.environ.get("HAP_PROGRESS_INTERVAL_S", DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value >= 0 and math.isfinite(value) else DEFAULT_INTERVAL_S


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a later redirect still gets the lines)."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def _logger() -> logging.Logger:
    """``hap.progress``, made to reach a reader: its lines are INFO, which a root left at WARNING
    (the ``hap`` CLI) or unconfigured (a plain script: only warnings print) would drop. Its level is
    set only while nobody set one (``setLevel(WARNING)`` on it silences it), and a handler of its own
    is added only when no handler exists anywhere, without propagation, so no line prints twice."""
    logger = logging.getLogger(LOGGER)
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)
    if not logger.handlers and logger.propagate and not logging.getLogger().handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    return logger


def _plural(unit: str) -> str:
    if len(unit) <= 2 or unit.endswith("s"):  # "it", "B", "steps": as they are
        return unit
    return unit + ("es" if unit.endswith(("x", "ch", "sh")) else "s")


def _count(n: int, unit: str) -> str:
    return f"{n} {unit if n == 1 else _plural(unit)}"


def _num(v: float, digits: int) -> str:
    """Readable in a log: 98000, 12.3, 0.167 (never 9.8e+04)."""
    if not math.isfinite(v):
        return str(v)
    return f"{v:.0f}" if abs(v) >= 100 else f"{v:.{digits}g}"


def _duration(s: float, whole: bool = False) -> str:
    if s < 60:
        return f"{s:.0f}s" if whole else f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"


def _postfix(values: dict[str, Any]) -> str:
    """``loss=0.4123 samples/s=98000``: floats to 4 significant digits, ``_per_`` in a name as ``/``."""
    return " ".join(f"{k.replace('_per_', '/')}={_num(v, 4) if isinstance(v, float) else v}" for k, v in values.items())
