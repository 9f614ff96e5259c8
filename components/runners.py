"""Where the training pipeline runs, and how its outputs reach the day's run directory.

``run_local``: the KFP local subprocess runner on this machine (``use_venv=False``: the installed
project, offline). ``run_cluster``: the compiled package submitted to a Kubeflow Pipelines API.
Both publish the same three outputs into ``$HAP_HOME/runs/ds=…/``, replacing the day's previous ones.
``reevaluate_local``: the local runner judging a day's trained models again (only ``evaluation.json``
is replaced).
"""

import json
import os
import shutil
from pathlib import Path, PurePosixPath

import fsspec
import kfp
from kfp import local

from components.evaluate import evaluate_op
from components.pipeline import compile_pipeline, hap_reevaluation, hap_training
from components.train_expressive import train_expressive_op
from components.train_light import train_light_op
from hap.config import HapConfig
from hap.workspace import fresh_dir, write_json_atomic

# The pipeline's outputs and the files they become in the day's run directory.
PUBLISHED = {(train_light_op.name, "model"): "light", (train_expressive_op.name, "model"): "expressive",
             (evaluate_op.name, "evaluation"): "evaluation.json"}  # fmt: skip


def publish(sources: dict[str, str], run_dir: str | Path, fs=None) -> dict:
    """Copy the run's artifacts (``light``/``expressive`` folders, ``evaluation.json``) from their
    URIs into ``run_dir``, replacing the day's previous outputs whole (rerunning a ``ds`` leaves no
    duplicates). ``fs`` is an fsspec filesystem for remote artifacts; local paths without it."""
    run_dir = Path(run_dir)
    staging = fresh_dir(run_dir.with_name(run_dir.name + ".staging"))
    for name, src in sources.items():
        if fs is not None:
            fs.get(src.rstrip("/") + ("/" if fs.isdir(src) else ""), str(staging / name), recursive=True)
        elif Path(src).is_dir():
            shutil.copytree(src, staging / name)
        else:
            shutil.copy(src, staging / name)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    os.replace(staging, run_dir)
    return {"run_dir": str(run_dir), "light": str(run_dir / "light"), "expressive": str(run_dir / "expressive")}


def run_local(
    workspace_root: str, ds: str, config_json: str, production_dir: str, run_dir: str | Path, anchor_dir: str = ""
) -> dict:
    """Run the pipeline with the KFP local subprocess runner and publish its artifacts to ``run_dir``."""
    pipeline_root = Path(workspace_root) / "kfp"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    task = hap_training(
        workspace_root=workspace_root, ds=ds, config_json=config_json, production_dir=production_dir,
        anchor_dir=anchor_dir,
    )  # fmt: skip
    out = publish({name: task.outputs[name.split(".")[0]].path for name in PUBLISHED.values()}, run_dir)
    # the runner's own per-run copies are scratch: drop them so reruns do not pile up
    shutil.rmtree(Path(task.outputs["light"].path).parents[1], ignore_errors=True)
    return out


def reevaluate_local(
    workspace_root: str, ds: str, config_json: str, production_dir: str, run_dir: str | Path, anchor_dir: str = ""
) -> dict:
    """Evaluate the models in ``run_dir`` again (the KFP local runner, ``hap_reevaluation``) and
    replace its ``evaluation.json``; the models stay as they are, byte for byte."""
    run_dir = Path(run_dir)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(Path(workspace_root) / "kfp"))
    task = hap_reevaluation(
        workspace_root=workspace_root, ds=ds, config_json=config_json, light_uri=str(run_dir / "light"),
        expressive_uri=str(run_dir / "expressive"), production_dir=production_dir, anchor_dir=anchor_dir,
    )  # fmt: skip
    evaluation = Path(task.output.path)
    write_json_atomic(run_dir / "evaluation.json", json.loads(evaluation.read_text()))
    shutil.rmtree(evaluation.parents[1], ignore_errors=True)  # the runner's scratch copy
    return {"run_dir": str(run_dir), "light": str(run_dir / "light"), "expressive": str(run_dir / "expressive")}


def locate_outputs(fs, pipeline_root: str, run_id: str) -> dict[str, str]:
    """Find this run's published outputs under the pipeline root. The KFP backend writes artifacts
    at ``<root>/<pipeline>/<run_id>/<task>/[<execution>/]<output>``; match on run id, task and name."""
    root = pipeline_root.rstrip("/")
    found: dict[str, str] = {}
    for path in fs.find(root, withdirs=True):
        parts = path.rstrip("/").split("/")
        if run_id not in parts:
            continue
        tail = parts[parts.index(run_id) + 1 :]
        for (task, output), name in PUBLISHED.items():
            if len(tail) >= 2 and tail[0] == task and tail[-1] == output:
                found[name] = path
    missing = sorted(set(PUBLISHED.values()) - set(found))
    if missing:
        raise FileNotFoundError(f"run {run_id}: outputs {missing} not found under {pipeline_root}")
    return found


def in_volume(path: str, workspace_root: str, mount: str) -> str:
    """``path`` under the workspace as the cluster's containers see it (the volume at ``mount``)."""
    if not path:
        return ""
    rel = Path(path).resolve().relative_to(Path(workspace_root).resolve())
    return str(PurePosixPath(mount) / rel.as_posix())


def run_cluster(
    cfg: HapConfig, workspace_root: str, ds: str, production_dir: str, run_dir, anchor_dir: str = ""
) -> dict:
    """Compile the pipeline for ``cfg.job`` (image, workspace volume), submit it to the Kubeflow
    Pipelines API at ``cfg.kfp.host``, wait for it and publish its artifacts to ``run_dir``.

    The workspace is the volume ``job.workspace_pvc``, mounted at ``job.workspace_mount`` in every
    task: workspace paths are passed as the containers see them. Credentials come from the environment
    KFP's client reads (in-cluster service account or ``KF_PIPELINES_*``), never from code or config.
    """
    kfp_cfg = cfg.kfp
    if not kfp_cfg.host or not kfp_cfg.pipeline_root:
        raise ValueError("kfp cluster mode needs kfp.host and kfp.pipeline_root in the HAP config")
    mount = cfg.job.workspace_mount
    package = compile_pipeline(Path(run_dir).with_name(Path(run_dir).name + ".pipeline.yaml"), cfg.job)
    client = kfp.Client(host=kfp_cfg.host)
    run = client.create_run_from_pipeline_package(
        str(package),
        arguments={"workspace_root": mount, "ds": ds, "config_json": cfg.to_json(),
                   "production_dir": in_volume(production_dir, workspace_root, mount),
                   "anchor_dir": in_volume(anchor_dir, workspace_root, mount)},
        run_name=f"hap-daily-{ds}",
        experiment_name=kfp_cfg.experiment,
        pipeline_root=kfp_cfg.pipeline_root,
        enable_caching=False,
        service_account=cfg.job.service_account,
    )  # fmt: skip
    detail = client.wait_for_run_completion(run.run_id, timeout=kfp_cfg.timeout_s)
    state = str(getattr(detail, "state", "")).upper()
    if state != "SUCCEEDED":
        raise RuntimeError(f"KFP run {run.run_id} for ds={ds} ended {state or 'in an unknown state'}")
    fs, root = fsspec.core.url_to_fs(kfp_cfg.pipeline_root)
    return publish(locate_outputs(fs, root, run.run_id), run_dir, fs=fs)
