"""Test session setup: Airflow, HAP and TorchServe each get homes and ports of their own.

Airflow reads ``AIRFLOW_HOME`` when first imported, so it is set here, before any test imports it.
"""

import os
import socket
import tempfile
from pathlib import Path

import pytest

_SESSION = Path(tempfile.mkdtemp(prefix="hap-tests-"))
os.environ["AIRFLOW_HOME"] = str(_SESSION / "airflow")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parents[1] / "dags")
os.environ["GX_ANALYTICS_ENABLED"] = "false"
os.environ["HAP_RETRY_DELAY_S"] = "1"  # a failing task must not wait out a 5-minute retry delay


def _free_port_block(n: int) -> int:
    """A base port with ``n`` consecutive free ports on 127.0.0.1, below the kernel's ephemeral range
    (32768+) so that no outgoing connection can take one before TorchServe binds it."""
    import random

    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - n)
        socks = []
        try:
            for p in range(base, base + n):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError("no free port block")


os.environ["HAP_SERVE_PORT"] = str(_free_port_block(5))


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION


@pytest.fixture(scope="session")
def small_sim():
    """A small world: quick to build, same cascade."""
    from hap.config import SimConfig
    from hap.simulator import CascadeSimulator

    return CascadeSimulator(SimConfig(n_users=1500, n_items=6000))


@pytest.fixture(scope="session")
def small_day(small_sim):
    return small_sim.simulate_day("2026-11-20", 600)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    from hap.workspace import Workspace

    monkeypatch.setenv("HAP_HOME", str(tmp_path / "ws"))
    return Workspace.from_env()
