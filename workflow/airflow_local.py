"""Run the daily DAG on the embedded Airflow (SQLite metadata DB, ``dag.test()``)."""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import os
import subprocess
import sys
from pathlib import Path

from hap.workspace import Workspace

DAGS_FOLDER = Path(os.environ.get("HAP_DAGS_FOLDER", Path(__file__).resolve().parents[1] / "dags"))
DAG_FILE = DAGS_FOLDER / "hap_daily.py"


log = logging.getLogger(__name__)

# SQLite's driver gives up on a write lock after 5 s; a standalone scheduler, its DAG processor and a
# CLI call (``backfill create`` writing one run per day) contend for longer than that on 2 cores.
# Airflow imports this dict by name (``[database] sql_alchemy_connect_args``).
SQLITE_CONNECT_ARGS: dict[str, object] = {"timeout": 60}


def airflow_env(ws: Workspace) -> dict[str, str]:
    """Environment for a local Airflow whose home lives in the workspace."""
    return {
        "AIRFLOW_HOME": str(ws.airflow),
        "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "HAP_HOME": str(ws.root),
        "GX_ANALYTICS_ENABLED": "false",
        "HAP_RUN_DEADLINE_H": "0",  # dag.test() cannot store deadline alerts (Airflow 3.3.2)
    }


def init_airflow() -> None:
    """Create the metadata DB of the current ``$AIRFLOW_HOME`` once (``airflow db migrate``)."""
    home = Path(os.environ["AIRFLOW_HOME"])
    marker = home / ".hap_db_migrated"
    if marker.exists():
        return
    home.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "airflow", "db", "migrate"]
    proc = subprocess.run(cmd, env=dict(os.environ), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"`airflow db migrate` exited {proc.returncode}:\n{_cli_output(proc)}")
    marker.touch()


def _tail(text: str | None, n: int = 40) -> str:
    return "\n".join((text or "").splitlines()[-n:])


def _cli_output(proc: subprocess.CompletedProcess, stderr: str | None = None) -> str:
    """A failed CLI's stderr (or ``stderr``, where it went to a file) and the tail of its stdout."""
    err = proc.stderr if stderr is None else stderr
    return f"--- stderr (tail) ---\n{_tail(err)}\n--- stdout (tail) ---\n{_tail(proc.stdout, 20)}"


class NoTaskRan(RuntimeError):
    """A DAG run that executed nothing: an error, never a silent success."""


def run_day(ds: str, ws: Workspace | None = None, conf: dict | None = None) -> dict[str, str]:
    """Run one daily DAG run for ``ds`` in-process with ``dag.test()``; return task states.

    Uses the process's ``$AIRFLOW_HOME`` if set (Airflow reads it at import), else the workspace's.
    """
    ws = ws or Workspace.from_env()
    for key, value in airflow_env(ws).items():
        if key == "HAP_HOME":
            os.environ[key] = value  # the tasks find the workspace through it
        else:
            os.environ.setdefault(key, value)
    init_airflow()
    spec = importlib.util.spec_from_file_location("hap_daily", DAG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    day = dt.datetime.fromisoformat(ds).replace(tzinfo=dt.UTC)
    dag_run = module.daily_dag.test(logical_date=day, run_conf=conf)
    states = {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}
    states["dag_run"] = str(dag_run.state)
    if not any(s not in ("None", "none") for t, s in states.items() if t != "dag_run"):
        raise NoTaskRan(
            f"the DAG run for ds={ds} executed no task (states {states}); "
            f"is ds before the DAG's start_date {module.daily_dag.start_date:%Y-%m-%d}, or the DAG paused?"
        )
    return states


def run_day_subprocess(
    ds: str, ws: Workspace, log_file: Path, conf: dict | None = None, wait: bool = False
) -> dict[str, str]:
    """The same, in a child process whose (verbose) Airflow log goes to ``log_file``; ``wait``: run
    even before the day's data has landed (the DAG's sensor waits for it)."""
    import json

    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **airflow_env(ws)}
    with log_file.open("w") as out:  # everything the child prints, in order: the task states are its last JSON line
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "workflow.cli",
                "run-day",
                "--ds",
                ds,
                "--json",
                *(["--wait"] if wait else []),
                *(["--conf", json.dumps(conf)] if conf else []),
            ],  # fmt: skip
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    output = log_file.read_text(errors="replace")
    for line in reversed(output.splitlines()):
        if line.startswith('{"'):
            try:
                states = json.loads(line)
            except ValueError:
                continue
            if isinstance(states, dict) and "dag_run" in states:
                return states
    raise RuntimeError(
        f"DAG run for ds={ds} produced no result (exit {proc.returncode}); see {log_file}:\n" + _tail(output, 40)
    )


