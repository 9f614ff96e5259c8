"""What each daily step did, per day: state, start, duration, outcome and error.

``$HAP_HOME/steps/ds=<ds>.json`` holds the latest run of every step of the day. A step run by an
Airflow DAG run records its run id; the first step of a new DAG run for the day starts the record
afresh (the earlier run's steps move to ``previous``), so a rerun replaces its day's record instead
of adding to it. Steps run from the CLI update their own entry. ``hap status`` and the daily report
read these files; nothing here may fail the step it records.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import functools
import inspect
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hap.lineage import actor
from hap.workspace import Workspace, read_json_object, write_json_atomic

log = logging.getLogger(__name__)

# The daily DAG's steps in order (Airflow task ids); ``report`` runs after the others whatever they did.
STEPS = ("validate", "train", "gate", "package", "promote", "deploy", "report")


def steps_file(ws: Workspace, ds: str) -> Path:
    return ws.root / "steps" / f"ds={ds}.json"


def read(ws: Workspace, ds: str) -> dict[str, Any]:
    """The day's record; an absent or unreadable one reads as empty (status and reports go on)."""
    record = read_json_object(steps_file(ws, ds))
    if record is None or not isinstance(record.get("steps"), dict):
        return {"ds": ds, "run_id": None, "steps": {}}
    return record


def interrupted(entry: dict[str, Any]) -> bool:
    """A step still marked ``running`` whose process on this host is gone (killed, OOM, lost worker)."""
    if entry.get("state") != "running" or entry.get("host") != socket.gethostname() or not entry.get("pid"):
        return False
    try:
        os.kill(int(entry["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError, OSError):
        return False
    return False


def days(ws: Workspace) -> list[str]:
    """Days with a step record, newest first."""
    folder = ws.root / "steps"
    return sorted((p.stem.removeprefix("ds=") for p in folder.glob("ds=*.json")), reverse=True)


@contextlib.contextmanager
def _locked(ws: Workspace, ds: str) -> Iterator[dict[str, Any]]:
    path = steps_file(ws, ds)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.with_name(path.name + ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = read(ws, ds)
        yield record
        write_json_atomic(path, record)


def _update(ws: Workspace, ds: str, step: str, entry: dict[str, Any], starting: bool = False) -> None:
    try:
        with _locked(ws, ds) as record:
            run_id = entry.get("run_id")
            if starting:  # a new DAG run of the day, or the day cleared and run again, starts afresh
                fresh = record.get("run_id") not in (None, run_id) or (step == "validate" and len(record["steps"]) > 1)
                if run_id != "cli" and fresh and record["steps"]:
                    record["previous"] = {"run_id": record["run_id"], "steps": record["steps"]}
                    record["steps"] = {}
                if run_id != "cli" or record.get("run_id") is None:
                    record["run_id"] = run_id
            record["steps"][step] = {**record["steps"].get(step, {}), **entry}
    except Exception:  # noqa: BLE001 - bookkeeping must never fail the step itself
        log.exception("could not record step %s for ds=%s", step, ds)


@contextlib.contextmanager
def recorded(ws: Workspace, ds: str, step: str) -> Iterator[dict[str, Any]]:
    """Record ``step`` for ``ds`` around its body. The body may put a one-line ``outcome`` into the
    yielded dict; an exception is recorded as ``failed`` with its message, then re-raised."""
    run_id = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID") or "cli"
    started = dt.datetime.now(dt.UTC).isoformat()
    entry: dict[str, Any] = {"state": "running", "started": started, "run_id": run_id, "by": actor(),
                             "pid": os.getpid(), "host": socket.gethostname()}  # fmt: skip
    entry.update(ended=None, seconds=None, outcome="", error=None)
    try_number = os.environ.get("AIRFLOW_CTX_TRY_NUMBER")
    if try_number:
        entry["try"] = int(try_number)
    _update(ws, ds, step, entry, starting=True)
    t0 = time.perf_counter()
    note: dict[str, Any] = {}
    try:
        yield note
    except BaseException as exc:
        _update(ws, ds, step, _ended("failed", t0, note, error=f"{type(exc).__name__}: {exc}"[:2000]))
        raise
    _update(ws, ds, step, _ended("success", t0, note))


def _ended(state: str, t0: float, note: dict[str, Any], error: str | None = None) -> dict[str, Any]:
    return {
        "state": state,
        "ended": dt.datetime.now(dt.UTC).isoformat(),
        "seconds": round(time.perf_counter() - t0, 2),
        "outcome": str(note.get("outcome", ""))[:500],
        "error": error,
        **{k: v for k, v in note.items() if k != "outcome"},
    }


def step(name: str, outcome: Callable[[Any], str] | None = None) -> Callable:
    """Decorate a ``workflow.flow`` step ``fn(ds, ..., ws=None, ...)``: record it for its day, with
    ``outcome(result)`` as the one-line outcome."""

    def wrap(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            ws = bound.arguments.get("ws") or Workspace.from_env()
            with recorded(ws, bound.arguments["ds"], name) as note:
                result = fn(*args, **kwargs)
                if outcome is not None:
                    try:
                        note["outcome"] = outcome(result)
                    except Exception:  # noqa: BLE001 - a summary that cannot be made is left out
                        log.exception("no outcome summary for step %s", name)
                return result

        return run

    return wrap
