"""The daily flow's steps, keyed on ``ds``. The Airflow DAG, the CLI and the tests call these.

validate → train (KFP pipeline) → gate → package → deploy. Each is idempotent for its day:
outputs for a ``ds`` are replaced whole, registry versions are content-addressed per day.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from pathlib import Path
from typing import Any

from components.runners import reevaluate_local, run_cluster, run_local
from expectations.validate import ValidationFailed, describe, validate_day
from hap.config import HapConfig
from hap.contract import partition_dir
from hap.lineage import (
    actor,
    code_revision,
    config_hash,
    data_lineage,
    library_versions,
    text_hash,
    training_code_hash,
)
from hap.workspace import Workspace, read_json_object, window_days, write_json_atomic
from registry.gate import gate_run
from registry.store import Registry, content_hash
from serving.archive import build_archive
from serving.deploy import deploy as deploy_version
from serving.deploy import rollback as rollback_version
from serving.kserve import KServeTarget
from serving.server import LocalTorchServe
from workflow.errors import StepRefused
from workflow.runlog import step

log = logging.getLogger(__name__)


def load_config(params: dict[str, Any] | None = None) -> HapConfig:
    """``$HAP_CONFIG`` (YAML) if set, else the embedded defaults; DAG run params override
    ``window_days`` and the KFP mode."""
    cfg = HapConfig.from_env()
    params = params or {}
    if params.get("window_days"):
        cfg = dataclasses.replace(cfg, window_days=int(params["window_days"]))
    if params.get("kfp_mode"):
        cfg = dataclasses.replace(cfg, kfp=dataclasses.replace(cfg.kfp, mode=params["kfp_mode"]))
    return cfg


def server_for(ws: Workspace, cfg: HapConfig | None = None) -> LocalTorchServe:
    """The workspace's local TorchServe, run with the configuration's serving settings."""
    return LocalTorchServe(ws.serving, cfg=(cfg or load_config()).serving)


def deploy_target(ws: Workspace, cfg: HapConfig) -> LocalTorchServe | KServeTarget:
    """Where ``deploy`` and ``rollback`` act: the local TorchServe, or the InferenceService when
    ``serving.mode`` is ``kserve``."""
    return KServeTarget(cfg.serving) if cfg.serving.mode == "kserve" else server_for(ws, cfg)


@step("validate", lambda r: r["status"])
def validate(ds: str, ws: Workspace | None = None, cfg: HapConfig | None = None) -> dict[str, Any]:
    """Validate the day, and any earlier day of the training window without a verdict (or whose
    validator failed).

    A failing ``ds`` is quarantined and ``ValidationFailed`` stops the run. A failing earlier day
    is quarantined too; it is left out of the window (training reads only passed days). A validator
    failure raises ``ValidatorError``: nothing is quarantined, the step may be retried.
    """
    ws, cfg = ws or Workspace.from_env(), cfg or load_config()
    summary = {}
    for day in window_days(ds, cfg.window_days)[:-1]:
        if ws.validation_status(day) in (None, "error") and partition_dir(ws.data, "candidates", day).exists():
            summary[day] = describe(validate_day(ws.root, day, cfg))
    verdict = validate_day(ws.root, ds, cfg)
    if not verdict["success"]:
        raise ValidationFailed(describe(verdict))
    summary[ds] = describe(verdict)
    return {"ds": ds, "status": verdict["status"], "summary": summary}


def validation_links(ds: str, ws: Workspace | None = None) -> str:
    """Where to read the day's validation: its report, Great Expectations' Data Docs, and the day's report."""
    ws = ws or Workspace.from_env()
    verdict = read_json_object(ws.validation_dir(ds) / "verdict.json") or {}  # absent or half-written: say so
    return (f"validation report ds={ds}: {verdict.get('report') or 'not written'}\n"
            f"Data Docs: {verdict.get('data_docs') or 'not written'}\n"
            f"daily report (after the run): {(ws.report_dir(ds) / 'index.html').as_uri()}")  # fmt: skip


