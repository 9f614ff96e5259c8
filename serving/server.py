"""A local TorchServe process on 127.0.0.1 with token auth on, its key keeper, and a client for its APIs.

Each server home gets its own pid file (via TMPDIR) and key file (TorchServe writes ``key_file.json``
in its working directory), so several homes can coexist on one machine. Config snapshots are off:
on start we register the registry's production version ourselves.

Every call goes through ``KeyRing``: a rotated or expired key is re-read (renewed if it expired) and
the call retried once. Predictions are idempotent, so ``predict`` also retries the two transient
answers TorchServe gives: 507 "Worker died." (the worker crashed with the batch in flight; TorchServe
restarts it and queues the requests behind that batch) and 503 "... has no worker to serve inference request" (in this deployment, where
workers are fixed, that means the job queue is full: overload).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import requests

from hap.config import ServingConfig
from hap_runtime.keyfile import HOME_ENV, MGMT_ENV, URL_ENV
from serving.archive import MODEL_NAME
from serving.errors import AuthError, ServingError
from serving.keys import PID_FILE, KeyRing, is_auth_failure

log = logging.getLogger(__name__)

METRICS_CONFIG = Path(__file__).with_name("metrics.yaml")
LOG_CONFIG = Path(__file__).with_name("log4j2.xml")
FRONTEND_CLASS = "org.pytorch.serve.ModelServer"
WORKER_SCRIPT = "model_service_worker.py"


def _port_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:``port`` now (with SO_REUSEADDR, as TorchServe's
    frontend binds: connections of an earlier server in TIME_WAIT do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def torchserve_failure(status: int, text: str) -> str | None:
    """TorchServe's own failure answers to a prediction (not the handler's): ``worker_died`` (507, the
    batch was in flight when its worker crashed) or ``queue_full`` (503, its job queue is full)."""
    if status >= 500 and "Worker died" in text:
        return "worker_died"
    if status == 503 and "has no worker to serve inference request" in text:
        return "queue_full"
    return None


def transient_failure(resp: requests.Response) -> str | None:
    """The kind of a retryable answer to a prediction: ``worker_died`` or ``overloaded`` (the
    handler's shedding, or TorchServe's own answer to a full queue)."""
    text = resp.text[:300]
    kind = torchserve_failure(resp.status_code, text)
    if kind == "queue_full" or (resp.status_code == 503 and '"overloaded"' in text):
        return "overloaded"
    return kind


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
    def __init__(self, home: str | Path, ports: Ports | None = None, cfg: ServingConfig | None = None) -> None:
        self.home = Path(home)
        self.ports = ports or Ports.from_env()
        self.cfg = cfg or ServingConfig()
        self.model_store = self.home / "model-store"
        self.config_file = self.home / "config.properties"
        self.log_dir = self.home / "logs"
        self.keys = KeyRing(self.home, self.management_url, self.inference_url)
        self._lock_depth, self._lock_file = 0, None
        self.http = requests.Session()

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
            HOME_ENV: str(self.home.resolve()),  # workers read shadow.json and the key file here
            URL_ENV: self.inference_url,
            MGMT_ENV: self.management_url,  # workers read their queue depth here (load shedding)
            "HAP_TORCH_THREADS": str(self.cfg.torch_threads),
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
            **frontend_properties(self.cfg),
            "metrics_config": str(METRICS_CONFIG),
        }
        self.config_file.write_text("".join(f"{k}={v}\n" for k, v in props.items()))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Serialize what changes this server across processes (start, stop, deploys, rollbacks):
        an exclusive ``flock`` on the home's ``serving.lock``, reentrant within this object."""
        if self._lock_depth == 0:
            self.home.mkdir(parents=True, exist_ok=True)
            self._lock_file = (self.home / "serving.lock").open("a")
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
        self._lock_depth += 1
        try:
            yield
        finally:
            self._lock_depth -= 1
            if self._lock_depth == 0:
                fcntl.flock(self._lock_file, fcntl.LOCK_UN)
                self._lock_file.close()
                self._lock_file = None

    def pid(self) -> int | None:
        """The frontend's pid when this home's TorchServe process is alive."""
        pid_file = self.home / "tmp" / ".model_server.pid"
        try:
            proc = psutil.Process(int(pid_file.read_text().strip()))
            return proc.pid if proc.is_running() and FRONTEND_CLASS in proc.cmdline() else None
        except (OSError, ValueError, psutil.Error):
            return None

    def keeper_pid(self) -> int | None:
        try:
            proc = psutil.Process(int((self.home / PID_FILE).read_text().strip()))
            return proc.pid if proc.is_running() and "serving.keys" in " ".join(proc.cmdline()) else None
        except (OSError, ValueError, psutil.Error):
            return None

    def busy_ports(self) -> list[int]:
        """This home's ports that something (a server, ours still shutting down, or another) holds."""
        return [port for port in dataclasses.astuple(self.ports) if not _port_free(port)]

    def is_running(self) -> bool:
        """Healthy and ours: /ping answers 200 to this home's inference token (auth covers /ping)."""
        if self.pid() is None:
            return False
        try:
            return self._call("inference", "GET", f"{self.inference_url}/ping", timeout=2).status_code == 200
        except (requests.RequestException, AuthError):
            return False

    def start(self, timeout: float = 90) -> bool:
        """Start TorchServe and its key keeper; returns False (and changes nothing but a dead keeper
        or an expired key) when this home's server is already running."""
        with self.lock():
            return self._start(timeout)

    def _start(self, timeout: float) -> bool:
        if self.pid() is not None:
            self._start_keeper()
            for kind in ("management", "inference"):
                if self.keys.exists() and self.keys.expires_at(kind) <= time.time() + 5:
                    self.keys.renew(kind)
            return False
        busy = self.busy_ports()
        if busy:  # a server of another home (or anything else) there would answer our clients instead
            raise ServingError(
                f"127.0.0.1 port(s) {busy} of {self.home} are in use by another process: stop it, or give this "
                "home another block of five ports ($HAP_SERVE_PORT, the first of them)"
            )
        self.write_config()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.home / "key_file.json").unlink(missing_ok=True)  # a dead server's stale keys
        torchserve = shutil.which("torchserve", path=self._env()["PATH"])
        if not torchserve:
            raise ServingError("torchserve executable not found; install the project first (make install)")
        cmd = [
            torchserve, "--start", "--ts-config", str(self.config_file), "--model-store", str(self.model_store),
            "--enable-model-api", "--ncs", "--log-config", str(LOG_CONFIG),
        ]  # fmt: skip
        with (self.log_dir / "launcher.log").open("a") as out:
            launched = subprocess.run(cmd, cwd=self.home, env=self._env(), stdout=out, stderr=subprocess.STDOUT)
        if launched.returncode != 0:
            raise ServingError(f"torchserve --start exited {launched.returncode}; see {self.log_dir / 'launcher.log'}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.keys.exists() and self.is_running():
                self._start_keeper()
                return True
            time.sleep(0.5)
        raise ServingError(f"TorchServe did not come up within {timeout}s; see {self.log_dir}")

    def _start_keeper(self) -> None:
        """Start the key keeper unless one runs, with the key lifetime the running server was started
        with (its ``config.properties``), not this caller's configuration."""
        if self.keeper_pid() is not None:
            return
        props = dict(ln.split("=", 1) for ln in self.config_file.read_text().splitlines() if "=" in ln)
        lifetime_s = float(props.get("token_expiration_min", self.cfg.token_expiration_min)) * 60
        cmd = [
            sys.executable, "-m", "serving.keys", "--home", str(self.home), "--management-url", self.management_url,
            "--inference-url", self.inference_url, "--lifetime-s", str(lifetime_s),
            "--renew-fraction", str(self.cfg.key_renew_fraction),
        ]  # fmt: skip
        with (self.log_dir / "keykeeper.log").open("a") as out:
            subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.home)
        deadline = time.monotonic() + 20
        while self.keeper_pid() is None:
            if time.monotonic() > deadline:
                raise ServingError(f"the key keeper did not start; see {self.log_dir / 'keykeeper.log'}")
            time.sleep(0.1)

    def stop(self) -> None:
        with self.lock():
            self._stop()

    def _stop(self, timeout: float = 60) -> None:
        """Stop the frontend and wait until its process is gone (its ports free): ``torchserve --stop``
        only signals it and deletes the pid file, while the JVM may take many seconds to unload its
        workers on a busy machine. Past ``timeout`` it is killed."""
        keeper = self.keeper_pid()
        if keeper is not None:
            os.kill(keeper, signal.SIGTERM)
        pid = self.pid()
        torchserve = shutil.which("torchserve", path=self._env()["PATH"])
        if torchserve:
            subprocess.run([torchserve, "--stop"], cwd=self.home, env=self._env(), capture_output=True)
        if pid is None:
            return
        try:
            frontend = psutil.Process(pid)
            try:
                frontend.wait(timeout=timeout)
            except psutil.TimeoutExpired:
                log.warning("TorchServe (pid %d) still up %.0f s after --stop: killing it", pid, timeout)
                frontend.kill()
                frontend.wait(timeout=30)
        except psutil.NoSuchProcess:
            pass

    def status(self) -> dict[str, Any]:
        """What is true now: process, health, versions and workers, keys and memory."""
        pid = self.pid()
        out: dict[str, Any] = {"running": pid is not None, "pid": pid, "url": self.inference_url}
        if pid is None:
            return out
        out["healthy"] = self.is_running()
        out["keeper_pid"] = self.keeper_pid()
        try:
            out["keys_expire"] = {k: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.keys.expires_at(k)))
                                  for k in ("management", "inference")}  # fmt: skip
            out["default"] = self.default_version()
            out["versions"] = {v["modelVersion"]: _summary(v) for v in self.versions()}
            out["memory_mb"] = self.memory_mb()
        except (requests.RequestException, AuthError, ServingError, psutil.Error) as exc:
            out["error"] = str(exc)
        return out

    def memory_mb(self) -> dict[str, Any]:
        """Resident memory of the frontend and of each live worker process, in MB."""
        pid = self.pid()
        if pid is None:
            return {}
        front = psutil.Process(pid)
        workers = []
        for child in front.children(recursive=True):
            try:  # a worker that is exiting may be a zombie for a moment: not a live worker
                if child.status() != psutil.STATUS_ZOMBIE and WORKER_SCRIPT in " ".join(child.cmdline()):
                    workers.append(round(child.memory_info().rss / 2**20, 1))
            except psutil.Error:
                continue
        return {"frontend": round(front.memory_info().rss / 2**20, 1), "workers": workers}

    # ---- authenticated API calls ----

    def _call(self, kind: str, method: str, url: str, **kw: Any) -> requests.Response:
        """One API call with this home's ``kind`` token; after an authorization failure the key is
        re-read (renewed if it expired) and the call made once more."""
        key = self.keys.key(kind)
        headers = kw.pop("headers", {})
        resp = self.http.request(method, url, headers={**headers, "Authorization": f"Bearer {key}"}, **kw)
        if is_auth_failure(resp):
            key = self.keys.refresh(kind, key)
            resp = self.http.request(method, url, headers={**headers, "Authorization": f"Bearer {key}"}, **kw)
        return resp

    def _mgmt(self, method: str, path: str, **kw: Any) -> requests.Response:
        return self._call("management", method, f"{self.management_url}{path}", timeout=120, **kw)

    def predict(
        self, body: Any, version: str | None = None, timeout: float | None = None, retries: int = 4
    ) -> requests.Response:
        """POST a request (``timeout``: the server's ``response_timeout_s`` unless given); up to ``retries`` times more after a transient failure, backing off about
        0.2 s, 0.4 s, 0.8 s... with jitter (4 retries wait ~3 s in all: a restarting worker's load
        time); a second "Worker died." is final. The response carries ``hap_attempts``."""
        path = f"/predictions/{MODEL_NAME}" + (f"/{version}" if version else "")
        data = (
            body.encode() if isinstance(body, str) else body if isinstance(body, bytes) else json.dumps(body).encode()
        )
        headers = {"Content-Type": "application/json"}
        died = 0
        for attempt in range(retries + 1):
            resp = self._call("inference", "POST", f"{self.inference_url}{path}", data=data, headers=headers,
                              timeout=timeout or self.cfg.response_timeout_s)  # fmt: skip
            resp.hap_attempts = attempt + 1  # type: ignore[attr-defined]
            kind = transient_failure(resp)
            died += kind == "worker_died"
            # A request that was in flight when two workers died may be what kills them: stop there.
            if attempt == retries or kind is None or died > 1:
                return resp
            time.sleep(0.2 * 2**attempt * random.uniform(0.5, 1.5))  # jitter: retries do not arrive in step
        return resp

    def versions(self) -> list[dict[str, Any]]:
        """Registered versions of the model, each with ``modelVersion`` and whether it is default."""
        r = self._mgmt("GET", f"/models/{MODEL_NAME}/all")
        if r.status_code == 404:
            return []
        _raise_for(r, "list versions")
        return r.json()

    def describe(self, version: str) -> dict[str, Any]:
        """One version's state: its workers (pid, status, resident memory), batching and queue."""
        r = self._mgmt("GET", f"/models/{MODEL_NAME}/{version}")
        _raise_for(r, f"describe {version}")
        return _summary(r.json()[0])

    def default_version(self) -> str | None:
        r = self._mgmt("GET", f"/models/{MODEL_NAME}")
        if r.status_code == 404:
            return None
        _raise_for(r, "describe the default version")
        return r.json()[0]["modelVersion"]

    def register(self, mar_file: str) -> None:
        """Register an archive; its workers come from the archive's ``model-config.yaml``."""
        params = {"url": mar_file, "synchronous": "true"}
        _raise_for(self._mgmt("POST", "/models", params=params), f"register {mar_file}")

    def set_default(self, version: str) -> None:
        _raise_for(self._mgmt("PUT", f"/models/{MODEL_NAME}/{version}/set-default"), f"set-default {version}")

    def unregister(self, version: str) -> None:
        r = self._mgmt("DELETE", f"/models/{MODEL_NAME}/{version}")
        if r.status_code != 404:
            _raise_for(r, f"unregister {version}")


