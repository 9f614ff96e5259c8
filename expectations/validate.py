"""Validation entry point: one day's partitions against the committed GX suites, first step of every run.

GX state lives per workspace and per day, under ``$HAP_HOME/validation/ds=<ds>/gx/`` (a GX file
context: validation definitions, results, Data Docs), rebuilt on each validation of the day; the
suites in the checkout are read, never written. A lock per day serializes two validations of the
same day; different days and workspaces never share a file, so they run at once safely.

Outcomes: **passed**; **quarantined** — the data failed, the partition stays where it is and
training refuses it until a re-validation passes; **error** — the validator itself failed (GX or
the machine), which says nothing about the data: not a quarantine, rerun it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from expectations import baseline, derived
from expectations.report import render
from expectations.suites import BATCHES, load_committed
from hap.config import HapConfig
from hap.contract import TABLES, partition_dir, read_partition
from hap.progress import Progress, progress
from hap.workspace import Workspace

log = logging.getLogger(__name__)

DATASOURCE = "hap_logs"
EXIT_PASSED, EXIT_QUARANTINED, EXIT_ERROR = 0, 1, 2
# index columns GX reports for each failing row, so messages carry ids and values, not row numbers
_INDEX_COLUMNS = {
    "requests": ["request_id"],
    "schema": ["table", "column", "expected_type", "observed_type"],
    "candidate_values": ["column", "source", "stat", "value", "rows", "example_request", "example_item"],
    "per_request": ["request_id"],
}


class ValidationFailed(RuntimeError):
    """The day's data failed validation and was quarantined; the message names each failure."""


class ValidatorError(RuntimeError):
    """The validator itself failed: the data was not judged, nothing is quarantined. Rerun."""


def validate_day(workspace_root: str | Path, ds: str, cfg: HapConfig | None = None) -> dict[str, Any]:
    """Validate ``ds``'s partitions, record the verdict (passed / quarantined) and return it.

    Raises ``ValidatorError`` (after recording an ``error`` verdict) when the validator fails.
    """
    ws = Workspace.from_env(workspace_root)
    cfg = cfg or HapConfig.from_env()
    day_dir = ws.validation_dir(ds)
    day_dir.mkdir(parents=True, exist_ok=True)
    with _day_lock(day_dir), progress(total=_steps(BATCHES), desc=f"validate ds={ds}", unit="step") as bar:
        try:
            verdict = _validate(ws, ds, cfg, bar)
        except Exception as exc:  # noqa: BLE001 - anything here is the validator's failure, not the data's
            log.exception("validator failed for ds=%s", ds)
            error = f"{type(exc).__name__}: {exc}"
            ws.record_validation(ds, {"ds": ds, "success": False, "status": "error", "error": error, "tables": {}})
            raise ValidatorError(f"ds={ds}: the validator failed, the data was not judged ({error})") from exc
    ws.record_validation(ds, verdict)
    log.info("validation ds=%s: %s", ds, describe(verdict))
    return verdict


