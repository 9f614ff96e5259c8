"""Alerts for on-call: every failed task and every late run becomes one JSON line in
``$HAP_HOME/alerts/alerts.jsonl``, an error log line, and a call to a pluggable notifier.

The notifier is ``$HAP_ALERT_NOTIFIER`` = ``"package.module:function"`` taking the alert dict (a pager,
Slack or e-mail hook lives outside this repository; no credentials here). Unset: log and file only.
A notifier that fails is logged, never raised: alerting must not turn one failure into two.
"""

from __future__ import annotations

import datetime as dt
import importlib
import json
import logging
import os
from typing import Any

from hap.workspace import Workspace

log = logging.getLogger("workflow.alerts")

RUNBOOK = "docs/runbook.md"
# What on-call should do first, per failed task (sections of the runbook).
HINTS = {
    "wait_for_partition": f"the day's partition did not land in time: check the log export, then rerun ({RUNBOOK}#rerun-one-day)",
    "validate": f"the day failed validation and is quarantined: {RUNBOOK}#inspect-a-failed-validation",
    "train": f"training failed: read the task log, fix, rerun the day ({RUNBOOK}#rerun-one-day)",
    "gate": f"the gate could not decide (missing evaluation?): {RUNBOOK}#rerun-one-day",
    "package": f"packaging failed; serving is unchanged: {RUNBOOK}#rerun-one-day",
    "promote": f"promotion check failed (force_deploy without a reason?): {RUNBOOK}#force-a-deploy",
    "deploy": f"deploy failed; the previous version keeps serving: {RUNBOOK}#roll-back",
    "report": f"the daily report could not be built (the run itself is unaffected): rebuild with `hap report --ds <ds>` ({RUNBOOK}#status-and-the-daily-report)",
}


def notify(alert: dict[str, Any], ws: Workspace | None = None) -> dict[str, Any]:
    alert = {"at": dt.datetime.now(dt.UTC).isoformat(), **alert}
    ws = ws or Workspace.from_env()
    path = ws.root / "alerts" / "alerts.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(alert, default=str) + "\n")
    log.error("ALERT %s", json.dumps(alert, default=str))
    target = os.environ.get("HAP_ALERT_NOTIFIER")
    if target:
        try:
            module, _, name = target.partition(":")
            getattr(importlib.import_module(module), name)(alert)
        except Exception:  # noqa: BLE001 - alerting must never raise
            log.exception("alert notifier %s failed", target)
    return alert


def task_failed(context: dict[str, Any]) -> None:
    """Airflow ``on_failure_callback``: what failed, for which day, and what to do."""
    ti = context.get("task_instance") or context.get("ti")
    task_id = getattr(ti, "task_id", "?")
    notify(
        {
            "kind": "task_failed",
            "dag_id": getattr(ti, "dag_id", "?"),
            "task_id": task_id,
            "run_id": getattr(ti, "run_id", "?"),
            "ds": context.get("ds"),
            "try_number": getattr(ti, "try_number", None),
            "error": str(context.get("exception") or "")[:2000],
            "hint": HINTS.get(task_id, RUNBOOK),
        }
    )


def deadline_missed(**kwargs: Any) -> None:
    """Airflow deadline callback: the day's run is still not done long after it was queued."""
    context = kwargs.get("context") or {}
    dag_run = context.get("dag_run") if isinstance(context, dict) else None
    # the scheduler sends the run as DAGRunResponse JSON (a dict: ``dag_run_id``), not a DagRun object
    run = dag_run if isinstance(dag_run, dict) else {"dag_id": getattr(dag_run, "dag_id", None),
                                                      "dag_run_id": getattr(dag_run, "run_id", None)}  # fmt: skip
    notify(
        {
            "kind": "deadline_missed",
            "dag_id": kwargs.get("dag_id") or run.get("dag_id") or "hap_daily",
            "run_id": run.get("dag_run_id") or run.get("run_id"),
            "hint": f"the daily run is late: check the scheduler and the sensor ({RUNBOOK}#a-late-run)",
        }
    )