@step("train", lambda run_dir: _train_outcome(Path(run_dir)))
def train(ds: str, ws: Workspace | None = None, cfg: HapConfig | None = None, retrain: bool = False) -> str:
    """Run the KFP training pipeline for the day's window; returns the day's run directory.

    A rerun whose inputs are all unchanged (the window's partitions and verdicts, the config, the
    training code, the libraries, the production and anchor versions it is compared with) reuses the
    day's trained run. When only production or the anchor changed (a rerun after the day deployed),
    the day's models are kept byte for byte and judged again (``reevaluate_local``): retraining would
    give the same weights up to the last bit of a float sum, and a last bit is a new registry version.
    ``retrain`` forces a new run."""
    ws, cfg = ws or Workspace.from_env(), cfg or load_config()
    registry = Registry(ws)
    prod, first = registry.production(), registry.first_accepted()  # first: the anchor, replayed beside production
    prod_dir = str(registry.version_dir(prod["version"])) if prod else ""
    anchor_dir = str(registry.version_dir(first["version"])) if first else ""
    lineage = run_lineage(ds, ws, cfg)  # the data as training found it, before it reads any
    for key, ref in (("production_at_training", prod), ("anchor_at_training", first)):
        manifest = (read_json_object(registry.version_dir(ref["version"]) / "manifest.json") if ref else None) or {}
        lineage[key] = {"version": manifest.get("version"), "content": manifest.get("content_hash")}
    for key, names in (("model_inputs_sha256", MODEL_INPUTS), ("inputs_sha256", TRAINING_INPUTS)):
        lineage[key] = inputs_key(lineage, names)
    run_dir = ws.run_dir(ds)
    # on a cluster the code that trains is an image whose tag may move: train there every time
    how, kept = earlier_run(run_dir, lineage) if cfg.kfp.mode == "local" and not retrain else (None, None)
    if kept is not None:
        for name in ("decision.json", "decision.md", "promotion.json"):  # judged afresh by the steps after
            (run_dir / name).unlink(missing_ok=True)
        lineage.update({"trained_at": kept["trained_at"], "trained_by": kept["trained_by"],
                        how: {"at": dt.datetime.now(dt.UTC).isoformat(), "by": actor()}})  # fmt: skip
        log.warning("ds=%s: %s the run trained at %s (retrain forces a new one)", ds,
                    "inputs unchanged: reusing" if how == "reused" else "models' inputs unchanged: evaluating again",
                    kept["trained_at"])  # fmt: skip
        out = ({"run_dir": str(run_dir)} if how == "reused" else
               reevaluate_local(str(ws.root), ds, cfg.to_json(), prod_dir, run_dir, anchor_dir))  # fmt: skip
    elif cfg.kfp.mode == "cluster":
        out = run_cluster(cfg, str(ws.root), ds, prod_dir, run_dir, anchor_dir)
    elif cfg.kfp.mode == "local":
        out = run_local(str(ws.root), ds, cfg.to_json(), prod_dir, run_dir, anchor_dir)
    else:
        raise ValueError(f"kfp mode must be 'local' or 'cluster', got {cfg.kfp.mode!r}")
    evaluation_path = Path(out["run_dir"]) / "evaluation.json"
    evaluation = json.loads(evaluation_path.read_text())
    evaluation["production_version"] = prod["version"] if prod else None
    write_json_atomic(evaluation_path, evaluation)
    lineage["trained_days"] = evaluation["holdout"]["days"]
    lineage["models_sha256"] = content_hash(Path(out["run_dir"]))
    lineage["outputs_sha256"] = outputs_hash(Path(out["run_dir"]))
    write_json_atomic(Path(out["run_dir"]) / "lineage.json", lineage)
    return out["run_dir"]


# What the trained models depend on: equal values give the same weights up to a float's last bit (so a rerun keeps them).
MODEL_INPUTS = ("code", "training_config_sha256", "libraries", "data")
# What a trained run (models and evaluation) depends on: the models' inputs and what they are judged against.
TRAINING_INPUTS = (*MODEL_INPUTS, "production_at_training", "anchor_at_training")


def inputs_key(lineage: dict[str, Any], names: tuple[str, ...]) -> str:
    """The hash of ``names`` of a run's lineage; its code is the training sources' hash, not the
    repository's commit (a docs or DAG commit does not change what trains)."""
    keyed = {**lineage, "code": lineage["code"]["training_code_sha256"]}
    return text_hash(json.dumps({k: keyed[k] for k in names}, sort_keys=True))


def training_config_hash(cfg: HapConfig) -> str:
    """The configuration a trained run depends on: all of it but ``orchestration`` (waits, retries,
    alerts, the gate policy's path), which never reaches the pipeline's outputs. A rerun that changes
    only how the DAG runs or is judged reuses the day's trained run."""
    config = json.loads(cfg.to_json())
    config.pop("orchestration", None)
    return config_hash(json.dumps(config))


def outputs_hash(run_dir: Path) -> str:
    """The trained run's outputs: both models and the evaluation as the pipeline wrote it (without
    the field ``train`` sets afterwards from the registry)."""
    evaluation = json.loads((run_dir / "evaluation.json").read_text())
    evaluation.pop("production_version", None)
    return text_hash(content_hash(run_dir) + json.dumps(evaluation, sort_keys=True))


