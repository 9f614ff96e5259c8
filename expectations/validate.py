"""Validation entry point: one day's partitions against the GX suites, first step of every run.

The suites are defined here and persisted (get-or-add) in the GX file context under
``expectations/gx/``. A failing day is quarantined: its data stays where it is, its verdict says
"quarantined", and training refuses it until a re-validation passes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from hap.workspace import Workspace

log = logging.getLogger(__name__)

CONTEXT_ROOT = Path(__file__).parent
DATASOURCE = "hap_logs"


class ValidationFailed(RuntimeError):
    """Raised by callers that must stop the run; the message names each failed expectation."""


def _context():
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    return gx.get_context(mode="file", project_root_dir=str(CONTEXT_ROOT))


def _validation_definitions(context) -> dict[str, Any]:
    """Get-or-add the datasource, assets, suites and validation definitions (idempotent)."""
    import great_expectations as gx

    try:
        source = context.data_sources.get(DATASOURCE)
    except (KeyError, ValueError):
        source = context.data_sources.add_pandas(DATASOURCE)
    out = {}
    from expectations.suites import build_suites
    from hap.flow import load_config

    for table, expectations in build_suites(load_config().sim.composition).items():
        try:
            asset = source.get_asset(table)
        except LookupError:
            asset = source.add_dataframe_asset(table)
        try:
            batch_def = asset.get_batch_definition(table)
        except (KeyError, ValueError):
            batch_def = asset.add_batch_definition_whole_dataframe(table)
        suite = _get_or_update_suite(context, table, expectations)
        out[table] = context.validation_definitions.add_or_update(
            gx.ValidationDefinition(name=table, data=batch_def, suite=suite)
        )
    return out


def _expectation_key(e) -> str:
    cfg = e.configuration.to_json_dict()
    cfg.pop("id", None)
    return json.dumps(cfg, sort_keys=True, default=str)


def _get_or_update_suite(context, name: str, expectations: list):
    """Keep the stored suite (and its expectation ids) unless the expectations changed."""
    import great_expectations as gx

    try:
        stored = context.suites.get(name)
        if sorted(map(_expectation_key, stored.expectations)) == sorted(map(_expectation_key, expectations)):
            return stored
    except Exception:  # absent or unreadable: (re)write it below
        pass
    return context.suites.add_or_update(gx.ExpectationSuite(name=name, expectations=expectations))


def _summarize(result) -> dict[str, Any]:
    failed = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        res = r.result or {}
        examples = res.get("partial_unexpected_index_list") or res.get("partial_unexpected_list") or []
        kwargs = cfg.kwargs
        failed.append(
            {
                "expectation": cfg.type,
                "column": kwargs.get("column") or kwargs.get("column_A") or kwargs.get("column_list"),
                "condition": str(kwargs["row_condition"]) if kwargs.get("row_condition") else None,
                "observed": res.get("observed_value", res.get("unexpected_count")),
                "unexpected_count": res.get("unexpected_count"),
                "examples": [str(v) for v in examples[:5]],
                "error": (r.exception_info or {}).get("exception_message") if not r.result else None,
            }
        )
    return {"success": bool(result.success), "evaluated": len(result.results), "failed": failed}


def _history(ws: Workspace, ds: str, days: int) -> list[dict[str, float]]:
    """Stats of the trailing days that passed validation (the day-over-day baseline)."""
    from hap.workspace import window_days

    out = []
    for day in window_days(ds, days + 1)[:-1]:
        path = ws.validation_dir(day) / "verdict.json"
        if path.exists():
            verdict = json.loads(path.read_text())
            if verdict["success"] and verdict.get("stats"):
                out.append(verdict["stats"])
    return out


def validate_day(workspace_root: str | Path, ds: str) -> dict[str, Any]:
    """Validate ``ds``'s partitions, record the verdict (passed / quarantined) and return it."""
    import pandas as pd

    from expectations import derived
    from hap.contract import TABLES, partition_dir, read_partition
    from hap.flow import load_config

    ws = Workspace.from_env(workspace_root)
    comp = load_config().sim.composition
    dod = derived.DayOverDay()
    verdict: dict[str, Any] = {"ds": ds, "tables": {}}
    clock = _Stopwatch()
    tables = {}
    for table in TABLES:
        try:
            tables[table] = read_partition(ws.data, table, ds)
        except Exception as exc:  # unreadable or missing partition: a clear verdict, not a traceback
            verdict["tables"][table] = {
                "success": False,
                "evaluated": 0,
                "failed": [{"expectation": "readable_partition", "column": None, "observed": str(exc)}],
            }
    batches: dict[str, Any] = {name: t.to_pandas() for name, t in tables.items()}
    clock.lap("read")
    params: dict[str, Any] = {"ds_set": [ds]}
    if tables:
        batches["schema"] = derived.schema_table(tables).to_pandas()
    if len(tables) == 2:
        req, cand = tables["requests"], tables["candidates"]
        try:
            batches["per_request"] = derived.per_request_table(req, cand, comp.global_per_positive).to_pandas()
            batches["integrity"] = derived.integrity_table(req, cand).to_pandas()
            verdict["stats"] = derived.day_stats(req, cand)
            batches["daily"] = pd.DataFrame([verdict["stats"]])
            params.update(derived.daily_parameters(verdict["stats"], _history(ws, ds, dod.trailing_days), dod))
            verdict["day_over_day_bounds"] = params
        except Exception as exc:  # columns so broken that aggregates cannot be computed
            verdict["tables"]["per_request"] = {
                "success": False,
                "evaluated": 0,
                "failed": [{"expectation": "computable_aggregates", "column": None, "observed": str(exc)}],
            }
    clock.lap("derive")
    if batches:
        context = _context()
        definitions = _validation_definitions(context)
        from great_expectations.core.run_identifier import RunIdentifier

        run_id = RunIdentifier(run_name=f"ds={ds}")
        result_ids = []
        for name, df in batches.items():
            fmt: dict[str, Any] = {"result_format": "SUMMARY"}
            if name in ("per_request", "integrity"):
                fmt["unexpected_index_column_names"] = ["request_id"]
            elif name == "schema":
                fmt["unexpected_index_column_names"] = ["table", "column"]
            result = definitions[name].run(
                batch_parameters={"dataframe": df}, expectation_parameters=params, result_format=fmt, run_id=run_id
            )
            verdict["tables"][name] = _summarize(result)
            result_ids.append((name, result.batch_id))
        clock.lap("gx")
        verdict["data_docs"] = _build_docs(context, run_id, result_ids)
        clock.lap("data_docs")
    verdict["timings_s"] = clock.laps
    verdict["success"] = all(t["success"] for t in verdict["tables"].values())
    verdict["partition"] = {t: str(partition_dir(ws.data, t, ds)) for t in TABLES}
    verdict["status"] = "passed" if verdict["success"] else "quarantined"
    ws.record_validation(ds, verdict)
    log.info("validation ds=%s: %s", ds, describe(verdict))
    return verdict


class _Stopwatch:
    def __init__(self) -> None:
        self._now = time.perf_counter
        self._last = self._now()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = self._now()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


def _build_docs(context, run_id, results: list[tuple[str, str]]) -> str | None:
    """GX Data Docs HTML for this run's results only (best effort: a docs failure is not a data failure)."""
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
    """One readable line per failed expectation (what the on-call engineer reads first)."""
    if verdict["success"]:
        n = sum(t["evaluated"] for t in verdict["tables"].values())
        return f"ds={verdict['ds']} passed ({n} expectations)"
    lines = [f"ds={verdict['ds']} FAILED validation; partition quarantined (kept, not trained on):"]
    for table, t in verdict["tables"].items():
        for f in t["failed"]:
            col = f" column={f['column']}" if f.get("column") else ""
            cond = f" where {f['condition']}" if f.get("condition") else ""
            lines.append(
                f"  {table}: {f['expectation']}{col}{cond} observed={f.get('observed')} e.g. {f.get('examples', [])}"
            )
    return "\n".join(lines)
