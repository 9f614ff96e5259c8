"""The daily flow's steps, keyed on ``ds``. The Airflow DAG, the CLI and the tests call these.

validate → train (KFP pipeline) → gate → package → deploy. Each is idempotent for its day:
outputs for a ``ds`` are replaced whole, registry versions are content-addressed per day.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

from components.runners import run_cluster, run_local
from expectations.validate import ValidationFailed, describe, validate_day
from hap.config import HapConfig
from hap.contract import partition_dir
from hap.workspace import Workspace, window_days, write_json_atomic
from registry.gate import gate_run
from registry.store import Registry
from serving.archive import build_archive
from serving.deploy import deploy as deploy_version
from serving.deploy import rollback as rollback_version
from serving.kserve import KServeTarget
from serving.server import LocalTorchServe
from workflow.errors import StepRefused

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


def train(ds: str, ws: Workspace | None = None, cfg: HapConfig | None = None) -> str:
    """Run the KFP training pipeline for the day's window; returns the day's run directory."""
    ws, cfg = ws or Workspace.from_env(), cfg or load_config()
    registry = Registry(ws)
    prod = registry.production()
    prod_dir = str(registry.version_dir(prod["version"])) if prod else ""
    if cfg.kfp.mode == "cluster":
        out = run_cluster(cfg, str(ws.root), ds, prod_dir, ws.run_dir(ds))
    elif cfg.kfp.mode == "local":
        out = run_local(str(ws.root), ds, cfg.to_json(), prod_dir, ws.run_dir(ds))
    else:
        raise ValueError(f"kfp mode must be 'local' or 'cluster', got {cfg.kfp.mode!r}")
    evaluation_path = Path(out["run_dir"]) / "evaluation.json"
    evaluation = json.loads(evaluation_path.read_text())
    evaluation["production_version"] = prod["version"] if prod else None
    first = registry.first_accepted()
    if first is not None:  # the gate's relative floors: never drift far from the first accepted run
        evaluation["first_accepted"] = {"version": first["version"], "ds": first["ds"], "metrics": first["metrics"]}
    write_json_atomic(evaluation_path, evaluation)
    return out["run_dir"]


def gate(
    ds: str, ws: Workspace | None = None, run_dir: str | Path | None = None, cfg: HapConfig | None = None
) -> dict[str, Any]:
    """Judge the day's run (``run_dir``, by default the day's run directory) with the gate policy
    (``orchestration.gate_policy``, else the shipped one); writes ``decision.json`` + ``decision.md``."""
    ws, cfg = ws or Workspace.from_env(), cfg or load_config()
    run_dir = Path(run_dir) if run_dir else ws.run_dir(ds)
    if not (run_dir / "evaluation.json").exists():
        raise StepRefused(f"ds={ds} has no evaluation ({run_dir / 'evaluation.json'}); run `hap train` first")
    return gate_run(run_dir, cfg.orchestration.gate_policy or None)


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