def reusable_run(run_dir: Path, inputs_sha256: str) -> dict[str, Any] | None:
    """The day's earlier run when it was trained from the same inputs and its outputs are intact."""
    path = run_dir / "lineage.json"
    try:
        earlier = json.loads(path.read_text())
        if earlier.get("inputs_sha256") != inputs_sha256 or not (run_dir / "evaluation.json").exists():
            return None
        return earlier if outputs_hash(run_dir) == earlier.get("outputs_sha256") else None
    except (OSError, ValueError, KeyError):
        return None


def earlier_run(run_dir: Path, lineage: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """What a rerun keeps of the day's earlier run: ("reused", its lineage) when all its inputs are
    unchanged, ("reevaluated", …) when only what its models are judged against changed, else nothing."""
    earlier = reusable_run(run_dir, lineage["inputs_sha256"])
    if earlier is not None:
        return "reused", earlier
    models = reusable_models(run_dir, lineage["model_inputs_sha256"])
    return ("reevaluated", models) if models is not None else (None, None)


def reusable_models(run_dir: Path, model_inputs_sha256: str) -> dict[str, Any] | None:
    """The day's earlier run when its models were trained from the same inputs and are intact."""
    try:
        earlier = json.loads((run_dir / "lineage.json").read_text())
        if earlier.get("model_inputs_sha256") != model_inputs_sha256:
            return None
        return earlier if content_hash(run_dir) == earlier.get("models_sha256") else None
    except (OSError, ValueError, KeyError):
        return None


def _train_outcome(run_dir: Path) -> str:
    ev = json.loads((run_dir / "evaluation.json").read_text())["candidate"]
    lineage = json.loads((run_dir / "lineage.json").read_text())
    reused = ("reused (inputs unchanged); " if "reused" in lineage else
              "models reused, evaluated again (production or anchor changed); " if "reevaluated" in lineage else "")  # fmt: skip
    return (f"{reused}light AUC {ev['light.auc.overall']:.4f}; K={ev['system.k']}: system {ev['system.value']:.4f} "
            f"vs light alone {ev['system.light_value']:.4f}")  # fmt: skip


def run_lineage(ds: str, ws: Workspace, cfg: HapConfig) -> dict[str, Any]:
    """Code revision, effective config hash, library versions and the window's partitions with
    their fingerprints and verdicts (training reads only the passed ones)."""
    days = window_days(ds, cfg.window_days)
    return {
        "ds": ds,
        "code": {**code_revision(), "training_code_sha256": training_code_hash()},
        "config_sha256": config_hash(cfg.to_json()),
        "training_config_sha256": training_config_hash(cfg),
        "libraries": library_versions(),
        "data": data_lineage(ws.data, days, {d: ws.validation_status(d) for d in days}),
        "trained_by": actor(),
        "trained_at": dt.datetime.now(dt.UTC).isoformat(),
    }


@step("gate", lambda d: ("PASS" if d["passed"] else "FAIL") + " — " + d["reason"])
def gate(
    ds: str, ws: Workspace | None = None, run_dir: str | Path | None = None, cfg: HapConfig | None = None
) -> dict[str, Any]:
    """Judge the day's run (``run_dir``, by default the day's run directory) with the gate policy
    (``orchestration.gate_policy``, else the shipped one); writes ``decision.json`` + ``decision.md``."""
    ws, cfg = ws or Workspace.from_env(), cfg or load_config()
    run_dir = Path(run_dir) if run_dir else ws.run_dir(ds)
    if not (run_dir / "evaluation.json").exists():
        raise StepRefused(f"ds={ds} has no evaluation ({run_dir / 'evaluation.json'}); run `hap train` first")
    decision = gate_run(run_dir, cfg.orchestration.gate_policy or None)
    if not decision["passed"]:
        alert_on_refusals(ds, ws, decision["reason"], cfg.orchestration.refusal_alert_after)
    return decision


def alert_on_refusals(ds: str, ws: Workspace, reason: str, after: int) -> dict[str, Any] | None:
    """Alert when ``ds``'s refusal is the ``after``-th in a row since the last accepted day (0: never);
    once per day: a re-gate of a day already alerted for adds nothing. Returns the alert, if one."""
    # deferred: alerts and status read records only when a day is refused
    from workflow.alerts import notify
    from workflow.status import RUNBOOK_REFUSED, open_alerts, refused_since_accepted

    refused = [ds] + [r["ds"] for r in refused_since_accepted(ws, before=ds)]
    if after <= 0 or len(refused) < after:
        return None
    if any(a.get("kind") == "gate_refused" and a.get("ds") == ds for a in open_alerts(ws)):
        return None
    return notify(
        {
            "kind": "gate_refused",
            "task_id": "gate",
            "ds": ds,
            "refused_days": refused,
            "error": reason[:2000],
            "hint": f"{len(refused)} days in a row refused by the gate, serving unchanged: {RUNBOOK_REFUSED}",
        },
        ws,
    )


@step("package", lambda version: f"version {version}")
def package(
    ds: str, ws: Workspace | None = None, run_dir: str | Path | None = None, cfg: HapConfig | None = None
) -> str:
    """Register the gated run (``run_dir``, by default the day's) as a version and build its
    ``.mar`` in the model store."""
    ws, cfg = ws or Workspace.from_env(), cfg or load_config()
    run_dir = Path(run_dir) if run_dir else ws.run_dir(ds)
    decision_file = run_dir / "decision.json"
    if not decision_file.exists():
        raise StepRefused(f"ds={ds} has no gate decision ({decision_file}); run `hap train` and `hap gate` first")
    decision = json.loads(decision_file.read_text())
    if not decision["passed"]:
        raise StepRefused(f"ds={ds} did not pass the gate, so it is not packaged: {decision['reason']}")
    registry = Registry(ws)
    version = registry.register(ds, run_dir)
    build_archive(registry.version_dir(version), version, cfg, server_for(ws, cfg).model_store)
    return version


@step("promote", lambda d: ("deploy" if d["deploy"] else "stop") + " — " + d["reason"])
def promotion(
    ds: str, version: str, ws: Workspace | None = None, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Whether the gated version of ``ds`` may replace production; recorded in ``promotion.json``.

    A backfill (``ds`` older than the data production was trained on) never demotes the newer
    model: it keeps its evaluation and version and stops here, unless ``force_deploy`` with a reason.
    """
    ws, params = ws or Workspace.from_env(), params or {}
    registry = Registry(ws)
    prod = registry.production()
    prod_ds = next((m["ds"] for m in registry.versions() if prod and m["version"] == prod["version"]), None)
    force, reason = bool(params.get("force_deploy")), str(params.get("force_reason") or "").strip()
    if force and not reason:
        raise ValueError("force_deploy needs a force_reason (it is recorded with the deploy)")
    if params.get("skip_deploy"):
        decision = {"deploy": False, "reason": "skip_deploy was set for this run"}
    elif force:
        decision = {"deploy": True, "reason": f"forced: {reason}", "forced": True}
    elif prod_ds and prod_ds > ds:
        decision = {
            "deploy": False,
            "reason": f"backfill: production {prod['version']} was trained on newer data (ds={prod_ds})",
        }
    else:
        decision = {"deploy": True, "reason": "newest gated model"}
    decision.update(ds=ds, version=version, production=prod["version"] if prod else None)
    write_json_atomic(ws.run_dir(ds) / "promotion.json", decision)
    log.info("promotion ds=%s %s: %s", ds, version, decision["reason"])
    return decision


@step(
    "deploy",
    lambda r: f"shadow {r['version']} beside {r['previous']}" if r.get("shadow") else f"serving {r['version']}",
)
def deploy(
    ds: str, version: str, ws: Workspace | None = None, cfg: HapConfig | None = None, shadow: bool = False
) -> dict[str, Any]:
    """Deploy ``version`` smoked with requests from ``ds``: as the new default, or in ``shadow``
    beside production until promoted."""
    ws, cfg = ws or Workspace.from_env(), cfg or load_config()
    promotion_file = ws.run_dir(ds) / "promotion.json"
    why = json.loads(promotion_file.read_text())["reason"] if promotion_file.exists() else "daily deploy"
    server = deploy_target(ws, cfg)
    return deploy_version(ws, version, cfg, server, smoke_ds=ds, reason=f"{why} (ds={ds})", shadow=shadow)


def rollback(reason: str, ws: Workspace | None = None, cfg: HapConfig | None = None) -> dict[str, Any]:
    """Make the previous production version serve again (TorchServe's default, or the
    InferenceService's storage URI on KServe) and record it in the registry."""
    ws, cfg = ws or Workspace.from_env(), cfg or load_config()
    return rollback_version(ws, deploy_target(ws, cfg), reason)


@step("report", lambda uri: uri)
def report(ds: str, ws: Workspace | None = None, n_days: int = 14) -> str:
    """Build the day's HTML report (``reports/ds=<ds>/index.html``); returns its ``file://`` link."""
    # deferred: matplotlib loads only when a report is built
    from workflow.report import build

    return build(ds, ws or Workspace.from_env(), n_days=n_days).as_uri()
