"""Daily HAP retraining: validate → train (KFP) → gate → package → deploy, one ``ds`` per run.

Thin wiring only: every task calls ``workflow.flow``; heavy imports happen inside task bodies.
"""

from __future__ import annotations

import datetime as dt
import typing

from airflow.sdk import DeadlineAlert, DeadlineReference, Param, SyncCallback, chain, dag, task

from hap.config import HapConfig, KfpMode  # dataclasses only: cheap at parse time

DOC = """
### HAP daily retraining

One run per logical day `ds`:

0. **wait_for_partition** until both tables of `ds` have landed (reschedule-mode sensor: a late
   partition delays the run instead of failing it; after `orchestration.sensor_timeout_s` it fails and alerts).
1. **validate** the day's logged cascade samples with Great Expectations. A failing day is
   quarantined (kept in place, never trained on) and the run stops with the failed expectations
   named in the task log and in `$HAP_HOME/validation/ds=<ds>/verdict.json`.
2. **train** the light (all sources, GHCL) and expressive (hard sources) models with the KFP
   pipeline `hap-daily-training`; outputs in `$HAP_HOME/runs/ds=<ds>/`.
3. **gate** on AUC by difficulty slice vs. the production model (`orchestration.gate_policy`, by
   default `configs/gate_policy.yaml`).
   A failed gate skips package and deploy: the serving model stays as it was.
4. **package** the version (`.mar`, registry version), then **promote** decides whether it may
   replace production: a backfill never demotes a model trained on newer data (unless
   `force_deploy` with a `force_reason`); `skip_deploy` stops here. Recorded in `promotion.json`.
5. **deploy** to TorchServe: register, golden smoke, set default; a failure keeps the old version.
   With `shadow`, the version scores a sample of live requests beside production instead of
   replacing it; on-call promotes it with `hap shadow promote` (runbook: *Shadow a version*).

Every step is idempotent for its `ds`. Failures write an alert (`$HAP_HOME/alerts/alerts.jsonl` +
`$HAP_ALERT_NOTIFIER`) naming the runbook section; a run still going `orchestration.run_deadline_h`
hours after it was queued alerts too. `window_days` and `kfp_mode` left empty take `$HAP_CONFIG`'s.
On-call: `docs/runbook.md` (backfill, rerun one day, inspect a failed validation, roll back).
"""

# Waiting, retries and the deadline come from the typed config (``orchestration``; environment
# overrides such as ``HAP_RETRY_DELAY_S`` are listed in ``hap.config.ENV_OVERRIDES``).
CFG = HapConfig.from_env()
ORCH = CFG.orchestration
# the train task waits for the KFP run, which has its own limit: give it that plus time to publish
TRAIN_TIMEOUT = dt.timedelta(seconds=CFG.kfp.timeout_s + 15 * 60)

# A run still going this long after it was queued alerts on-call; 0 turns it off: Airflow 3.3.2's
# ``dag.test()`` cannot store deadline alerts (the scheduler path can).
DEADLINE = (
    DeadlineAlert(
        reference=DeadlineReference.DAGRUN_QUEUED_AT,
        interval=dt.timedelta(hours=ORCH.run_deadline_h),
        callback=SyncCallback("workflow.alerts.deadline_missed"),
    )
    if ORCH.run_deadline_h > 0
    else None
)


def _alert_on_failure(context) -> None:
    # deferred: the callback runs in the task's process, not at parse time
    from workflow.alerts import task_failed

    task_failed(context)


PARAMS = {
    "window_days": Param(
        None, type=["null", "integer"], minimum=1, maximum=30, description="training window in days (empty: config)"
    ),
    "skip_deploy": Param(False, type="boolean", description="train, gate and package, but do not deploy"),
    "force_deploy": Param(
        False, type="boolean", description="deploy even if production was trained on newer data (backfill)"
    ),
    "force_reason": Param("", type="string", maxLength=500, description="required with force_deploy; recorded"),
    "kfp_mode": Param(
        None, enum=[None, *typing.get_args(KfpMode)], description="KFP local runner or the cluster API (empty: config)"
    ),
    "shadow": Param(False, type="boolean", description="deploy in shadow beside production; promote it by hand"),
}