class StandaloneAirflow:
    """A real Airflow on SQLite for backfills, which need a scheduler: the components ``airflow
    standalone`` runs (DAG processor, API server, scheduler; no triggerer: no task defers), each its
    own process, so a backfill is created while no scheduler runs (it never reads runs half made)
    and a component that dies is seen at once. Its API server listens on 127.0.0.1 only, and it runs
    no scheduled intervals of its own (``use_job_schedule=False``): only what it is asked to."""

    def __init__(self, ws: Workspace, api_port: int, extra_env: dict[str, str] | None = None) -> None:
        self.home = ws.root / "airflow-standalone"
        env = {**os.environ, **airflow_env(ws), **(extra_env or {})}
        env.pop("HAP_RUN_DEADLINE_H", None)  # the scheduler stores deadline alerts: keep them on
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(api_port),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{api_port}/execution/",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": "2",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS": "workflow.airflow_local.SQLITE_CONNECT_ARGS",
                "AIRFLOW__SCHEDULER__MIN_FILE_PROCESS_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                # backfills and manual runs only: no scheduled run for "today" competes with them
                "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(api_port + 1),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(api_port + 2),
                "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
            }
        )
        self.env = env
        self.procs: dict[str, subprocess.Popen] = {}

    def airflow(self, *args: str, check: bool = True, locked_retries: int = 0) -> subprocess.CompletedProcess:
        """Run an ``airflow`` CLI command; on failure (``check``) the error carries its stderr.

        ``locked_retries``: SQLite answers "database is locked" at once, whatever its busy timeout, when
        a transaction that has read must write while another connection (the scheduler) writes; the
        command's transaction then rolls back whole, so a command whose write is one transaction
        (``dags unpause``, ``backfill create``) is run again, up to this many times."""
        import time

        cmd = [sys.executable, "-m", "airflow", *args]
        for attempt in range(locked_retries + 1):
            proc = subprocess.run(cmd, env=self.env, capture_output=True, text=True)
            if proc.returncode == 0 or "database is locked" not in proc.stdout + proc.stderr:
                break
            if attempt < locked_retries:
                log.warning("`airflow %s`: SQLite database locked, rolled back; again (%d/%d)",
                            " ".join(args[:2]), attempt + 1, locked_retries)  # fmt: skip
                time.sleep(2.0 * (attempt + 1))
        if check and proc.returncode != 0:
            raise RuntimeError(f"`airflow {' '.join(args)}` exited {proc.returncode}:\n{_cli_output(proc)}")
        return proc

    COMPONENTS = ("dag-processor", "api-server", "scheduler")

    def start(self, timeout: float = 240) -> None:
        """Migrate the DB, start the DAG processor and API server, wait until the DAG is listed, then
        start the scheduler."""
        import time

        self.home.mkdir(parents=True, exist_ok=True)
        self.airflow("db", "migrate", locked_retries=2)
        for name in self.COMPONENTS[:-1]:
            self._spawn(name)
        deadline, listed = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            self._check_alive()
            listed = self.airflow("dags", "list", "-o", "json", check=False)
            if listed.returncode == 0 and '"hap_daily"' in listed.stdout:
                self._spawn("scheduler")
                return
            time.sleep(5)
        raise RuntimeError(
            f"airflow did not list hap_daily within {timeout}s:\n{_cli_output(listed) if listed else ''}"
        )

    def _spawn(self, name: str) -> None:
        log = (self.home / f"{name}.log").open("a")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "airflow", name], env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def _stop(self, name: str) -> None:
        import signal

        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def _check_alive(self) -> None:
        dead = {name: p.returncode for name, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise RuntimeError(f"airflow components exited {dead}; their logs end:\n{self.log_tail()}")

    def log_tail(self, n: int = 60) -> str:
        """The last ``n`` lines of each component's log: the why of a failed or stuck run."""
        parts = []
        for name in self.COMPONENTS:
            path = self.home / f"{name}.log"
            text = path.read_text(errors="replace") if path.exists() else "(no log)"
            parts.append(f"--- {name} ---\n{_tail(text, n)}")
        return "\n".join(parts)

    def backfill(self, dag_id: str, start: str, end: str, conf: dict | None = None) -> None:
        """``airflow backfill create`` over [start, end], oldest first, one day at a time. The
        scheduler is stopped while the backfill and its runs are written and started again after:
        a scheduler that loaded a run whose creation then rolled back (SQLite refused a write under
        load) died on it, and the runs stayed queued."""
        import json

        self._stop("scheduler")
        try:
            self.airflow("dags", "unpause", dag_id, locked_retries=4)  # runs of a paused DAG stay queued
            args = ["backfill", "create", "--dag-id", dag_id, "--from-date", start, "--to-date", end]
            args += ["--max-active-runs", "1"]  # oldest first, one day at a time, like the daily schedule
            # one transaction: a locked database leaves no backfill and no run behind, so it is safe to repeat
            self.airflow(*args, *(["--dag-run-conf", json.dumps(conf)] if conf else []), locked_retries=4)
        finally:
            self._spawn("scheduler")

    def runs(self, dag_id: str) -> list[dict]:
        import json

        out = self.airflow("dags", "list-runs", dag_id, "-o", "json").stdout
        rows = [ln for ln in out.splitlines() if ln.startswith("[{") or ln.strip() == "[]"]
        return json.loads(rows[-1]) if rows else []

    def wait_for_runs(self, dag_id: str, n: int, timeout: float) -> list[dict]:
        """Wait until ``n`` runs of the DAG have finished; their records as the CLI lists them. A
        component that exits meanwhile fails the wait at once, with its log."""
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            runs = self.runs(dag_id)
            if len(runs) >= n and all(r["state"] in ("success", "failed") for r in runs):
                return runs
            time.sleep(10)
        raise TimeoutError(f"{dag_id}: runs not finished after {timeout}s: {self.runs(dag_id)}\n{self.log_tail()}")

    def stop(self) -> None:
        for name in reversed(self.COMPONENTS):
            self._stop(name)
