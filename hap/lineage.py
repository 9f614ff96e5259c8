"""Lineage: what produced a model version (code, settings, data, libraries) and who acted.

Recorded with every trained run (``lineage.json``) and copied into the registry manifest, so
"which data, code and settings produced the version now serving?" has an answer years later.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import json
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from hap.contract import EVAL_TABLE, partition_dir

REPO = Path(__file__).resolve().parents[1]
# The distributions whose versions change what a run produces or how it is served.
LIBRARIES = ("torch", "kfp", "apache-airflow", "great-expectations", "torchserve", "pyarrow", "numpy", "scipy")
TABLES = ("requests", "candidates", EVAL_TABLE)  # the evaluation table (simulation only) decides K


@functools.cache
def code_revision() -> dict[str, Any]:
    """The git commit of this checkout, and whether it had uncommitted changes to tracked files.

    ``$HAP_CODE_REVISION`` wins (images built from a commit set it); outside a checkout and without
    it, the revision is ``unknown``, said plainly rather than guessed."""
    env = os.environ.get("HAP_CODE_REVISION", "").strip()
    if env:
        return {"commit": env, "dirty": False, "source": "HAP_CODE_REVISION"}
    try:
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None, "source": "not a git checkout; set HAP_CODE_REVISION"}
    return {"commit": commit, "dirty": bool(status.strip()), "source": "git"}


# The packages whose code decides what training produces (its inputs' code identity).
TRAINING_CODE = ("hap", "hap_runtime", "models", "components")


@functools.cache
def training_code_hash() -> str:
    """A hash of the training code's sources as they are on disk: unlike a commit, it also
    tells uncommitted edits apart."""
    h = hashlib.sha256()
    for package in TRAINING_CODE:
        for path in sorted((REPO / package).rglob("*.py")):
            h.update(str(path.relative_to(REPO)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that matter (metadata only: nothing is imported)."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def config_hash(config_json: str) -> str:
    """A hash of the effective configuration, independent of key order and whitespace."""
    return text_hash(json.dumps(json.loads(config_json), sort_keys=True, separators=(",", ":")))


def file_hash(path: str | Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def partition_fingerprint(data_root: Path, table: str, ds: str) -> dict[str, Any] | None:
    """Content fingerprint of one partition: a hash over its files' names and bytes, with the file
    count and size. ``None`` when the partition is absent."""
    folder = partition_dir(data_root, table, ds)
    if not folder.exists():
        return None
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        h.update(file_hash(f).encode())
    return {"sha256": h.hexdigest()[:16], "files": len(files), "bytes": sum(f.stat().st_size for f in files)}


def data_lineage(data_root: Path, days: list[str], validation: dict[str, str | None]) -> list[dict[str, Any]]:
    """Each day of a training window: its partitions' fingerprints and validation verdict."""
    return [
        {"ds": ds, "validation": validation.get(ds), **{t: partition_fingerprint(data_root, t, ds) for t in TABLES}}
        for ds in days
    ]


def actor() -> str:
    """Who or what is acting: the Airflow DAG run and task when inside one, else the user and host."""
    run_id = os.environ.get("AIRFLOW_CTX_DAG_RUN_ID")
    if run_id:
        dag = os.environ.get("AIRFLOW_CTX_DAG_ID", "?")
        task = os.environ.get("AIRFLOW_CTX_TASK_ID", "?")
        return f"airflow {dag}/{run_id} task {task}"
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid {os.getuid()}"
    return f"{user}@{socket.gethostname()} (hap CLI)"
