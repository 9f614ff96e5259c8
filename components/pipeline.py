"""The training pipeline's graph: prepare → train_light → train_expressive (warm-started from light)
→ evaluate; and the re-evaluation graph (prepare → evaluate of a day's trained models, imported),
which a local rerun uses when only the versions it is judged against changed. Only the graph: each
component is one documented function in its own module, the logic is in ``models`` and the runners
(local, cluster) are in ``components.runners``.

The compiled package (``components/pipeline.yaml``, kept fresh by a test) is what a cluster runs.
Every task mounts the workspace volume (``job.workspace_pvc`` at ``job.workspace_mount``, declared
with kfp-kubernetes), so ``prepare`` reads the validated partitions and ``evaluate`` the production
version where the cluster runner says they are.
"""

from pathlib import Path
from typing import NamedTuple

from kfp import compiler, dsl, kubernetes
from kfp.dsl import Artifact, Model

from components.evaluate import evaluate_op
from components.prepare import prepare_op
from components.train_expressive import train_expressive_op
from components.train_light import train_light_op
from hap.config import TrainJobConfig

COMPILED = Path(__file__).with_name("pipeline.yaml")
PIPELINE_NAME = "hap-daily-training"


class TrainingOutputs(NamedTuple):
    light: Model
    expressive: Model
    evaluation: Artifact


def build_pipeline(job: TrainJobConfig = TrainJobConfig()):  # noqa: B008 - a frozen dataclass
    """The pipeline for ``job``'s image and workspace volume (the committed package: the defaults)."""

    def on_cluster(task: dsl.PipelineTask) -> dsl.PipelineTask:
        kubernetes.mount_pvc(task, pvc_name=job.workspace_pvc, mount_path=job.workspace_mount)
        return task.set_container_image(job.image).set_caching_options(False)

    @dsl.pipeline(name=PIPELINE_NAME, description="HAP light + expressive models for one day's window")
    def hap_training(
        workspace_root: str, ds: str, config_json: str, production_dir: str = "", anchor_dir: str = ""
    ) -> TrainingOutputs:
        prep = on_cluster(prepare_op(workspace_root=workspace_root, ds=ds, config_json=config_json))
        light = on_cluster(train_light_op(prepared=prep.outputs["prepared"], config_json=config_json))
        expressive = on_cluster(
            train_expressive_op(
                prepared=prep.outputs["prepared"], light=light.outputs["model"], config_json=config_json
            )
        )
        ev = on_cluster(
            evaluate_op(
                prepared=prep.outputs["prepared"],
                light=light.outputs["model"],
                expressive=expressive.outputs["model"],
                production_dir=production_dir,
                config_json=config_json,
                anchor_dir=anchor_dir,
            )
        )
        return TrainingOutputs(
            light=light.outputs["model"], expressive=expressive.outputs["model"], evaluation=ev.outputs["evaluation"]
        )

    return hap_training


hap_training = build_pipeline()


@dsl.pipeline(name="hap-reevaluation", description="Evaluate a day's trained models again (local runs)")
def hap_reevaluation(
    workspace_root: str, ds: str, config_json: str, light_uri: str, expressive_uri: str,
    production_dir: str = "", anchor_dir: str = "",
) -> Artifact:  # fmt: skip
    """The day's held-out requests encoded again (``prepare`` is deterministic: no float arithmetic
    a thread could reorder) and the models already trained from the same inputs, imported as they
    are, judged against today's production and anchor."""
    prep = prepare_op(workspace_root=workspace_root, ds=ds, config_json=config_json)
    light = dsl.importer(artifact_uri=light_uri, artifact_class=Model, reimport=True)
    expressive = dsl.importer(artifact_uri=expressive_uri, artifact_class=Model, reimport=True)
    ev = evaluate_op(
        prepared=prep.outputs["prepared"], light=light.output, expressive=expressive.output,
        production_dir=production_dir, config_json=config_json, anchor_dir=anchor_dir,
    )  # fmt: skip
    return ev.outputs["evaluation"]


def compile_pipeline(path: str | Path = COMPILED, job: TrainJobConfig | None = None) -> Path:
    """Compile the pipeline (for ``job``, else the defaults) into a package a KFP API accepts."""
    compiler.Compiler().compile(build_pipeline(job) if job else hap_training, str(path))
    return Path(path)
