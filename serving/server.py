"""A local TorchServe process on 127.0.0.1 with token auth on, and a client for its APIs.

Each server home gets its own pid file (via TMPDIR) and key file (TorchServe writes
``key_file.json`` in its working directory), so several homes can coexist on one machine.
Config snapshots are off: on start we register the registry's production version ourselves.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from serving.archive import MODEL_NAME

METRICS_CONFIG = Path(__file__).with_name("metrics.yaml")


class ServingError(RuntimeError):
    pass


@dataclass(frozen=True)
class Ports:
    inference: int = 8080
    management: int = 8081
    metrics: int = 8082
    grpc_inference: int = 8083
    grpc_management: int = 8084

    @classmethod
    def from_env(cls) -> Ports:
        """Five consecutive ports from ``$HAP_SERVE_PORT`` (default 8080), all on 127.0.0.1."""
        base = int(os.environ.get("HAP_SERVE_PORT", "8080"))
        return cls(base, base + 1, base + 2, base + 3, base + 4)


class LocalTorchServe:
    def __init__(self, home: str | Path, ports: Ports | None = None) -> None:
        self.home = Path(home)
        self.ports = ports or Ports.from_env()
        self.model_store = self.home / "model-store"
        self.config_file = self.home / "config.properties"
        self.log_dir = self.home / "logs"

    # ---- process lifecycle ----

    @property
    def inference_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.inference}"

    @property
    def management_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.management}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}"

    def _env(self) -> dict[str, str]:
        tmp = self.home / "tmp"
        tmp.mkdir(parents=True, exist_ok=True)
        bin_dir = str(Path(sys.executable).parent)
        return {
            **os.environ,
            "TMPDIR": str(tmp),  # pid file of the launcher
            "TEMP": str(tmp),  # JVM tmpdir: worker sockets stay inside this home
            "LOG_LOCATION": str(self.log_dir),
            "METRICS_LOCATION": str(self.log_dir),
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        }

    def write_config(self) -> None:
        self.model_store.mkdir(parents=True, exist_ok=True)
        props = {
            "inference_address": self.inference_url,
            "management_address": self.management_url,
            "metrics_address": self.metrics_url,
            "grpc_inference_address": "127.0.0.1",
            "grpc_management_address": "127.0.0.1",
            "grpc_inference_port": str(self.ports.grpc_inference),
            "grpc_management_port": str(self.ports.grpc_management),
            "model_store": str(self.model_store),
            "metrics_mode": "prometheus",
            "metrics_config": str(METRICS_CONFIG),
            "default_workers_per_model": "1",
            "disable_system_metrics": "true",
            "install_py_dep_per_model": "false",
            "default_response_timeout": "60",
        }
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    def is_running(self) -> bool:
        """Healthy and ours: /ping answers 200 to this home's inference token (auth covers /ping)."""
        if not (self.home / "key_file.json").exists():
            return False
        try:
            headers = {"Authorization": f"Bearer {self.keys()['inference']}"}
            return requests.get(f"{self.inference_url}/ping", headers=headers, timeout=2).status_code == 200
        except (requests.RequestException, ValueError, KeyError):
            return False

    def start(self, timeout: float = 90) -> None:
        if self.is_running():
            return
        self.write_config()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.home / "key_file.json").unlink(missing_ok=True)
        torchserve = shutil.which("torchserve", path=self._env()["PATH"])
        if not torchserve:
            raise ServingError("torchserve executable not found; install the project first (make install)")
        cmd = [
            torchserve, "--start", "--ts-config", str(self.config_file), "--model-store", str(self.model_store),
            "--enable-model-api", "--ncs",
        ]  # fmt: skip
        with (self.log_dir / "launcher.log").open("a") as out:
            subprocess.run(cmd, cwd=self.home, env=self._env(), stdout=out, stderr=subprocess.STDOUT, check=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.is_running():
                return
            time.sleep(0.5)
        raise ServingError(f"TorchServe did not come up within {timeout}s; see {self.log_dir}")

    def stop(self) -> None:
        torchserve = shutil.which("torchserve", path=self._env()["PATH"])
        if torchserve:
            subprocess.run([torchserve, "--stop"], cwd=self.home, env=self._env(), capture_output=True)
        deadline = time.monotonic() + 30
        while self.is_running() and time.monotonic() < deadline:
            time.sleep(0.5)

    # ---- authenticated API calls ----

    def keys(self) -> dict[str, str]:
        """The tokens TorchServe generated at start (never stored in code or config)."""
        data = json.loads((self.home / "key_file.json").read_text())
        return {"management": data["management"]["key"], "inference": data["inference"]["key"]}

    def _mgmt(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.keys()['management']}"}
        return requests.request(method, f"{self.management_url}{path}", headers=headers, timeout=120, **kw)

    def predict(self, body: Any, version: str | None = None, timeout: float = 60) -> requests.Response:
        path = f"/predictions/{MODEL_NAME}" + (f"/{version}" if version else "")
        headers = {"Authorization": f"Bearer {self.keys()['inference']}", "Content-Type": "application/json"}
        data = body if isinstance(body, bytes | str) else json.dumps(body)
        return requests.post(f"{self.inference_url}{path}", data=data, headers=headers, timeout=timeout)

    def versions(self) -> list[dict[str, Any]]:
        """Registered versions of the model, each with ``modelVersion`` and whether it is default."""
        r = self._mgmt("GET", f"/models/{MODEL_NAME}/all")
        if r.status_code == 404:
            return []
        r.raise_for_status()
        return r.json()

    def default_version(self) -> str | None:
        r = self._mgmt("GET", f"/models/{MODEL_NAME}")
        if r.status_code == 404:
            return None
        r.raise_for_status()
        return r.json()[0]["modelVersion"]

    def register(self, mar_file: str, workers: int = 1) -> None:
        params = {"url": mar_file, "initial_workers": workers, "synchronous": "true"}
        r = self._mgmt("POST", "/models", params=params)
        if r.status_code >= 300:
            raise ServingError(f"register {mar_file} failed: {r.status_code} {r.text}")

    def set_default(self, version: str) -> None:
        r = self._mgmt("PUT", f"/models/{MODEL_NAME}/{version}/set-default")
        if r.status_code >= 300:
            raise ServingError(f"set-default {version} failed: {r.status_code} {r.text}")

    def unregister(self, version: str) -> None:
        r = self._mgmt("DELETE", f"/models/{MODEL_NAME}/{version}")
        if r.status_code >= 300 and r.status_code != 404:
            raise ServingError(f"unregister {version} failed: {r.status_code} {r.text}")
