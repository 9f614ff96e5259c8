"""Where a model trains: in the KFP component's own process, as DDP ranks under ``torchrun`` on the
same machine, or as a Kubeflow ``PyTorchJob`` (Training Operator) of N pods. All three run the same
entry point, ``models.worker`` (``train_worker``), with the same arguments.

``python -m components.launch`` renders the example PyTorchJob committed under ``infra/k8s/``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hap.config import HapConfig, TrainJobConfig
from hap.workspace import fresh_dir
from models.worker import train_worker

log = logging.getLogger(__name__)

ENTRY_MODULE = "models.worker"
CONTAINER = "pytorch"  # the Training Operator expects the training container under this name
EXAMPLE = Path(__file__).resolve().parents[1] / "infra" / "k8s" / "pytorchjob.example.yaml"


class TrainingFailed(RuntimeError):
    """The training job (torchrun group or PyTorchJob) did not finish successfully."""


def worker_args(prepared: str, which: str, config: str, out: str, init: str = "") -> list[str]:
    return ["--prepared", prepared, "--which", which, "--config", config, "--out", out] + (
        ["--init", init] if init else []
    )


def torchrun_command(nproc: int, max_restarts: int, args: list[str]) -> list[str]:
    """One machine, ``nproc`` ranks; torchrun restarts the whole group when a worker dies."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    return [*launcher, f"--max-restarts={max_restarts}", "-m", ENTRY_MODULE, *args]


def launch_training(prepared: str, which: str, cfg: HapConfig, out: str, init: str = "") -> dict:
    """Train ``which`` on the prepared shards with the configured launcher; returns its history.
    ``init``: the light model folder the expressive model warm-starts from."""
    job = cfg.job
    if job.launcher == "pytorchjob":
        return run_pytorchjob(prepared, which, cfg, out, init)
    if job.launcher != "local":
        raise ValueError(f"unknown training launcher {job.launcher!r}: use 'local' or 'pytorchjob'")
    if job.processes <= 1:
        return train_worker(prepared, which, cfg, out, init_dir=init)
    config = Path(str(out) + ".config.json")
    config.write_text(cfg.to_json())
    cmd = torchrun_command(job.processes, job.max_restarts, worker_args(prepared, which, str(config), out, init))
    log.info("launching %s", " ".join(cmd))
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-30:])
        raise TrainingFailed(f"torchrun ({job.processes} ranks) exited with {proc.returncode}:\n{tail}")
    config.unlink(missing_ok=True)
    return json.loads((Path(out) / "history.json").read_text())


# ---- on a cluster: a PyTorchJob over the shared workspace volume ----


def job_name(which: str, prepared: str) -> str:
    """Deterministic per (model, prepared data): a retried component replaces its own job."""
    manifest = json.loads((Path(prepared) / "manifest.json").read_text())
    digest = hashlib.sha256(str(Path(prepared).resolve()).encode()).hexdigest()[:8]
    return f"hap-{which}-{manifest['ds'].replace('-', '')}-{digest}"


def pytorchjob_manifest(name: str, job: TrainJobConfig, args: list[str]) -> dict[str, Any]:
    """A ``kubeflow.org/v1`` PyTorchJob: 1 master + ``workers - 1`` workers, ``nproc_per_node``
    ranks each. The operator sets PET_NNODES / PET_NODE_RANK / PET_MASTER_ADDR / PET_MASTER_PORT /
    PET_NPROC_PER_NODE, which torchrun reads, so the container command is the local one."""
    limits: dict[str, Any] = {"cpu": job.cpu, "memory": job.memory}
    if job.gpus_per_worker:
        limits["nvidia.com/gpu"] = str(job.gpus_per_worker)
    container = {
        "name": CONTAINER,
        "image": job.image,
        "command": ["torchrun", f"--max-restarts={job.max_restarts}", "-m", ENTRY_MODULE],
        "args": args,
        "env": [{"name": "HAP_HOME", "value": job.workspace_mount}],
        "resources": {"requests": dict(limits), "limits": limits},
        "volumeMounts": [{"name": "workspace", "mountPath": job.workspace_mount}],
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "allowPrivilegeEscalation": False},
    }
    template = {
        "metadata": {"labels": {"app.kubernetes.io/name": "hap-training", "hap/job": name}},
        "spec": {
            "containers": [container],
            "volumes": [{"name": "workspace", "persistentVolumeClaim": {"claimName": job.workspace_pvc}}],
        },
    }
    replicas = {"Master": 1, "Worker": job.workers - 1}
    return {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "metadata": {"name": name, "namespace": job.namespace, "labels": {"app.kubernetes.io/part-of": "hap"}},
        "spec": {
            "nprocPerNode": str(job.nproc_per_node),
            "runPolicy": {
                "cleanPodPolicy": "None",
                "backoffLimit": job.max_restarts,
                "activeDeadlineSeconds": job.timeout_s,
                "ttlSecondsAfterFinished": 7 * 86400,
            },
            "pytorchReplicaSpecs": {
                role: {"replicas": n, "restartPolicy": "OnFailure", "template": copy.deepcopy(template)}
                for role, n in replicas.items()
                if n > 0
            },
        },
    }