@contextlib.contextmanager
def _day_lock(day_dir: Path):
    with (day_dir / ".lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _steps(batches: Any) -> int:
    """The laps of ``_validate``: read, derive, and with batches the GX context, a suite each, data docs."""
    return 4 + len(batches) if batches else 2


def _validate(ws: Workspace, ds: str, cfg: HapConfig, bar: Progress | None = None) -> dict[str, Any]:
    import pyarrow as pa

    verdict: dict[str, Any] = {"ds": ds, "tables": {}}
    clock = _Stopwatch(bar)
    tables: dict[str, pa.Table] = {}
    for table in TABLES:
        try:
            tables[table] = read_partition(ws.data, table, ds)
        except Exception as exc:  # noqa: BLE001 - unreadable or missing partition: the data's failure
            verdict["tables"][table] = _data_failure("readable_partition", str(exc))
    clock.lap("read")

    batches: dict[str, Any] = {}
    params: dict[str, Any] = {"ds_set": [ds], **_composition_parameters(cfg)}
    if tables:
        batches["schema"] = derived.schema_table(tables)
    if "requests" in tables:  # the behaviour sequence is judged in per_request (and slow to convert)
        req_table = tables["requests"]
        batches["requests"] = req_table.drop_columns([c for c in ("hist_item_ids",) if c in req_table.column_names])
    if "candidates" in tables:
        batches["candidate_values"] = derived.candidate_values(tables["candidates"])
    if len(tables) == 2:
        req, cand = tables["requests"], tables["candidates"]
        schema = batches["schema"]
        schema_ok = all(
            e == o
            for e, o in zip(schema["expected_type"].to_pylist(), schema["observed_type"].to_pylist(), strict=True)
        )
        try:
            batches["per_request"] = derived.per_request_table(req, cand, cfg.composition)
            stats, detail = derived.day_stats(req, cand, *_previous_day(ws, ds))
        except Exception as exc:  # noqa: BLE001
            if schema_ok:
                raise  # sound columns that cannot be aggregated: our bug, not the data's
            verdict["tables"]["per_request"] = _data_failure("computable_aggregates", f"{type(exc).__name__}: {exc}")
        else:
            base = baseline.choose(ds, cfg.validation.day_over_day, lambda day: _earlier_stats(ws, day, cfg))
            judged = baseline.bands(stats, base, cfg.validation)
            verdict.update(stats=stats, detail=detail, day_over_day=judged, baseline=base.describe())
            batches["daily"] = pa.table({k: [float(v)] for k, v in stats.items()})
            for name, band in judged.items():
                params[f"{name}_min"], params[f"{name}_max"] = band["min"], band["max"]
    if bar is not None:
        bar.total = _steps(batches)  # fewer suites when a table is missing
    clock.lap("derive")

    if batches:
        context, definitions = _context(ws.validation_dir(ds))
        clock.lap("gx.context")
        from great_expectations.core.run_identifier import RunIdentifier

        run_id = RunIdentifier(run_name=f"ds={ds}")
        result_ids = []
        for name, table in batches.items():
            fmt: dict[str, Any] = {"result_format": "SUMMARY", "partial_unexpected_count": 5}
            if name in _INDEX_COLUMNS and (name != "requests" or "request_id" in table.column_names):
                fmt["unexpected_index_column_names"] = _INDEX_COLUMNS[name]
            result = definitions[name].run(
                batch_parameters={"dataframe": table.to_pandas()},
                expectation_parameters=params,
                result_format=fmt,
                run_id=run_id,
            )
            verdict["tables"][name] = _summarize(name, result, verdict.get("day_over_day", {}))
            result_ids.append((name, result.batch_id))
            clock.lap(f"gx.{name}")
        verdict["data_docs"] = _build_docs(context, run_id, result_ids)
        clock.lap("data_docs")
    verdict["timings_s"] = clock.laps
    verdict["success"] = all(t["success"] for t in verdict["tables"].values())
    verdict["rows_sound"] = all(t["success"] for n, t in verdict["tables"].items() if n != "daily") and len(tables) == 2
    verdict["partition"] = {t: str(partition_dir(ws.data, t, ds)) for t in TABLES}
    verdict["status"] = "passed" if verdict["success"] else "quarantined"
    verdict["report"] = _write_report(ws.validation_dir(ds), verdict)
    return verdict


def _write_report(day_dir: Path, verdict: dict[str, Any]) -> str:
    """The day's self-contained HTML report (``expectations.report``), linking GX's suite pages."""
    site = day_dir / "gx" / "uncommitted" / "data_docs" / "local_site" / "validations"
    pages = {}
    for name in verdict["tables"]:
        found = sorted((site / name).rglob("*.html")) if (site / name).is_dir() else []
        if found:
            pages[name] = found[-1]
    path = day_dir / "report.html"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render(verdict, pages))
    os.replace(tmp, path)
    return path.as_uri()


def _composition_parameters(cfg: HapConfig) -> dict[str, Any]:
    comp = cfg.composition
    return {
        "expose_min": comp.expose[0],
        "expose_max": comp.expose[1],
        "rank_min": comp.rank[0],
        "rank_max": comp.rank[1],
        "prerank_min": comp.prerank[0],
        "prerank_max": comp.prerank[1],
        "rank_pos_min": comp.rank_cutoff + 1,
        "prerank_pos_min": comp.prerank_cutoff + 1,
    }


