"""Test session setup: Airflow, HAP and TorchServe each get homes and ports of their own.

Airflow reads ``AIRFLOW_HOME`` when first imported, so it is set here, before any test imports it.
"""

import contextlib
import json
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
os.environ["HAP_SENSOR_POKE_S"] = "2"  # the partition sensor re-checks every 2 s in tests
os.environ["HAP_CONFIG"] = str(Path(__file__).with_name("hap_test.yaml"))  # daily runs: 2 epochs at most


_PORT_LEASES = Path(tempfile.gettempdir()) / f"hap-test-ports-{os.getuid()}"
_leases: list = []  # open lock files: each port handed out stays leased until this process exits


def _lease(port: int):
    """An exclusive ``flock`` on the port's lease file, or None when another process holds it."""
    import fcntl

    _PORT_LEASES.mkdir(exist_ok=True)
    f = (_PORT_LEASES / str(port)).open("a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
    return f


def _free_port_block(n: int) -> int:
    """A base port with ``n`` consecutive free ports on 127.0.0.1, below the kernel's ephemeral range
    (32768+) so that no outgoing connection can take one before TorchServe binds it.

    A port that binds now may still be taken by a server that is starting (a JVM binds seconds after
    its launch): each port handed out is leased, in this process and across processes (test sessions
    side by side on one machine), and never handed out again while the lease holds."""
    import random

    rng = random.Random()
    for _ in range(400):
        base = rng.randrange(20000, 32000 - n)
        leases = [lease for p in range(base, base + n) if (lease := _lease(p)) is not None]
        if len(leases) < n:
            for lease in leases:
                lease.close()
            continue
        socks = []
        try:
            for p in range(base, base + n):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", p))
        except OSError:  # in use by something else: keep the leases, so this session never tries them again
            _leases.extend(leases)
            continue
        finally:
            for t in socks:
                t.close()
        _leases.extend(leases)
        return base
    raise RuntimeError(f"no block of {n} free, unleased ports in 20000-32000 (leases in {_PORT_LEASES})")


os.environ["HAP_SERVE_PORT"] = str(_free_port_block(5))


@pytest.fixture(scope="session")
def free_port_block():
    """A function giving a base port with ``n`` consecutive free ports on 127.0.0.1."""
    return _free_port_block


@pytest.fixture(scope="session")
def port_leases() -> Path:
    """Where the ports handed out by ``free_port_block`` are leased (one lock file per port)."""
    return _PORT_LEASES


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION


@pytest.fixture(scope="session")
def small_sim():
    """A small world: quick to build, same cascade."""
    from hap.config import SimConfig
    from samples.simulator import CascadeSimulator

    return CascadeSimulator(SimConfig(n_users=1500, n_items=6000))


@pytest.fixture(scope="session")
def small_day(small_sim):
    return small_sim.simulate_day("2026-11-20", 600)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    from hap.workspace import Workspace

    monkeypatch.setenv("HAP_HOME", str(tmp_path / "ws"))
    return Workspace.from_env()


def _bad_request_cases(body: dict, routing) -> list[tuple[str, object, str, str]]:
    """Every kind of bad input, as (name, body, field named in the error, error kind).

    ``body`` is a valid request; ``routing`` gives the limits (max candidates, max K). A ``bytes``
    body is sent as is (malformed JSON).
    """
    from hap_runtime.spec import DEFAULT_SPEC
    from serving.deploy import columnar

    c0, user = body["candidates"][0], body["user"]
    too_many = [c0] * (routing.max_candidates + 1)
    seq_cap, columns, n = DEFAULT_SPEC.sequence.max_len, columnar(body), len(body["candidates"])
    return [
        ("malformed JSON", b"{nope", "body", "malformed_json"),
        ("truncated JSON", b'{"user": {', "body", "malformed_json"),
        ("not an object", [1, 2], "body", "wrong_type"),
        ("missing user", {"candidates": body["candidates"]}, "user", "missing_field"),
        ("missing candidates", {"user": user}, "candidates", "missing_field"),
        ("extra top-level field", {**body, "debug": True}, "debug", "unknown_field"),
        ("user not an object", {**body, "user": "alice"}, "user", "wrong_type"),
        ("missing user field", {**body, "user": {k: v for k, v in user.items() if k != "gender"}}, "user.gender",
         "missing_field"),
        ("missing sequence", {**body, "user": {k: v for k, v in user.items() if k != "hist_item_ids"}},
         "user.hist_item_ids", "missing_field"),
        ("extra user field", {**body, "user": {**user, "email": "x"}}, "user.email", "unknown_field"),
        ("candidates not a list", {**body, "candidates": {"a": 1}}, "candidates", "wrong_type"),
        ("candidate not an object", {**body, "candidates": [3]}, "candidates[0]", "wrong_type"),
        ("extra candidate field", {**body, "candidates": [{**c0, "colour": 1}]}, "candidates[0].colour",
         "unknown_field"),
        ("missing candidate field", {**body, "candidates": [{k: v for k, v in c0.items() if k != "category"}]},
         "candidates[0].category", "missing_field"),
        ("wrong type", {**body, "candidates": [{**c0, "item_id": "abc"}]}, "candidates[0].item_id", "wrong_type"),
        ("number for a string", {**body, "candidates": [{**c0, "content_type": 2}]}, "candidates[0].content_type",
         "wrong_type"),
        ("string for a number", {**body, "candidates": [{**c0, "duration_s": "9"}]}, "candidates[0].duration_s",
         "wrong_type"),
        ("null value", {**body, "user": {**user, "city": None}}, "user.city", "wrong_type"),
        ("NaN literal (not JSON)", {**body, "candidates": [{**c0, "item_ctr_7d": float("nan")}]}, "body",
         "malformed_json"),
        ("Infinity literal (not JSON)", {**body, "candidates": [{**c0, "duration_s": float("inf")}]}, "body",
         "malformed_json"),
        ("bool as int", {**body, "candidates": [{**c0, "category": True}]}, "candidates[0].category", "wrong_type"),
        ("id beyond int64", {**body, "candidates": [{**c0, "item_id": 2**64}]}, "candidates[0].item_id",
         "out_of_range"),
        ("empty candidates", {**body, "candidates": []}, "candidates", "empty"),
        ("too many candidates", {**body, "candidates": too_many}, "candidates", "too_many"),
        ("bad sequence", {**body, "user": {**user, "hist_item_ids": ["x"]}}, "user.hist_item_ids[0]", "wrong_type"),
        ("sequence not a list", {**body, "user": {**user, "hist_item_ids": 5}}, "user.hist_item_ids", "wrong_type"),
        ("history id zero", {**body, "user": {**user, "hist_item_ids": [4, 0]}}, "user.hist_item_ids[1]",
         "out_of_range"),
        ("history beyond the contract's cap", {**body, "user": {**user, "hist_item_ids": [7] * (seq_cap + 1)}},
         "user.hist_item_ids", "too_long"),
        ("item id zero", {**body, "candidates": [c0, {**c0, "item_id": 0}]}, "candidates[1].item_id", "out_of_range"),
        ("negative author id", {**body, "candidates": [{**c0, "author_id": -7}]}, "candidates[0].author_id",
         "out_of_range"),
        ("ctr above its range", {**body, "candidates": [{**c0, "item_ctr_7d": 1.5}]}, "candidates[0].item_ctr_7d",
         "out_of_range"),
        ("category beyond its vocabulary size", {**body, "candidates": [{**c0, "category": 32}]},
         "candidates[0].category", "out_of_range"),
        ("user id zero", {**body, "user": {**user, "user_id": 0}}, "user.user_id", "out_of_range"),
        ("nested 5,000 deep", b"[" * 5000 + b"]" * 5000, "body", "too_deep"),
        ("integer of 5,000 digits", b'{"user": ' + b"7" * 5000 + b"}", "body", "out_of_range"),
        ("not UTF-8", b'{"user": "\xff\xfe"}', "body", "malformed_json"),
        ("body over the size limit", json.dumps(body).encode() + b" " * routing.max_body_bytes, "body", "too_large"),
        ("both layouts", {**columns, "candidates": body["candidates"]}, "items", "unknown_field"),
        ("column not a list", {**columns, "items": {**columns["items"], "category": 3}}, "items.category",
         "wrong_type"),
        ("columns of different lengths", {**columns, "items": {**columns["items"], "author_id": []}},
         "items.author_id", "length_mismatch"),
        ("column with a null", {**columns, "items": {**columns["items"], "duration_s": [None] * n}},
         "items.duration_s[0]", "wrong_type"),
        ("missing column", {**columns, "items": {k: v for k, v in columns["items"].items() if k != "title_len"}},
         "items.title_len", "missing_field"),
        ("empty columns", {**columns, "items": {k: [] for k in columns["items"]}}, "items", "empty"),
        ("k out of range", {**body, "k": routing.max_k + 1}, "k", "out_of_range"),
        ("negative k", {**body, "k": -1}, "k", "out_of_range"),
        ("m out of range", {**body, "m": 0}, "m", "out_of_range"),
        ("k not int", {**body, "k": "10"}, "k", "wrong_type"),
        ("m a float", {**body, "m": 5.0}, "m", "wrong_type"),
    ]  # fmt: skip


@pytest.fixture(scope="session")
def bad_requests():
    return _bad_request_cases


@contextlib.contextmanager
def _simulated_workspace(root: Path, start: str, days: int):
    """A workspace with ``days`` simulated days (1,000 requests each) from ``start``. Afterwards its
    TorchServe is stopped and ``HAP_HOME`` restored (``run_day`` points it at the workspace)."""
    from hap.config import SimConfig
    from hap.workspace import Workspace
    from samples.simulator import CascadeSimulator
    from serving.server import LocalTorchServe

    ws = Workspace(root)
    CascadeSimulator(SimConfig(n_users=2000, n_items=8000)).write_days(ws.data, start, days, 1000)
    old = os.environ.get("HAP_HOME")
    try:
        yield ws
    finally:
        LocalTorchServe(ws.serving).stop()
        if old is None:
            os.environ.pop("HAP_HOME", None)
        else:
            os.environ["HAP_HOME"] = old


@pytest.fixture(scope="session")
def simulated_workspace():
    return _simulated_workspace


def _render(url: str) -> str:
    """The page's text after a real headless browser (Debian's chromium) ran it."""
    import re
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is not installed: `make install` installs it (apt-get install chromium)"
    proc = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "<html" in proc.stdout.lower(), proc.stderr[-2000:]
    dom = re.sub(r"<(script|style)[^>]*>.*?</\1>", " ", proc.stdout, flags=re.S | re.I)
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


@pytest.fixture(scope="session")
def page_text():
    """``page_text(url)``: a page's text after a real headless browser (Debian's chromium) ran it."""
    return _render


@pytest.fixture
def lenient_policy(tmp_path) -> Path:
    """A floors-only gate policy, for tests about scheduling and promotion rather than the gate."""
    policy = tmp_path / "lenient.yaml"
    policy.write_text("metrics:\n  light.auc.overall: {floor: 0.6, max_drop: 1.0, min_examples: 1}\n")
    return policy
