"""Build the ``.mar``: both models' weights and configs, the feature spec, routing (K, M), handler."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from hap.config import HapConfig, RoutingConfig, ServingConfig
from serving.scorer import ROUTING_FILE, VERSION_FILE

MODEL_NAME = "hap"
HANDLER = Path(__file__).with_name("handler.py")


def mar_name(version: str) -> str:
    return f"{MODEL_NAME}-{version}.mar"


def stage_bundle(version_dir: str | Path, version: str, routing: RoutingConfig, dest: str | Path) -> Path:
    """Lay out what the archive carries: both models, routing, version and feature spec.

    The same layout is what ``TwoStageScorer`` loads, offline (golden scores) and in TorchServe.
    """
    version_dir, bundle = Path(version_dir), Path(dest)
    for part in ("light", "expressive"):
        shutil.copytree(version_dir / part, bundle / part, ignore=shutil.ignore_patterns("history.json"))
    (bundle / ROUTING_FILE).write_text(json.dumps(asdict(routing)))
    (bundle / VERSION_FILE).write_text(json.dumps({"version": version}))
    spec = json.loads((bundle / "light" / "model.json").read_text())["spec"]
    (bundle / "feature_spec.json").write_text(json.dumps(spec, indent=1))
    return bundle


def model_config(serving: ServingConfig) -> dict[str, int]:
    """TorchServe's per-model config: workers, cross-request batching and response timeout."""
    return {
        "minWorkers": serving.workers,
        "maxWorkers": serving.workers,
        "batchSize": serving.batch_size,
        "maxBatchDelay": serving.max_batch_delay_ms,
        "responseTimeout": serving.response_timeout_s,
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
        subprocess.run(
            [
                str(archiver),
                "--model-name", MODEL_NAME,
                "--version", version,
                "--handler", str(HANDLER),
                "--extra-files", str(bundle),
                "--config-file", str(model_yaml),
                "--export-path", str(out),
                "--force",
            ],
            check=True,
            capture_output=True,
            text=True,
        )  # fmt: skip
        target = export_dir / mar_name(version)
        shutil.move(out / f"{MODEL_NAME}.mar", target)
    return target