def _previous_day(ws: Workspace, ds: str) -> tuple[Any, Any]:
    """The previous day's candidate keys and request ids (carry-over and id reuse), or None each."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    prev = (dt.date.fromisoformat(ds) - dt.timedelta(days=1)).isoformat()
    out = []
    for table, columns in (("candidates", ["request_id", "item_id", "source"]), ("requests", ["request_id"])):
        files = sorted(partition_dir(ws.data, table, prev).glob("*.parquet"))
        try:
            out.append(pa.concat_tables(pq.read_table(f, columns=columns) for f in files) if files else None)
        except Exception:  # noqa: BLE001 - an unreadable previous day is its own validation's business
            out.append(None)
    return out[0], (out[1]["request_id"] if out[1] is not None else None)


def _earlier_stats(ws: Workspace, day: str, cfg: HapConfig) -> dict[str, float] | None:
    """A sound earlier day's aggregates: from its verdict, or from its partition if never validated."""
    path = ws.validation_dir(day) / "verdict.json"
    if path.exists():
        verdict = json.loads(path.read_text())
        if verdict.get("status") != "error":
            return verdict.get("stats") if verdict.get("rows_sound", verdict.get("success")) else None
    if not (partition_dir(ws.data, "candidates", day).exists() and partition_dir(ws.data, "requests", day).exists()):
        return None
    try:
        req, cand = read_partition(ws.data, "requests", day), read_partition(ws.data, "candidates", day)
        return derived.day_stats(req, cand, None)[0]
    except Exception:  # noqa: BLE001 - unreadable: not a baseline day
        return None


