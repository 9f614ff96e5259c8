"""Where everything lives on one machine, and the per-day validation state.

Layout under the workspace root (``$HAP_HOME``, default ``./.hap``):
``data/`` logged samples (the contract), ``validation/ds=…/`` GX results and the day's verdict,
``runs/ds=…/`` a day's training outputs, ``steps/ds=….json`` what each step of the day did,
``reports/ds=…/`` the day's report, ``alerts/`` alerts for on-call, ``registry/`` model versions and the production pointer,
``serving/`` the local TorchServe home, ``airflow/`` the local Airflow home.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def from_env(cls, root: str | Path | None = None) -> Workspace:
        return cls(Path(root or os.environ.get("HAP_HOME", ".hap")).resolve())

    @property
    def data(self) -> Path:
        return Path(os.environ.get("HAP_DATA", self.root / "data"))

    def validation_dir(self, ds: str) -> Path:
        return self.root / "validation" / f"ds={ds}"

    def run_dir(self, ds: str) -> Path:
        return self.root / "runs" / f"ds={ds}"

    def report_dir(self, ds: str) -> Path:
        """The day's on-call report (``index.html``): built after every run of the daily DAG."""
        return self.root / "reports" / f"ds={ds}"

    @property
    def registry(self) -> Path:
        return self.root / "registry"

    @property
    def serving(self) -> Path:
        return self.root / "serving"

    @property
    def airflow(self) -> Path:
        return self.root / "airflow"

    # ---- validation verdicts: training reads only days whose latest verdict is "passed" ----

    def record_validation(self, ds: str, verdict: dict[str, Any]) -> Path:
        """Write the day's verdict (overwrites: re-validation after a fix un-quarantines)."""
        path = self.validation_dir(ds) / "verdict.json"
        write_json_atomic(path, verdict)
        return path

    def validation_status(self, ds: str) -> str | None:
        """``"passed"``, ``"quarantined"``, ``"error"`` (the validator failed: the data was not
        judged) or ``None`` when the day was never validated."""
        path = self.validation_dir(ds) / "verdict.json"
        if not path.exists():
            return None
        verdict = json.loads(path.read_text())
        return verdict.get("status") or ("passed" if verdict["success"] else "quarantined")


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON via a temp file and ``os.replace`` so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; ``None`` when absent, unreadable or not an object (on-call views
    read records a crash may have left half-written: they show what they can)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def fresh_dir(path: Path) -> Path:
    """An empty folder at ``path``: what an earlier run left there is removed, so a rerun replaces
    its outputs instead of adding to them (idempotent by day)."""
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def window_days(ds: str, window: int) -> list[str]:
    """The ``window`` days ending at ``ds``, oldest first."""
    end = dt.date.fromisoformat(ds)
    return [(end - dt.timedelta(days=i)).isoformat() for i in range(window - 1, -1, -1)]
