"""Daily HAP retraining: validate → train (KFP) → gate → package → deploy, one ``ds`` per run.

Thin wiring only: every task calls ``workflow.flow``; heavy imports happen inside task bodies.
"""

from __future__ import annotations

import datetime as dt
import typing

from airflow.sdk import DeadlineAlert, DeadlineReference, Param, SyncCallback, chain, dag, task

from hap.config import HapConfig, KfpMode  # dataclasses only: cheap at parse time
from workflow.links import LINKS  # link classes only: cheap at parse time

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
   A refusal shows as the gate task **skipped** (its log says why) and skips package and deploy;
   the run stays a success: the serving model stays as it was.
4. **package** the version (`.mar`, registry version), then **promote** decides whether it may
   replace production: a backfill never demotes a model trained on newer data (unless
   `force_deploy` with a `force_reason`); `skip_deploy` stops here. Recorded in `promotion.json`.
5. **deploy** to TorchServe: register, golden smoke, set default; a failure keeps the old version.
   With `shadow`, the version scores a sample of live requests beside production instead of
   replacing it; on-call promotes it with `hap shadow promote` (runbook: *Shadow a version*).
6. **report** (a teardown: it runs whatever the others did, and does not change the run's state)
   writes the day's page `$HAP_HOME/reports/ds=<ds>/index.html`: steps, serving, lineage, per-slice
   AUC over days, gate rules, system metric vs FLOPs across K, validation bands, gradient conflict,
   deploy/rollback timeline. Its task log prints the link. `hap status` shows the same state as text.

Every task's page links the day's report and its Data Docs (*HAP daily report*, *Data Docs
(validation)*); its *Docs* tab says what it does and where to look.

Every step is idempotent for its `ds`; a rerun whose training inputs are all unchanged reuses the
day's trained run, and one where only production or the anchor changed keeps its models and
evaluates them again (`retrain` forces a new run). Failures write an alert (`$HAP_HOME/alerts/alerts.jsonl` +
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

# What each task does, what it writes and where to look (shown on the task's page in the Airflow UI).
TASK_DOCS = {
    "wait_for_partition": """Waits (reschedule mode) until `$HAP_HOME/data/{requests,candidates}/ds=<ds>/` both exist.
A timeout fails the task and alerts: the log export is late (runbook: *A late run*).""",
    "validate": """Validates the day (and earlier window days without a verdict) with Great Expectations.
Fails without retry when the data fails: the day is **quarantined**, kept in place, never trained on.
Look at: the task log (each failed expectation), `$HAP_HOME/validation/ds=<ds>/report.html` (the link is
printed in the log), Data Docs under `validation/ds=<ds>/gx/uncommitted/data_docs/local_site/`.
Runbook: *Inspect a failed validation*.""",
    "train": """Runs the KFP pipeline `hap-daily-training` (light model on all sources with GHCL, expressive
model on the hard sources); the log shows each epoch's progress, loss and samples/s. Writes
`$HAP_HOME/runs/ds=<ds>/` (models, `evaluation.json`, `lineage.json`: code revision, config hash, partition
fingerprints, library versions).""",
    "gate": """Judges the run on AUC per difficulty slice vs production and the first accepted version, both replayed
on the day's held-out requests (paired deltas), and on routing (`configs/gate_policy.yaml`). A refusal
leaves this task **skipped** (its log: `REFUSED by the gate, serving unchanged: <reasons>`) and skips
package/promote/deploy; the run stays a success: serving is unchanged.
Look at: `$HAP_HOME/runs/ds=<ds>/decision.md` and the report's *Gate* section.""",
    "package": """Registers the gated run as a version (`$HAP_HOME/registry/versions/<version>/`, manifest with
lineage) and builds its TorchServe archive.""",
    "promote": """Decides whether the version may replace production (a backfill never demotes a model trained on
newer data unless `force_deploy` + `force_reason`); writes `promotion.json`. A stop skips deploy.""",
    "deploy": """Deploys the version: register, golden smoke request, set default (or shadow). A failure keeps the
previous version serving and records `deploy_failed` in `registry/events.jsonl`. Runbook: *Roll back*.""",
    "report": """Builds the day's on-call page `$HAP_HOME/reports/ds=<ds>/index.html` (link in this task's log) from
the records of every step, whatever they did; as a teardown it never changes the run's state.
The same state as text: `hap status`.""",
}


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
    "retrain": Param(
        False, type="boolean", description="train again even if the day's run was trained from the same inputs"
    ),
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

    @task.sensor(
        poke_interval=ORCH.sensor_poke_s,
        timeout=ORCH.sensor_timeout_s,
        mode=ORCH.sensor_mode,
        retries=0,
        doc_md=TASK_DOCS["wait_for_partition"],
    )
    def wait_for_partition(ds: str | None = None) -> bool:
        # deferred: pyarrow stays out of DAG parsing
        from hap.contract import partition_ready
        from hap.workspace import Workspace

        return partition_ready(Workspace.from_env().data, ds)

    # Bad data is not transient: a quarantine fails the task at once, without retries. A validator
    # failure (GX, disk) is not a quarantine: it fails the task as an error, retried once.
    @task(retries=1, execution_timeout=dt.timedelta(minutes=30), doc_md=TASK_DOCS["validate"])
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
        finally:
            print(flow.validation_links(ds))  # the task log links the day's validation report and Data Docs

    @task(execution_timeout=TRAIN_TIMEOUT, doc_md=TASK_DOCS["train"])
    def train(params: dict | None = None, ds: str | None = None) -> str:
        from workflow import flow  # deferred: torch and kfp stay out of DAG parsing

        return flow.train(ds, cfg=flow.load_config(params), retrain=bool((params or {}).get("retrain")))

    # A refusal is the gate task's own state in the grid: skipped (not green), its log saying why;
    # package/promote/deploy are skipped after it and the run stays a success: serving is unchanged.
    @task(execution_timeout=dt.timedelta(minutes=10), doc_md=TASK_DOCS["gate"])
    def gate(run_dir: str, params: dict | None = None, ds: str | None = None) -> bool:
        from airflow.sdk.exceptions import AirflowSkipException

        from workflow import flow  # deferred: torch and kfp stay out of DAG parsing

        decision = flow.gate(ds, run_dir=run_dir, cfg=flow.load_config(params))
        print(f"gate ds={ds}: {'PASS' if decision['passed'] else 'FAIL'} — {decision['reason']}")
        if not decision["passed"]:
            raise AirflowSkipException(f"REFUSED by the gate, serving unchanged: {decision['reason']}")
        return True

    @task(execution_timeout=dt.timedelta(minutes=20), doc_md=TASK_DOCS["package"])
    def package(run_dir: str, params: dict | None = None, ds: str | None = None) -> str:
        from workflow import flow  # deferred: torch and kfp stay out of DAG parsing

        return flow.package(ds, run_dir=run_dir, cfg=flow.load_config(params))

    @task.short_circuit(retries=0, execution_timeout=dt.timedelta(minutes=5), doc_md=TASK_DOCS["promote"])
    def promote(version: str, params: dict | None = None, ds: str | None = None) -> bool:
        from workflow import flow  # deferred: torch and kfp stay out of DAG parsing

        decision = flow.promotion(ds, version, params=params)
        print(f"promote ds={ds} {version}: {'DEPLOY' if decision['deploy'] else 'STOP'} — {decision['reason']}")
        return decision["deploy"]

    @task(execution_timeout=dt.timedelta(minutes=20), doc_md=TASK_DOCS["deploy"])
    def deploy(version: str, params: dict | None = None, ds: str | None = None) -> dict:
        from workflow import flow  # deferred: torch and kfp stay out of DAG parsing

        return flow.deploy(ds, version, cfg=flow.load_config(params), shadow=bool((params or {}).get("shadow")))

    # A teardown: runs once the others are done whatever their state, and its own state never
    # changes the run's (a failed validation stays a failed run); a failure still alerts.
    @task(retries=1, execution_timeout=dt.timedelta(minutes=10), doc_md=TASK_DOCS["report"])
    def report(ds: str | None = None) -> str:
        from workflow import flow  # deferred: matplotlib and the flow stay out of DAG parsing

        uri = flow.report(ds)
        print(f"daily report ds={ds}: {uri}")
        return uri

    run_dir = train()
    chain(wait_for_partition(), validate(), run_dir)
    version = package(run_dir)
    chain(gate(run_dir), version)
    deployed = deploy(version)
    chain(promote(version), deployed)
    chain(deployed, report().as_teardown())


daily_dag = hap_daily()
for _task in daily_dag.tasks:  # every task's page links the day's report and Data Docs
    _task.operator_extra_links = LINKS
