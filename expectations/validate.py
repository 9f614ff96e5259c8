"""Validation entry point: one day's partitions against the GX suites, first step of every run.

The suites are defined here and persisted (get-or-add) in the GX file context under
``expectations/gx/``. A failing day is quarantined: its data stays where it is, its verdict says
"quarantined", and training refuses it until a re-validation passes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hap.workspace import Workspace

log = logging.getLogger(__name__)

CONTEXT_ROOT = Path(__file__).parent
DATASOURCE = "hap_logs"


class ValidationFailed(RuntimeError):
    """Raised by callers that must stop the run; the message names each failed expectation."""


def _suites() -> dict[str, list]:
    """Expectations per table, built from the data contract and the feature spec."""
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    from hap import SOURCES
    from hap.contract import candidates_schema, requests_schema

    return {
        "requests": [
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectTableColumnsToMatchSet(column_set=requests_schema().names, exact_match=True),
            gxe.ExpectColumnValuesToNotBeNull(column="request_id"),
            gxe.ExpectColumnValuesToBeUnique(column="request_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="user_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="ts"),
        ],
        "candidates": [
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectTableColumnsToMatchSet(column_set=candidates_schema().names, exact_match=True),
            gxe.ExpectColumnValuesToNotBeNull(column="request_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="item_id"),
            gxe.ExpectColumnValuesToBeOfType(column="item_id", type_="int64"),
            gxe.ExpectColumnValuesToBeInSet(column="source", value_set=list(SOURCES)),
            *[gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[0, 1]) for c in ("click", "like", "comment")],
            *[
                gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[0], row_condition=Column("source") != "expose")
                for c in ("click", "like", "comment", "dwell_ms")
            ],
        ],
    }


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
    for table, expectations in _suites().items():
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
    import json

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
        failed.append(
            {
                "expectation": cfg.type,
                "column": cfg.kwargs.get("column"),
                "observed": res.get("observed_value", res.get("unexpected_count")),
                "unexpected_count": res.get("unexpected_count"),
                "examples": [str(v) for v in (res.get("partial_unexpected_list") or [])[:5]],
                "error": (r.exception_info or {}).get("exception_message") if not r.result else None,
            }
        )
    return {"success": bool(result.success), "evaluated": len(result.results), "failed": failed}


def validate_day(workspace_root: str | Path, ds: str) -> dict[str, Any]:
    """Validate ``ds``'s partitions, record the verdict (passed / quarantined) and return it."""
    from hap.contract import TABLES, partition_dir, read_partition

    ws = Workspace.from_env(workspace_root)
    verdict: dict[str, Any] = {"ds": ds, "tables": {}}
    frames = {}
    for table in TABLES:
        try:
            frames[table] = read_partition(ws.data, table, ds).to_pandas()
        except Exception as exc:  # unreadable or missing partition: a clear verdict, not a traceback
            verdict["tables"][table] = {
                "success": False,
                "evaluated": 0,
                "failed": [{"expectation": "readable_partition", "column": None, "observed": str(exc)}],
            }
    if frames:
        definitions = _validation_definitions(_context())
        for table, df in frames.items():
            result = definitions[table].run(batch_parameters={"dataframe": df})
            verdict["tables"][table] = _summarize(result)
    verdict["success"] = all(t["success"] for t in verdict["tables"].values())
    verdict["partition"] = {t: str(partition_dir(ws.data, t, ds)) for t in TABLES}
    verdict["status"] = "passed" if verdict["success"] else "quarantined"
    ws.record_validation(ds, verdict)
    log.info("validation ds=%s: %s", ds, describe(verdict))
    return verdict


def describe(verdict: dict[str, Any]) -> str:
    """One readable line per failed expectation (what the on-call engineer reads first)."""
    if verdict["success"]:
        n = sum(t["evaluated"] for t in verdict["tables"].values())
        return f"ds={verdict['ds']} passed ({n} expectations)"
    lines = [f"ds={verdict['ds']} FAILED validation; partition quarantined (kept, not trained on):"]
    for table, t in verdict["tables"].items():
        for f in t["failed"]:
            col = f" column={f['column']}" if f.get("column") else ""
            lines.append(
                f"  {table}: {f['expectation']}{col} observed={f.get('observed')} e.g. {f.get('examples', [])}"
            )
    return "\n".join(lines)