@dag(
    dag_id="hap_daily",
    schedule="@daily",
    # any day with data can be run: backfills reach far back (a run before start_date runs no task)
    start_date=dt.datetime(2015, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,
    doc_md=DOC,
    tags=["hap", "pre-ranking"],
    params=PARAMS,
    deadline=DEADLINE,
    default_args={
        "owner": "recsys-preranking",
        "retries": ORCH.retries,
        "retry_delay": dt.timedelta(seconds=ORCH.retry_delay_s),
        "retry_exponential_backoff": True,
        "max_retry_delay": dt.timedelta(seconds=ORCH.max_retry_delay_s),
        "execution_timeout": dt.timedelta(hours=1),
        "on_failure_callback": _alert_on_failure,
    },
)
def hap_daily():
    # Task bodies import the flow (torch, GX, kfp) only when they run. XComs carry what the next task
    # uses: the run directory (train → gate, package) and the version (package → promote, deploy);
    # ``chain`` orders tasks that hand over no data.

    @task.sensor(poke_interval=ORCH.sensor_poke_s, timeout=ORCH.sensor_timeout_s, mode=ORCH.sensor_mode, retries=0)
    def wait_for_partition(ds: str | None = None) -> bool:
        # deferred: pyarrow stays out of DAG parsing
        from hap.contract import partition_ready
        from hap.workspace import Workspace

        return partition_ready(Workspace.from_env().data, ds)

    # Bad data is not transient: a quarantine fails the task at once, without retries. A validator
    # failure (GX, disk) is not a quarantine: it fails the task as an error, retried once.
    @task(retries=1, execution_timeout=dt.timedelta(minutes=30))
    def validate(params: dict | None = None, ds: str | None = None) -> dict:
        from airflow.sdk.exceptions import AirflowFailException

        # deferred: GX, torch and kfp stay out of DAG parsing
        from expectations.validate import ValidationFailed, ValidatorError
        from workflow import flow

        try:
            return flow.validate(ds, cfg=flow.load_config(params))
        except ValidationFailed as exc:
            raise AirflowFailException(f"DATA FAILED VALIDATION, partition quarantined (kept): {exc}") from exc
        except ValidatorError as exc:
            raise RuntimeError(f"VALIDATOR ERROR, not a quarantine (the data was not judged): {exc}") from exc

    @task(execution_timeout=TRAIN_TIMEOUT)
    def train(params: dict | None = None, ds: str | None = None) -> str:
        from workflow import flow  # deferred: torch and kfp stay out of DAG parsing

        return flow.train(ds, cfg=flow.load_config(params))

    @task.short_circuit(ignore_downstream_trigger_rules=True, execution_timeout=dt.timedelta(minutes=10))
    def gate(run_dir: str, params: dict | None = None, ds: str | None = None) -> bool:
        from workflow import flow  # deferred: torch and kfp stay out of DAG parsing

        decision = flow.gate(ds, run_dir=run_dir, cfg=flow.load_config(params))
        print(f"gate ds={ds}: {'PASS' if decision['passed'] else 'FAIL'} — {decision['reason']}")
        return decision["passed"]

    @task(execution_timeout=dt.timedelta(minutes=20))
    def package(run_dir: str, params: dict | None = None, ds: str | None = None) -> str:
        from workflow import flow  # deferred: torch and kfp stay out of DAG parsing

        return flow.package(ds, run_dir=run_dir, cfg=flow.load_config(params))

    @task.short_circuit(retries=0, execution_timeout=dt.timedelta(minutes=5))
    def promote(version: str, params: dict | None = None, ds: str | None = None) -> bool:
        from workflow import flow  # deferred: torch and kfp stay out of DAG parsing

        decision = flow.promotion(ds, version, params=params)
        print(f"promote ds={ds} {version}: {'DEPLOY' if decision['deploy'] else 'STOP'} — {decision['reason']}")
        return decision["deploy"]

    @task(execution_timeout=dt.timedelta(minutes=20))
    def deploy(version: str, params: dict | None = None, ds: str | None = None) -> dict:
        from workflow import flow  # deferred: torch and kfp stay out of DAG parsing

        return flow.deploy(ds, version, cfg=flow.load_config(params), shadow=bool((params or {}).get("shadow")))

    run_dir = train()
    chain(wait_for_partition(), validate(), run_dir)
    version = package(run_dir)
    chain(gate(run_dir), version)
    chain(promote(version), deploy(version))


daily_dag = hap_daily()
