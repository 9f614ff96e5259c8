"""Build the ``.mar``: both models, the feature spec, routing and limits, and the code that serves them.

An archive is a version entire: the ``hap_runtime`` package (handler, scorer, codec, encoding,
model definitions) travels inside it, its root ``handler.py`` is TorchServe's entry point, and
``runtime.json`` records the code's fingerprint. Offline golden answers run that same code
(``archive_answers``), in a fresh interpreter with the unpacked archive first on the import path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import hap_runtime
from hap.config import HapConfig, ServingConfig
from hap_runtime.config import ROUTING_FILE, VERSION_FILE, RoutingConfig

MODEL_NAME = "hap"
RUNTIME_DIR = Path(hap_runtime.__file__).parent
RUNTIME_FILE = "runtime.json"


def mar_name(version: str) -> str:
    return f"{MODEL_NAME}-{version}.mar"


def runtime_files() -> list[Path]:
    return sorted(RUNTIME_DIR.glob("*.py"))


def runtime_fingerprint() -> str:
    """sha256 over the runtime package's sources: the code an archive serves with."""
    h = hashlib.sha256()
    for f in runtime_files():
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def served_routing(version_dir: str | Path, routing: RoutingConfig) -> RoutingConfig:
    """The routing a version serves: the configured limits with the K its evaluation chose (K = 0:
    light only). A version evaluated before K was chosen per run keeps the configured K."""
    evaluation = Path(version_dir) / "evaluation.json"
    chosen = json.loads(evaluation.read_text()).get("routing", {}).get("k") if evaluation.exists() else None
    return routing if chosen is None else replace(routing, k=int(chosen))


def stage_bundle(version_dir: str | Path, version: str, routing: RoutingConfig, dest: str | Path) -> Path:
    """Lay out what the archive carries: both models, routing (with the run's chosen K), version,
    feature spec and runtime code.

    ``TwoStageScorer`` loads the same layout, offline and in TorchServe.
    """
    import torch

    version_dir, bundle = Path(version_dir), Path(dest)
    routing = served_routing(version_dir, routing)
    for part in ("light", "expressive"):
        shutil.copytree(version_dir / part, bundle / part, ignore=shutil.ignore_patterns("history.json"))
    (bundle / ROUTING_FILE).write_text(json.dumps(asdict(routing)))
    (bundle / VERSION_FILE).write_text(json.dumps({"version": version}))
    spec = json.loads((bundle / "light" / "model.json").read_text())["spec"]
    (bundle / "feature_spec.json").write_text(json.dumps(spec, indent=1))
    (bundle / RUNTIME_DIR.name).mkdir()
    for f in runtime_files():
        shutil.copy2(f, bundle / RUNTIME_DIR.name / f.name)
    runtime = {"code_sha256": runtime_fingerprint(), "torch": torch.__version__.split("+")[0],
               "python": ".".join(map(str, sys.version_info[:2]))}  # fmt: skip
    (bundle / RUNTIME_FILE).write_text(json.dumps(runtime, indent=1))
    return bundle


def model_config(serving: ServingConfig) -> dict[str, int]:
    """TorchServe's per-model config: workers, cross-request batching, job queue and response timeout."""
    return {
        "minWorkers": serving.workers,
        "maxWorkers": serving.workers,
        "batchSize": serving.batch_size,
        "maxBatchDelay": serving.max_batch_delay_ms,
        "responseTimeout": serving.response_timeout_s,
        "jobQueueSize": serving.job_queue_size,
    }


def build_archive(version_dir: str | Path, version: str, cfg: HapConfig, export_dir: str | Path) -> Path:
    """Package a registered version; rebuilding the same version replaces its archive."""
    import yaml

    export_dir = Path(export_dir)
    export_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = stage_bundle(version_dir, version, cfg.routing, Path(tmp) / "bundle")
        model_yaml = Path(tmp) / "model-config.yaml"
        model_yaml.write_text(yaml.safe_dump(model_config(cfg.serving)))
        out = Path(tmp) / "out"
        out.mkdir()
        archiver = Path(sys.executable).with_name("torch-model-archiver")
        done = subprocess.run(
            [
                str(archiver),
                "--model-name", MODEL_NAME,
                "--version", version,
                "--handler", str(bundle / RUNTIME_DIR.name / "handler.py"),
                "--extra-files", str(bundle),
                "--config-file", str(model_yaml),
                "--export-path", str(out),
                "--force",
            ],
            capture_output=True,
            text=True,
            # the archiver stages files in $TMPDIR/<model name> and deletes that first: with the shared
            # temp folder, two packagings at once on one machine delete or mix each other's files
            env={**os.environ, "TMPDIR": tmp},
        )  # fmt: skip
        if done.returncode != 0:  # what the archiver said is the why: keep it in the task log and the step record
            said = "\n".join((done.stdout + done.stderr).strip().splitlines()[-20:])
            raise RuntimeError(f"torch-model-archiver exited {done.returncode} packaging {version}:\n{said}")
        target = export_dir / mar_name(version)
        shutil.move(out / f"{MODEL_NAME}.mar", target)
    return target


def extract_archive(mar: str | Path, dest: str | Path) -> Path:
    """Unpack a ``.mar`` (a zip) the way TorchServe does for its workers."""
    with zipfile.ZipFile(mar) as z:
        z.extractall(dest)
    return Path(dest)


def _offline(model_dir: str | Path, bodies: list[Any], python: str, env: dict[str, str] | None,
             python_args: tuple[str, ...]) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """Run ``python -m hap_runtime.offline`` in a fresh interpreter, the unpacked archive first on its
    import path (and its working directory): its self-report and one answer per body."""
    model_dir = Path(model_dir).resolve()
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(model_dir), env.get("PYTHONPATH", "")) if p)
    stdin = "".join(json.dumps(b) + "\n" for b in bodies)
    proc = subprocess.run([python, *python_args, "-m", "hap_runtime.offline", str(model_dir)], input=stdin,
                          capture_output=True, text=True, cwd=model_dir, env=env)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"the archive's scorer failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    header, *answers = proc.stdout.splitlines()
    return json.loads(header), [json.loads(line) for line in answers]


def archive_answers(model_dir: str | Path, bodies: list[Any], python: str = sys.executable,
                    env: dict[str, str] | None = None, python_args: tuple[str, ...] = ()) -> list[dict[str, Any]]:  # fmt: skip
    """Answers of the archive's own code for ``bodies`` (``RequestError``s as ``{"error": ...}``)."""
    return _offline(model_dir, bodies, python, env, python_args)[1]


def archive_runtime(model_dir: str | Path, python: str = sys.executable, env: dict[str, str] | None = None,
                    python_args: tuple[str, ...] = ()) -> dict[str, Any]:  # fmt: skip
    """What the archive's offline scorer reports about itself (version, runtime record, JSON decoder)."""
    return _offline(model_dir, [], python, env, python_args)[0]
