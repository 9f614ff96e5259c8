"""Model registry on a directory: immutable versions and an atomically updated production pointer.

``versions/<version>/`` holds both models, the evaluation, the gate decision and a manifest
(day, window, content hash, lineage). ``production.json`` names the serving version and the one
before it. Versions are ``<yyyymmdd>.<n>``; re-registering the same day's identical weights
returns the existing version, so reruns create no duplicates.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from hap.lineage import actor
from hap.workspace import Workspace, write_json_atomic

MODEL_PARTS = ("light", "expressive")


def content_hash(run_dir: Path) -> str:
    h = hashlib.sha256()
    for part in MODEL_PARTS:
        for f in sorted((run_dir / part).iterdir()):
            if f.name != "history.json":  # timings differ run to run; weights and config do not
                h.update(f.name.encode())
                h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _lineage(run_dir: Path) -> dict[str, Any]:
    """The run's lineage (``lineage.json``, written by training) with the gate policy it passed."""
    path = run_dir / "lineage.json"
    lineage = json.loads(path.read_text()) if path.exists() else {"missing": "the run recorded no lineage"}
    decision = run_dir / "decision.json"
    if decision.exists():
        lineage["gate_policy"] = json.loads(decision.read_text()).get("policy")
    return lineage


class Registry:
    def __init__(self, ws: Workspace) -> None:
        self.root = ws.registry

    def version_dir(self, version: str) -> Path:
        return self.root / "versions" / version

    def versions(self) -> list[dict[str, Any]]:
        base = self.root / "versions"
        if not base.exists():
            return []
        out = [json.loads((d / "manifest.json").read_text()) for d in base.iterdir() if (d / "manifest.json").exists()]
        return sorted(out, key=lambda m: (m["ds"], int(m["version"].split(".")[1])))

    def first_accepted(self) -> dict[str, Any] | None:
        """The first version ever registered (it passed its gate): the anchor of relative floors."""
        versions = self.versions()
        return min(versions, key=lambda m: m["registered_at"]) if versions else None

    def register(self, ds: str, run_dir: str | Path) -> str:
        """Copy a gated run into a new version (or return the existing one with the same content)."""
        run_dir = Path(run_dir)
        digest = content_hash(run_dir)
        same_day = [m for m in self.versions() if m["ds"] == ds]
        for m in same_day:
            if m["content_hash"] == digest:
                return m["version"]
        version = f"{ds.replace('-', '')}.{len(same_day) + 1}"
        target = self.version_dir(version)
        staging = target.with_name(target.name + ".staging")
        if staging.exists():
            shutil.rmtree(staging)
        shutil.copytree(run_dir, staging)
        evaluation = json.loads((run_dir / "evaluation.json").read_text())
        manifest = {
            "version": version,
            "ds": ds,
            "content_hash": digest,
            "registered_at": dt.datetime.now(dt.UTC).isoformat(),
            "window_days": evaluation["holdout"]["days"],
            "parent": (self.production() or {}).get("version"),
            "metrics": evaluation["candidate"],
            "lineage": _lineage(run_dir),
        }
        write_json_atomic(staging / "manifest.json", manifest)
        os.replace(staging, target)
        self.write_index()
        return version

    def write_index(self) -> Path:
        """``index.md``: every version with its window, lineage, gate decision and headline metrics."""
        prod = (self.production() or {}).get("version")
        lines = [
            "# Model registry",
            "",
            "| version | ds | window | parent | gate | light AUC | K | system metric (light alone) | MFLOPs/req | serving | report |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for m in self.versions():
            decision_file = self.version_dir(m["version"]) / "decision.json"
            decision = json.loads(decision_file.read_text()) if decision_file.exists() else {}
            gate = "pass" if decision.get("passed") else "fail" if decision else "—"
            met = m["metrics"]
            window = f"{m['window_days'][0]}..{m['window_days'][-1]}" if m["window_days"] else "—"
            lines.append(
                f"| [{m['version']}](versions/{m['version']}/decision.md) | {m['ds']} | {window} | "
                f"{m['parent'] or '—'} | {gate} | {met.get('light.auc.overall', float('nan')):.4f} | "
                f"{met.get('system.k', '—')} | {met.get('system.value', float('nan')):.4f} "
                f"({met.get('system.light_value', float('nan')):.4f}) | "
                f"{met.get('system.flops_per_request', float('nan')) / 1e6:.1f} | "
                f"{'production' if m['version'] == prod else ''} | [ds={m['ds']}](../reports/ds={m['ds']}/index.html) |"
            )
        path = self.root / "index.md"
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        os.replace(tmp, path)
        return path

    def production(self) -> dict[str, Any] | None:
        path = self.root / "production.json"
        return json.loads(path.read_text()) if path.exists() else None

    def set_production(self, version: str, reason: str) -> dict[str, Any]:
        """Point production at ``version`` atomically, remembering the previous one for rollback; for the
        version already in production, the pointer (and its rollback target) stays and a ``redeploy``
        event is recorded."""
        if not self.version_dir(version).exists():
            raise KeyError(f"unknown model version {version}")
        current = self.production()
        if current and current["version"] == version:  # a redeploy: the pointer stays, the audit trail says so
            self.record_event("redeploy", version=version, reason=reason, previous=current.get("previous"))
            return current
        pointer = {
            "version": version,
            "previous": current["version"] if current else None,
            "set_at": dt.datetime.now(dt.UTC).isoformat(),
            "reason": reason,
            "by": actor(),
        }
        write_json_atomic(self.root / "production.json", pointer)
        self.record_event("set_production", **pointer)
        self.write_index()
        return pointer

    def record_event(self, event: str, **fields: Any) -> None:
        """Append to ``events.jsonl``, the registry's audit trail (deploys, rollbacks, shadows)."""
        self.root.mkdir(parents=True, exist_ok=True)
        record = {"event": event, "at": dt.datetime.now(dt.UTC).isoformat(), "by": actor(), **fields}
        with (self.root / "events.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
