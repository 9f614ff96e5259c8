"""Daily HAP retraining: validate → train (KFP) → gate → package → deploy, one ``ds`` per run.

Thin wiring only: every task calls ``hap.flow``; heavy imports happen inside task bodies.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import dag, task

DOC = """
### HAP daily retraining

One run per logical day `ds`:

1. **validate** the day's logged cascade samples with Great Expectations. A failing day is
   quarantined (kept in place, never trained on) and the run stops with the failed expectations
   named in the task log and in `$HAP_HOME/validation/ds=<ds>/verdict.json`.
2. **train** the light (all sources, GHCL) and expressive (hard sources) models with the KFP
   pipeline `hap-daily-training`; outputs in `$HAP_HOME/runs/ds=<ds>/`.
3. **gate** on AUC by difficulty slice vs. the production model (`configs/gate_policy.yaml`).
   A failed gate skips package and deploy: the serving model stays as it was.
4. **package** the version (`.mar`) and **deploy** it to TorchServe: register, smoke, set default.

Every step is idempotent for its `ds`.
"""

RETRY_DELAY = dt.timedelta(seconds=int(os.environ.get("HAP_RETRY_DELAY_S", "300")))


@dag(
    dag_id="hap_daily",
    schedule="@daily",
    start_date=dt.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["hap", "pre-ranking"],
    default_args={"owner": "recsys-preranking", "retries": 1, "retry_delay": RETRY_DELAY},
)
def hap_daily():
    @task(retries=0)  # a bad partition is not transient: fail at once, never retry into training
    def validate(ds: str | None = None) -> dict:
        from hap import flow

        return flow.validate(ds)

    @task(execution_timeout=dt.timedelta(hours=2))
    def train(verdict: dict, ds: str | None = None) -> str:
        from hap import flow

        return flow.train(ds)

    @task.short_circuit(ignore_downstream_trigger_rules=True)
    def gate(run_dir: str, ds: str | None = None) -> bool:
        from hap import flow

        decision = flow.gate(ds)
        print(f"gate ds={ds}: {'PASS' if decision['passed'] else 'FAIL'} — {decision['reason']}")
        return decision["passed"]

    @task
    def package(ds: str | None = None) -> str:
        from hap import flow

        return flow.package(ds)

    @task(execution_timeout=dt.timedelta(minutes=20))
    def deploy(version: str, ds: str | None = None) -> dict:
        from hap import flow

        return flow.deploy(ds, version)

    passed = gate(train(validate()))
    version = package()
    passed >> version
    deploy(version)


daily_dag = hap_daily()