def _summary(d: dict[str, Any]) -> dict[str, Any]:
    """The parts of TorchServe's model description on-call needs; memory measured with psutil
    (TorchServe reports 0 with system metrics off)."""

    def rss_mb(pid: int | None) -> float | None:
        try:
            return round(psutil.Process(pid).memory_info().rss / 2**20, 1) if pid else None
        except psutil.Error:
            return None

    workers = [{"pid": w.get("pid"), "status": w.get("status"), "memory_mb": rss_mb(w.get("pid"))}
               for w in d.get("workers", [])]  # fmt: skip
    queue = d.get("jobQueueStatus", {})
    return {"workers": workers, "batch_size": d.get("batchSize"), "max_batch_delay_ms": d.get("maxBatchDelay"),
            "queued": queue.get("pendingRequests"), "queue_free": queue.get("remainingCapacity")}  # fmt: skip


def _raise_for(resp: requests.Response, what: str) -> None:
    if resp.status_code >= 300:
        raise ServingError(f"{what} failed: {resp.status_code} {resp.text[:300]}")


def frontend_properties(cfg: ServingConfig) -> dict[str, str]:
    """The ``config.properties`` settings shared by the local server and the container image."""
    return {
        "metrics_mode": "prometheus",
        "default_workers_per_model": "1",
        "disable_system_metrics": "true",
        "install_py_dep_per_model": "false",
        "default_response_timeout": str(cfg.response_timeout_s),
        "decode_input_request": "false",  # bodies reach the handler as bytes: it bounds and parses them
        "async_logging": "true",
        "max_request_size": str(cfg.max_request_mb * 2**20),
        "job_queue_size": str(cfg.job_queue_size),
        "token_expiration_min": str(cfg.token_expiration_min),
        # Heap capped; C1 only: C2 kept recompiling TorchServe's frontend and took ~13% of a core at 100 rps.
        "vmargs": f"-Xmx{cfg.jvm_heap_mb}m -XX:+UseG1GC -XX:TieredStopAtLevel=1 -XX:+ExitOnOutOfMemoryError",
    }
