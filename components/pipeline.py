"""KFP pipeline: prepare → train_light, train_expressive → evaluate. Components only wire steps;
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

IMAGE = os.environ.get("HAP_TRAINING_IMAGE", "hap-preranking:0.1.0")
COMPILED = Path(__file__).with_name("pipeline.yaml")


@dsl.component(base_image=IMAGE)
def prepare_op(workspace_root: str, ds: str, config_json: str, prepared: Output[Dataset]):
    from hap.config import HapConfig
    from models.steps import prepare

    prepared.metadata.update(prepare(workspace_root, ds, HapConfig.from_json(config_json), prepared.path))


@dsl.component(base_image=IMAGE)
def train_light_op(prepared: Input[Dataset], config_json: str, model: Output[Model]):
    from hap.config import HapConfig
    from models.steps import train

    history = train(prepared.path, "light", HapConfig.from_json(config_json), model.path)
    model.metadata["train_seconds"] = history["seconds"]


@dsl.component(base_image=IMAGE)
def train_expressive_op(prepared: Input[Dataset], config_json: str, model: Output[Model]):
    from hap.config import HapConfig
    from models.steps import train

    history = train(prepared.path, "expressive", HapConfig.from_json(config_json), model.path)
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
    expressive = train_expressive_op(prepared=prep.outputs["prepared"], config_json=config_json)
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


def run_local(workspace_root: str, ds: str, config_json: str, production_dir: str, run_dir: str | Path) -> dict:
    """Run the pipeline with the KFP local subprocess runner and publish its artifacts to ``run_dir``.

    Publishing replaces the day's previous outputs whole, so rerunning a ``ds`` leaves no duplicates.
    """
    from kfp import local

    pipeline_root = Path(workspace_root) / "kfp"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    task = hap_training(workspace_root=workspace_root, ds=ds, config_json=config_json, production_dir=production_dir)
    run_dir = Path(run_dir)
    staging = run_dir.with_name(run_dir.name + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    shutil.copytree(task.outputs["light"].path, staging / "light")
    shutil.copytree(task.outputs["expressive"].path, staging / "expressive")
    shutil.copy(task.outputs["evaluation"].path, staging / "evaluation.json")
    if run_dir.exists():
        shutil.rmtree(run_dir)
    os.replace(staging, run_dir)
    # the runner's own per-run copies are scratch: drop them so reruns do not pile up
    run_root = Path(task.outputs["light"].path).parents[1]
    shutil.rmtree(run_root, ignore_errors=True)
    return {
        "run_dir": str(run_dir),
        "light": str(run_dir / "light"),
        "expressive": str(run_dir / "expressive"),
    }