def run_pytorchjob(
    prepared: str, which: str, cfg: HapConfig, out: str, init: str = "", api: Any = None, poll_s: float = 10.0
) -> dict:
    """Stage the prepared shards on the workspace volume, run the PyTorchJob, copy the model back.

    The KFP component and the job's pods mount the same volume at ``job.workspace_mount``; the
    component's own artifact paths are not visible to the job's pods, hence the staging.
    """
    job = cfg.job
    if job.workers < 1:
        raise ValueError("job.workers must be at least 1")
    name = job_name(which, prepared)
    stage = fresh_dir(Path(job.workspace_mount) / "jobs" / name)
    shutil.copytree(prepared, stage / "prepared")
    (stage / "config.json").write_text(cfg.to_json())
    if init:  # the light model the expressive one warm-starts from travels with the shards
        shutil.copytree(init, stage / "init")
    args = worker_args(
        str(stage / "prepared"),
        which,
        str(stage / "config.json"),
        str(stage / "model"),
        str(stage / "init") if init else "",
    )
    manifest = pytorchjob_manifest(name, job, args)
    api = api or _custom_objects_api()
    group, version, plural = "kubeflow.org", "v1", "pytorchjobs"
    try:  # a retried component replaces its earlier job
        api.delete_namespaced_custom_object(group, version, job.namespace, plural, name)
    except Exception as exc:  # noqa: BLE001 - absent is the normal case
        if getattr(exc, "status", None) != 404:
            raise
    api.create_namespaced_custom_object(group, version, job.namespace, plural, manifest)
    log.info("submitted PyTorchJob %s/%s (%d workers × %d ranks)", job.namespace, name, job.workers, job.nproc_per_node)
    deadline = time.monotonic() + job.timeout_s
    while True:
        status = api.get_namespaced_custom_object_status(group, version, job.namespace, plural, name).get("status", {})
        done = {c["type"]: c for c in status.get("conditions", []) if c.get("status") == "True"}
        if "Succeeded" in done:
            break
        if "Failed" in done:
            raise TrainingFailed(f"PyTorchJob {name} failed: {done['Failed'].get('message', '')}")
        if time.monotonic() > deadline:
            raise TrainingFailed(f"PyTorchJob {name} did not finish within {job.timeout_s}s")
        time.sleep(poll_s)
    if Path(out).exists():
        shutil.rmtree(out)
    shutil.copytree(stage / "model", out)
    return json.loads((Path(out) / "history.json").read_text())


def _custom_objects_api() -> Any:
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi()


def render_example(path: Path = EXAMPLE) -> Path:
    """The committed example: the light model of one day on 4 workers (kept fresh by a test)."""
    import yaml

    job = TrainJobConfig(launcher="pytorchjob", workers=4)
    stage = f"{job.workspace_mount}/jobs/hap-light-20261122-example"
    args = worker_args(f"{stage}/prepared", "light", f"{stage}/config.json", f"{stage}/model")
    doc = pytorchjob_manifest("hap-light-20261122-example", job, args)
    header = "# Generated by `python -m components.launch` from components/launch.py: do not edit.\n"
    path.write_text(header + yaml.safe_dump(doc, sort_keys=False))
    return path


if __name__ == "__main__":
    print(render_example())
