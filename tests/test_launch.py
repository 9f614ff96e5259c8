"""Training launchers: the PyTorchJob manifest, the training image and the cluster resources it needs.

There is no Kubernetes here: manifests are checked with the Kubernetes client's own models, and the
PyTorchJob path runs against a stand-in for the Training Operator that executes the job's container
command on this machine, so staging, the entry point's arguments and the copy-back are real.
"""

import copy
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_infra import _dockerfile

from components.launch import (
    CONTAINER,
    ENTRY_MODULE,
    EXAMPLE,
    pytorchjob_manifest,
    render_example,
    run_pytorchjob,
    torchrun_command,
    worker_args,
)
from hap.config import HapConfig, TrainJobConfig
from models.worker import parser

INFRA = Path(__file__).resolve().parents[1] / "infra"


def _deserialize(doc: dict, kind: str):
    from kubernetes.client import ApiClient

    return ApiClient()._ApiClient__deserialize(doc, kind)


def test_committed_example_is_fresh(tmp_path):
    assert render_example(tmp_path / "job.yaml").read_text() == EXAMPLE.read_text(), "run: python -m components.launch"


@pytest.mark.parametrize("workers,gpus", [(1, 0), (4, 0), (8, 1)])
def test_pytorchjob_runs_the_local_entry_point_on_n_workers(workers, gpus):
    job = TrainJobConfig(launcher="pytorchjob", workers=workers, nproc_per_node=2, gpus_per_worker=gpus)
    args = worker_args("/workspace/p", "light", "/workspace/c.json", "/workspace/m")
    doc = pytorchjob_manifest("hap-light-20261122-abc", job, args)
    assert (doc["apiVersion"], doc["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    specs = doc["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and sum(s["replicas"] for s in specs.values()) == workers
    assert ("Worker" in specs) == (workers > 1) and doc["spec"]["nprocPerNode"] == "2"
    for spec in specs.values():
        assert spec["restartPolicy"] in {"OnFailure", "Never", "Always", "ExitCode"}
        pod = _deserialize(spec["template"], "V1PodTemplateSpec")  # types and required fields
        (container,) = pod.spec.containers
        assert container.name == CONTAINER and container.security_context.run_as_non_root
        # the same module and arguments as torchrun on one machine; the entry point accepts them
        assert container.command[0] == "torchrun" and container.command[-2:] == ["-m", ENTRY_MODULE]
        local = torchrun_command(2, job.max_restarts, args)
        assert local[local.index("-m", 3) :] == ["-m", ENTRY_MODULE, *container.args]
        parsed = parser().parse_args(container.args)
        assert (parsed.which, parsed.out) == ("light", "/workspace/m")
        assert container.volume_mounts[0].mount_path == job.workspace_mount
        assert pod.spec.volumes[0].persistent_volume_claim.claim_name == job.workspace_pvc
        assert container.resources.limits.get("nvidia.com/gpu") == (str(gpus) if gpus else None)


def test_cluster_resources_and_training_image_agree_with_the_launcher():
    objects = {d["kind"]: d for d in yaml.safe_load_all((INFRA / "k8s" / "training.yaml").read_text())}
    for kind, doc in objects.items():
        _deserialize(doc, f"V1{kind}")
    job = TrainJobConfig()
    assert objects["PersistentVolumeClaim"]["metadata"]["name"] == job.workspace_pvc
    assert "ReadWriteMany" in objects["PersistentVolumeClaim"]["spec"]["accessModes"]
    assert {d["metadata"]["namespace"] for d in objects.values()} == {job.namespace}
    rule = objects["Role"]["rules"][0]
    assert rule["apiGroups"] == ["kubeflow.org"] and {"create", "get", "delete"} <= set(rule["verbs"])
    assert objects["RoleBinding"]["roleRef"]["name"] == objects["Role"]["metadata"]["name"]

    text = _dockerfile("training")  # also checks that everything it COPYs exists
    assert "pip install --no-cache-dir -r requirements.lock" in text
    assert "--uid 1000" in text and "USER trainer" in text  # runAsNonRoot with runAsUser 1000
    assert f"HAP_HOME={job.workspace_mount}" in text and 'ENTRYPOINT ["torchrun"]' in text


class _LocalOperator:
    """A stand-in for the Training Operator's API: running a job executes its container command on
    this machine with one node, the way each pod would (torchrun with the operator's PET_* env)."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict] = {}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        if name not in self.jobs:
            raise type("ApiException", (Exception,), {"status": 404})()
        del self.jobs[name]

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("kubeflow.org", "v1", "pytorchjobs")
        self.jobs[body["metadata"]["name"]] = copy.deepcopy(body)
        (container,) = body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"]
        env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}}
        env.update(PET_NNODES="1", PET_NODE_RANK="0", PET_NPROC_PER_NODE=body["spec"]["nprocPerNode"])
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", *container["command"][1:]]
        proc = subprocess.run(cmd + container["args"], env=env, capture_output=True, text=True)
        self.jobs[body["metadata"]["name"]]["status"] = {
            "conditions": [{"type": "Succeeded" if proc.returncode == 0 else "Failed", "status": "True",
                            "message": (proc.stdout + proc.stderr)[-2000:]}]
        }  # fmt: skip

    def get_namespaced_custom_object_status(self, group, version, namespace, plural, name):
        return self.jobs[name]


@pytest.mark.slow
def test_the_kfp_component_path_runs_a_pytorchjob_and_collects_its_model(tmp_path):
    from hap.workspace import Workspace
    from models.prepare import prepare
    from samples.simulator import CascadeSimulator

    ws = Workspace(tmp_path / "ws")
    (day,) = CascadeSimulator(HapConfig().sim).write_days(ws.data, "2026-11-22", 1, 300)
    ws.record_validation(day, {"success": True})
    base = HapConfig(window_days=1)
    cfg = dataclasses.replace(
        base,
        train=dataclasses.replace(base.train, epochs=1, shard_requests=64, monitor_every=0),
        job=TrainJobConfig(launcher="pytorchjob", workers=1, nproc_per_node=2, workspace_mount=str(tmp_path / "vol")),
    )
    prepare(str(ws.root), day, cfg, str(tmp_path / "artifact-prepared"))
    operator = _LocalOperator()
    for _ in range(2):  # a retried component replaces its own job
        history = run_pytorchjob(
            str(tmp_path / "artifact-prepared"), "light", cfg, str(tmp_path / "model"), api=operator
        )
    assert history["world_size"] == 2 and len(operator.jobs) == 1
    (name,) = operator.jobs
    assert (tmp_path / "vol" / "jobs" / name / "prepared" / "manifest.json").exists()  # staged on the volume
    assert json.loads((tmp_path / "model" / "history.json").read_text()) == history
    assert (tmp_path / "model" / "weights.pt").exists()
