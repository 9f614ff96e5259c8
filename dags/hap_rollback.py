"""On-call rollback: make the previous production version the default again, with the reason recorded.

Thin wiring over ``workflow.flow.rollback`` (the same as ``hap rollback --reason …``).
"""

from __future__ import annotations

import datetime as dt

from airflow.sdk import Param, dag, task

DOC = """
### HAP rollback

Trigger with a **reason** (required, recorded in `$HAP_HOME/registry/production.json` and `events.jsonl`).
Makes the previous production version the default in TorchServe and moves the registry pointer.
Runbook: `docs/runbook.md#roll-back`.
"""


@dag(
    dag_id="hap_rollback",
    schedule=None,
    start_date=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["hap", "pre-ranking", "on-call"],
    params={"reason": Param(type="string", minLength=5, maxLength=500, description="why roll back")},
    default_args={"owner": "recsys-preranking", "retries": 0, "execution_timeout": dt.timedelta(minutes=10)},
)
def hap_rollback():
    @task
    def rollback(params: dict | None = None) -> dict:
        from workflow import flow  # deferred: torch stays out of DAG parsing

        return flow.rollback(params["reason"])

    rollback()


rollback_dag = hap_rollback()
