"""KFP pipeline: prepare → train_light → train_expressive (warm-started from light) → evaluate. Components only wire steps;
the logic is in ``models.steps`` so the CLI and tests run the very same code.

Local mode runs it with ``kfp.local.SubprocessRunner(use_venv=False)`` in this environment; the
compiled YAML (``components/pipeline.yaml``, kept fresh by a test) is what a cluster would run.
"""

import os
import shutil
from pathlib import Path
from typing import NamedTuple

from kfp import compiler, dsl
from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output

from hap.workspace import fresh_dir

IMAGE = os.environ.get("HAP_TRAINING_IMAGE", "hap-training:0.1.0")  # infra/training/Dockerfile
COMPILED = Path(__file__).with_name("pipeline.yaml")


@dsl.component(base_image=IMAGE)
def prepare_op(workspace_root: str, ds: str, config_json: str, prepared: Output[Dataset]):
    from hap.config import HapConfig
    from models.steps import prepare

    prepared.metadata.update(prepare(workspace_root, ds, HapConfig.from_json(config_json), prepared.path))


@dsl.component(base_image=IMAGE)
def train_light_op(prepared: Input[Dataset], config_json: str, model: Output[Model]):
    from components.launch import train
    from hap.config import HapConfig

    history = train(prepared.path, "light", HapConfig.from_json(config_json), model.path)
    model.metadata["train_seconds"] = history["seconds"]


@dsl.component(base_image=IMAGE)
def train_expressive_op(prepared: Input[Dataset], light: Input[Model], config_json: str, model: Output[Model]):
    from components.launch import train
    from hap.config import HapConfig

    history = train(prepared.path, "expressive", HapConfig.from_json(config_json), model.path, init=light.path)
    model.metadata["train_seconds"] = history["seconds"]


@dsl.component(base_image=IMAGE)
def evaluate_op(
    prepared: Input[Dataset],
    light: Input[Model],
    expressive: Input[Model],
    production_dir: str,
    config_json: str,
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
):
    import math

    from hap.config import HapConfig
    from models.steps import evaluate

    result = evaluate(
        prepared.path,
        light.path,
        expressive.path,
        production_dir,
        HapConfig.from_json(config_json),
        evaluation.path,
    )
    for name, value in result["candidate"].items():
        if isinstance(value, float) and not math.isnan(value):
            metrics.log_metric(name, value)


class TrainingOutputs(NamedTuple):
    light: Model
    expressive: Model
    evaluation: Artifact


@dsl.pipeline(name="hap-daily-training", description="HAP light + expressive models for one day's window")
def hap_training(workspace_root: str, ds: str, config_json: str, production_dir: str = "") -> NamedTuple(
    "TrainingOutputs", light=Model, expressive=Model, evaluation=Artifact
):  # noqa: F821
    prep = prepare_op(workspace_root=workspace_root, ds=ds, config_json=config_json)
    light = train_light_op(prepared=prep.outputs["prepared"], config_json=config_json)
    expressive = train_expressive_op(  # warm-starts from the same day's light model
        prepared=prep.outputs["prepared"], light=light.outputs["model"], config_json=config_json
    )
    ev = evaluate_op(
        prepared=prep.outputs["prepared"],
        light=light.outputs["model"],
        expressive=expressive.outputs["model"],
        production_dir=production_dir,
        config_json=config_json,
    )
    return TrainingOutputs(
        light=light.outputs["model"],
        expressive=expressive.outputs["model"],
        evaluation=ev.outputs["evaluation"],
    )


def compile_pipeline(path: str | Path = COMPILED) -> Path:
    compiler.Compiler().compile(hap_training, str(path))
    return Path(path)


# The pipeline's outputs and the files they become in the day's run directory.
PUBLISHED = {("train-light-op", "model"): "light", ("train-expressive-op", "model"): "expressive",
             ("evaluate-op", "evaluation"): "evaluation.json"}  # fmt: skip


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


def run_local(workspace_root: str, ds: str, config_json: str, production_dir: str, run_dir: str | Path) -> dict:
    """Run the pipeline with the KFP local subprocess runner and publish its artifacts to ``run_dir``."""
    from kfp import local

    pipeline_root = Path(workspace_root) / "kfp"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    task = hap_training(workspace_root=workspace_root, ds=ds, config_json=config_json, production_dir=production_dir)
    out = publish({name: task.outputs[name.split(".")[0]].path for name in PUBLISHED.values()}, run_dir)
    # the runner's own per-run copies are scratch: drop them so reruns do not pile up
    shutil.rmtree(Path(task.outputs["light"].path).parents[1], ignore_errors=True)
    return out


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


def run_cluster(kfp_cfg, workspace_root: str, ds: str, config_json: str, production_dir: str, run_dir) -> dict:
    """Submit the committed package to a Kubeflow Pipelines API, wait for it, publish its artifacts.

    ``kfp_cfg`` is ``hap.config.KfpConfig``. Credentials come from the environment KFP's client reads
    (in-cluster service account or ``KF_PIPELINES_*``), never from code or config files.
    """
    import fsspec
    import kfp

    if not kfp_cfg.host or not kfp_cfg.pipeline_root:
        raise ValueError("kfp cluster mode needs kfp.host and kfp.pipeline_root in the HAP config")
    client = kfp.Client(host=kfp_cfg.host)
    run = client.create_run_from_pipeline_package(
        str(COMPILED),
        arguments={"workspace_root": workspace_root, "ds": ds, "config_json": config_json,
                   "production_dir": production_dir},
        run_name=f"hap-daily-{ds}",
        experiment_name=kfp_cfg.experiment,
        pipeline_root=kfp_cfg.pipeline_root,
        enable_caching=False,
    )  # fmt: skip
    detail = client.wait_for_run_completion(run.run_id, timeout=kfp_cfg.timeout_s)
    state = str(getattr(detail, "state", "")).upper()
    if state != "SUCCEEDED":
        raise RuntimeError(f"KFP run {run.run_id} for ds={ds} ended {state or 'in an unknown state'}")
    fs, root = fsspec.core.url_to_fs(kfp_cfg.pipeline_root)
    return publish(locate_outputs(fs, root, run.run_id), run_dir, fs=fs)