def _context(day_dir: Path):
    """A fresh GX file context for this day, with the committed suites (read-only inputs)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    root = day_dir / "gx"
    if root.exists():
        shutil.rmtree(root)  # a rerun of the day replaces its GX state (idempotent by day)
    context = gx.get_context(mode="file", project_root_dir=str(day_dir))
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context.variables.progress_bars = ProgressBarsConfig(globally=False)  # task logs are read by people
    source = context.data_sources.add_pandas(DATASOURCE)
    definitions = {}
    for name in BATCHES:
        batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe(name)
        suite = context.suites.add(gx.ExpectationSuite(**load_committed(name)))
        definitions[name] = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch_def, suite=suite)
        )
    return context, definitions


def _data_failure(expectation: str, observed: str) -> dict[str, Any]:
    message = f"{expectation}: {observed}"
    return {
        "success": False,
        "evaluated": 0,
        "failed": [{"expectation": expectation, "column": None, "observed": observed, "message": message}],
    }


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _summarize(batch: str, result, bands: dict[str, dict[str, Any]]) -> dict[str, Any]:
    failed = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        res = r.result or {}
        kwargs = cfg.kwargs
        column = kwargs.get("column") or kwargs.get("column_A") or kwargs.get("column_list")
        rows = res.get("partial_unexpected_index_list") or []
        values = res.get("partial_unexpected_list") or []
        entry: dict[str, Any] = {
            "expectation": cfg.type,
            "column": column,
            "condition": str(kwargs["row_condition"]) if kwargs.get("row_condition") else None,
            "observed": res.get("observed_value"),
            "unexpected_count": res.get("unexpected_count"),
            "error": (r.exception_info or {}).get("exception_message") if not r.result else None,
        }
        if batch == "candidate_values" and rows:
            entry["column"] = sorted({row["column"] for row in rows if isinstance(row, dict)})
            if len(entry["column"]) == 1:
                entry["column"] = entry["column"][0]
            entry["examples"] = [_value_example(row) for row in rows if isinstance(row, dict)]
            entry["message"] = f"candidates: {'; '.join(entry['examples'])}"
        elif batch == "daily" and column in bands:
            b = bands[column]
            entry["observed"] = b["observed"]
            entry["band"] = [b["min"], b["max"]]
            entry["message"] = (
                f"{column} observed {_fmt(b['observed'])}, band [{_fmt(b['min'])}, {_fmt(b['max'])}] ({b['why']})"
            )
        else:
            examples = [_row_example(batch, row, column) for row in rows] if rows else [_fmt(v) for v in values]
            entry["examples"] = examples
            what = f"{column}" + (f" where {entry['condition']}" if entry["condition"] else "")
            count = entry["unexpected_count"]
            observed = f"observed {entry['observed']}" if entry["observed"] is not None else f"{count} unexpected"
            entry["message"] = f"{batch}.{what}: {cfg.type} failed ({observed})" + (
                f", e.g. {'; '.join(examples)}" if examples else ""
            )
            if entry["error"]:
                entry["message"] += f" [GX error: {entry['error']}]"
        failed.append(entry)
    return {"success": bool(result.success), "evaluated": len(result.results), "failed": failed}


def _value_example(row: dict[str, Any]) -> str:
    col, stat = row.get("column"), row.get("stat")
    what = (
        f"{col} null/NaN"
        if stat == "null"
        else f"{col}={row.get('value')}" + (f" ({stat})" if stat in ("min", "max") else "")
    )
    where = f"source {row.get('source')}"
    return f"{what} [{where}, {row.get('rows')} rows, e.g. request {row.get('example_request')} item {row.get('example_item')}]"


def _row_example(batch: str, row: Any, column: Any) -> str:
    if not isinstance(row, dict):
        return str(row)
    if batch == "schema":
        return f"{row.get('table')}.{row.get('column')}: expected {row.get('expected_type')}, got {row.get('observed_type')}"
    ident = f"request {row.get('request_id')}"
    shown = {k: v for k, v in row.items() if k != "request_id"}
    return ident + (": " + ", ".join(f"{k}={_fmt(v)}" for k, v in shown.items()) if shown else "")


class _Stopwatch:
    """Seconds per step of a validation (``timings_s``); each lap is also a step of ``bar``."""

    def __init__(self, bar: Progress | None = None) -> None:
        self._now = time.perf_counter
        self._last = self._now()
        self._bar = bar
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = self._now()
        self.laps[name] = round(now - self._last, 3)
        self._last = now
        if self._bar is not None:
            self._bar.update(1, last=name)


def _build_docs(context, run_id, results: list[tuple[str, str]]) -> str | None:
    """GX Data Docs HTML for this run's results (best effort: a docs failure is not a data failure)."""
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
        ValidationResultIdentifier,
    )

    try:
        ids = [ValidationResultIdentifier(ExpectationSuiteIdentifier(name=n), run_id, b) for n, b in results]
        sites = context.build_data_docs(resource_identifiers=ids)
        return next(iter(sites.values()), None)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not build data docs: %s", exc)
        return None


def describe(verdict: dict[str, Any]) -> str:
    """One readable line per failure (what the on-call engineer reads first)."""
    if verdict.get("status") == "error":
        return f"ds={verdict['ds']} validator ERROR (not a quarantine; rerun): {verdict.get('error')}"
    if verdict["success"]:
        n = sum(t["evaluated"] for t in verdict["tables"].values())
        return f"ds={verdict['ds']} passed ({n} expectations)"
    lines = [f"ds={verdict['ds']} FAILED validation; partition quarantined (kept, not trained on):"]
    for table, t in verdict["tables"].items():
        for f in t["failed"]:
            lines.append(f"  {table}: {f.get('message') or f['expectation']}")
    return "\n".join(lines)


def table(verdict: dict[str, Any]) -> str:
    """A short table per batch: checks, failures, the first failure (``hap validate`` prints it)."""
    if verdict.get("status") == "error":
        return describe(verdict)
    rows = [("batch", "checks", "failed", "first failure")]
    for name, t in verdict["tables"].items():
        first = t["failed"][0].get("message", t["failed"][0]["expectation"]) if t["failed"] else ""
        rows.append((name, str(t["evaluated"]), str(len(t["failed"])), first[:110]))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows]
    status = verdict["status"].upper()
    lines.insert(
        0, f"ds={verdict['ds']}: {status}" + ("" if verdict["success"] else " (partition kept, not trained on)")
    )
    if verdict.get("report"):
        lines.append(f"Report: {verdict['report']}")
    return "\n".join(lines)
