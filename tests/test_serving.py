"""Serving that stays up, through a real ``torchserve`` on 127.0.0.1 with token auth: keys renewed
under running clients, ten deploys leaving no worker behind, poison requests isolated inside their
batches, a killed worker, shadow scoring, and the archive running on its own code."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from serving_support import DS, day_workspace, make_versions, same_answer

from hap.config import HapConfig, ServingConfig
from registry.store import Registry
from serving.archive import archive_answers, archive_runtime, build_archive, extract_archive, mar_name
from serving.deploy import columnar, deploy, promote_shadow, sample_request, shadow_report
from serving.errors import ServingError
from serving.server import LocalTorchServe, Ports, transient_failure

pytestmark = pytest.mark.slow

N_VERSIONS = 12
SERVING = ServingConfig(token_expiration_min=1.0, key_renew_fraction=0.5, shadow_sample=1.0)
CFG = HapConfig(serving=SERVING)


@pytest.fixture(scope="module")
def ws(tmp_path_factory, small_day):
    return day_workspace(tmp_path_factory.mktemp("serving"), small_day)


@pytest.fixture(scope="module")
def versions(ws, small_day) -> list[str]:
    return make_versions(ws, small_day, N_VERSIONS)


@pytest.fixture(scope="module")
def server(ws, free_port_block):
    base = free_port_block(5)
    server = LocalTorchServe(ws.serving, Ports(base, base + 1, base + 2, base + 3, base + 4), SERVING)
    assert server.start() is True
    yield server
    server.stop()
    assert server.pid() is None and server.keeper_pid() is None and server.busy_ports() == []


@pytest.fixture
def production(ws, server, versions) -> str:
    """A default version being served (each test also runs alone)."""
    if server.default_version() is None:
        deploy(ws, versions[0], CFG, server, smoke_ds=DS, reason="fixture")
    return server.default_version()


def _twin(server: LocalTorchServe) -> LocalTorchServe:
    """Another client of the same server (its own HTTP session and key cache), as a second process would be."""
    return LocalTorchServe(server.home, server.ports, server.cfg)


class Traffic(threading.Thread):
    """A client sending requests back to back through ``hap``'s client until stopped."""

    def __init__(self, server: LocalTorchServe, bodies: list, retries: int = 5) -> None:
        super().__init__(daemon=True)
        self.client, self.bodies, self.retries = _twin(server), bodies, retries
        self.results: list[tuple[int, int, str]] = []  # (status, attempts, version or error)
        self.halt = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.halt.is_set():
            r = self.client.predict(self.bodies[i % len(self.bodies)], retries=self.retries, timeout=30)
            what = r.json().get("model_version") if r.status_code == 200 else r.text[:200]
            self.results.append((r.status_code, r.hap_attempts, what))
            i += 1

    def stop(self) -> list[tuple[int, int, str]]:
        self.halt.set()
        self.join(60)
        return self.results


def _settled_workers(server: LocalTorchServe, expected: int, timeout: float = 120) -> list[float]:
    """Worker processes' RSS once their number has settled at ``expected`` (unregistering is async)."""
    deadline = time.monotonic() + timeout
    while True:
        workers = server.memory_mb()["workers"]
        if len(workers) == expected or time.monotonic() > deadline:
            return workers
        time.sleep(0.5)


def test_keys_renew_under_traffic_and_ten_deploys_leave_one_worker_per_served_version(ws, server, versions):
    """Keys expire after one minute; the keeper renews them at half-life while a client sends requests
    back to back and ten consecutive deploys go through: no request fails, and TorchServe ends each
    deploy holding production plus the previous version, memory flat."""
    deploy(ws, versions[0], CFG, server, smoke_ds=DS, reason="first")
    keys_seen = {server.keys.key("inference")}
    bodies = [sample_request(ws.data, DS, 300, seed=s) for s in range(3)]
    traffic = Traffic(server, [*bodies, columnar(bodies[0])])
    traffic.start()
    rss, t0 = [], time.monotonic()
    try:
        for i, version in enumerate(versions[1:11], start=1):
            out = deploy(ws, version, CFG, server, smoke_ds=DS, reason=f"deploy {i}")
            assert out["previous"] == versions[i - 1] and server.default_version() == version
            registered = {v["modelVersion"] for v in server.versions()}
            assert registered == {version, versions[i - 1]}, registered  # production + previous only
            workers = _settled_workers(server, 2 * SERVING.workers)
            assert len(workers) == 2 * SERVING.workers, workers  # production's and the previous version's
            rss.append((server.memory_mb()["frontend"], sum(workers)))
            keys_seen.add(server.keys.key("inference"))
        while time.monotonic() - t0 < 75:  # run past the first keys' expiry even if deploys were quick
            time.sleep(2)
            keys_seen.add(server.keys.key("inference"))
    finally:
        results = traffic.stop()
    failed = [r for r in results if r[0] != 200]
    assert len(results) > 100 and not failed, (len(results), failed[:5])
    assert len(keys_seen) >= 2, "the inference key was never renewed"
    assert server.keys.expires_at("inference") > time.time()
    served = Counter(r[2] for r in results)
    assert versions[10] in served and len(served) >= 3, served
    # Flat: workers hold two models whatever the number of deploys; the JVM heap is capped.
    worker_rss = [w for _, w in rss]
    assert max(worker_rss[3:]) <= 1.15 * max(worker_rss[:3]), rss
    assert max(f for f, _ in rss) < SERVING.jvm_heap_mb + 400, rss


@contextlib.contextmanager
def _cli_for(server: LocalTorchServe):
    """``hap`` commands find this server's ports through ``$HAP_SERVE_PORT``."""
    old = os.environ.get("HAP_SERVE_PORT")
    os.environ["HAP_SERVE_PORT"] = str(server.ports.inference)
    try:
        yield
    finally:
        os.environ.pop("HAP_SERVE_PORT") if old is None else os.environ.__setitem__("HAP_SERVE_PORT", old)


def test_serve_start_on_a_running_server_changes_nothing_and_status_tells_the_truth(ws, server, production, capsys):
    from workflow.cli import main

    api_key = lambda: json.loads(server.keys.path.read_text())["API"]["key"]  # noqa: E731 - changes only on a restart
    before = (server.pid(), server.keeper_pid(), api_key())
    with _cli_for(server):
        assert main(["--home", str(ws.root), "serve", "start"]) == 0
        assert "already running" in capsys.readouterr().out
        assert main(["--home", str(ws.root), "serve", "status", "--json"]) == 0
        status = json.loads(capsys.readouterr().out)
    assert (server.pid(), server.keeper_pid(), api_key()) == before  # not restarted, keys not deleted
    assert status["running"] and status["healthy"] and status["default"] == production
    assert status["keeper_pid"] == server.keeper_pid() and status["pid"] == server.pid()
    workers = [w for v in status["versions"].values() for w in v["workers"]]
    assert len(workers) == len(status["memory_mb"]["workers"]) and all(w["status"] == "READY" for w in workers)


AUTH_REFUSED = 400
"""TorchServe 0.12 refuses a missing, wrong or expired token with 400 ``InvalidKeyException`` (its
``InvalidKeyException`` is a ``ModelException``, which the frontend answers 400), never 401."""


def _refused_by_auth(r: requests.Response) -> bool:
    json_body = r.headers.get("content-type", "").startswith("application/json")
    return r.status_code == AUTH_REFUSED and json_body and r.json().get("type") == "InvalidKeyException"


def test_inference_api_answers_a_valid_request_only_with_the_inference_key(ws, server, production):
    """The same valid request, refused by TorchServe's token auth (not by our parser) without a token,
    with a wrong one, with the management key and with the API key; answered with the inference key."""
    body = sample_request(ws.data, DS, 50)
    url = f"{server.inference_url}/predictions/hap"
    keys = json.loads(server.keys.path.read_text())
    for name, headers in (
        ("no token", {}),
        ("wrong token", {"Authorization": "Bearer not-the-key"}),
        ("management key", {"Authorization": f"Bearer {keys['management']['key']}"}),
        ("API key", {"Authorization": f"Bearer {keys['API']['key']}"}),
    ):
        r = requests.post(url, json=body, headers=headers, timeout=30)
        assert _refused_by_auth(r), (name, r.status_code, r.text[:300])
    r = requests.get(f"{server.management_url}/models", timeout=30)  # the management API too
    assert _refused_by_auth(r), ("management API without a token", r.status_code, r.text[:300])
    for _ in range(3):  # the keeper may renew the key between reading it and using it: then use the new one
        key = server.keys.key("inference")
        r = requests.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        if r.status_code == 200 or server.keys.key("inference") == key:
            break
    assert r.status_code == 200, (r.status_code, r.text[:300])
    assert r.json()["model_version"] == production and r.json()["n_candidates"] == 50


def test_a_server_does_not_start_on_a_port_another_process_holds(tmp_path, free_port_block):
    """A port of the home's block already listened on (another server, anything): ``start`` refuses at
    once and names it, rather than waiting for a server whose port answers for someone else."""
    base = free_port_block(5)
    with socket.socket() as held:
        held.bind(("127.0.0.1", base + 3))
        held.listen()
        server = LocalTorchServe(tmp_path / "ts", Ports(*range(base, base + 5)))
        with pytest.raises(ServingError, match=rf"port\(s\) \[{base + 3}\] .* in use by another process"):
            server.start()
    assert server.pid() is None and not server.config_file.exists()


def test_expired_keys_are_renewed_by_our_clients_and_by_serve_start(tmp_path, free_port_block):
    """Keys that expired with the keeper down: TorchServe refuses them, ``hap`` clients renew them with
    the API key and carry on, and ``start`` on the running server restarts the keeper."""
    base = free_port_block(5)
    server = LocalTorchServe(tmp_path / "ts", Ports(base, base + 1, base + 2, base + 3, base + 4),
                             ServingConfig(token_expiration_min=0.1))  # fmt: skip
    assert server.start() is True
    try:
        os.kill(server.keeper_pid(), signal.SIGTERM)
        deadline = time.monotonic() + 60
        while server.keeper_pid() is not None:
            assert time.monotonic() < deadline, "the key keeper did not exit within 60 s of SIGTERM"
            time.sleep(0.2)
        stale = server.keys.key("inference")
        time.sleep(max(0.0, server.keys.expires_at("inference") - time.time()) + 1)
        r = requests.get(f"{server.inference_url}/ping", headers={"Authorization": f"Bearer {stale}"}, timeout=60)
        assert _refused_by_auth(r), (r.status_code, r.text[:300])
        status = _twin(server).status()
        assert status["running"] and status["keeper_pid"] is None
        assert status["healthy"]  # the client renewed the expired key and pinged with the new one
        assert server.keys.key("inference") != stale and server.keys.expires_at("inference") > time.time()
        pid = server.pid()
        assert server.start() is False and server.pid() == pid and server.keeper_pid() is not None
    finally:
        server.stop()


def test_poison_requests_mixed_with_valid_ones_fail_alone(ws, server, production, bad_requests):
    """Every kind of bad body (deep nesting, 5,000-digit integers, oversized, wrong types...) sent
    concurrently with valid requests: every valid one is answered exactly as when sent alone, every bad
    one gets its own 4xx naming field and kind, the errors are counted by kind, and the workers' own
    counts show batches that held several requests."""
    from hap_runtime.config import RoutingConfig

    # production's model under a label of its own: its counts start at 0 and hold only this test's calls
    label = f"{production}-poison"
    build_archive(Registry(ws).version_dir(production), label, CFG, server.model_store)
    server.register(mar_name(label))
    try:
        _poison_mix(ws, server, label, bad_requests(sample_request(ws.data, DS, 400, seed=0), RoutingConfig()))
    finally:
        server.unregister(label)
    assert server.default_version() == production


def _poison_mix(ws, server: LocalTorchServe, label: str, cases: list) -> None:
    valid = [sample_request(ws.data, DS, 400, seed=s) for s in range(4)]
    valid.append(columnar(valid[0]))
    alone = [server.predict(b, version=label).json() for b in valid]  # one batch each
    jobs = [("valid", i, b) for i, b in enumerate(valid)] * 6 + [("bad", i, c[1]) for i, c in enumerate(cases)] * 2
    jobs.append(("text", 0, json.dumps(valid[1])))
    jobs.append(("form", 0, json.dumps(valid[2])))  # curl --data without a Content-Type: form-encoded

    def send(job):
        kind, i, body = job
        client = _twin(server)
        if kind in ("text", "form"):  # valid JSON sent as text/plain, or as a form
            ctype = "text/plain" if kind == "text" else "application/x-www-form-urlencoded"
            return job, client._call("inference", "POST", f"{server.inference_url}/predictions/hap/{label}", data=body,
                                     headers={"Content-Type": ctype}, timeout=60)  # fmt: skip
        return job, client.predict(body, version=label, retries=0)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(send, jobs))
    for (kind, i, _), r in answers:
        if kind in ("valid", "text"):
            assert r.status_code == 200, (kind, i, r.status_code, r.text[:300])
            same_answer(r.json(), alone[i if kind == "valid" else 1])
        elif kind == "form":
            assert r.status_code == 400 and r.json()["kind"] == "malformed_json", r.text[:300]
            assert "Content-Type: application/json" in r.json()["error"]
        else:
            name, _, field, err_kind = cases[i]
            assert 400 <= r.status_code < 500, (name, r.status_code, r.text[:300])
            assert (r.json()["field"], r.json()["kind"]) == (field, err_kind), name
    answered = len(valid) + sum(kind in ("valid", "text") for kind, _, _ in jobs)
    kinds = {c[3] for c in cases}
    metrics = _metrics_when(
        server, lambda t: _metric(t, "HapBatchedRequests", label, 0.0) >= answered
        and all(_metric(t, "HapRequestErrors", label, 0.0, ErrorKind=k) > 0 for k in kinds),
        f"{answered} batched requests and errors of kinds {sorted(kinds)} for {label}",
    )  # fmt: skip
    # Batching, from the workers' own counts over the concurrent phase only: the valid requests that
    # went into one-pass batches, and those batches (one light pass each). Scored one by one, they
    # would be equal; more requests than batches means some batch held several requests.
    batches = _metric(metrics, "HapLatencyMs_count", label, stage="light") - len(valid)
    batched = _metric(metrics, "HapBatchedRequests", label) - len(valid)
    assert batched + len(valid) == answered, (batched, batches)  # each counted once
    assert 0 < batches < batched, f"no batch held more than one request: {batches:.0f} batches, {batched:.0f} requests"
    assert f'HapLatencyMs_bucket{{ModelName="hap",Level="Model",version="{label}",stage="request",le="1"' in metrics


def _metric(text: str, name: str, version: str, missing: float | None = None, **labels: str) -> float:
    """A metric's value on the metrics page; ``missing`` while it has no line yet (else that fails)."""
    want = [f'version="{version}"', *(f'{k}="{v}"' for k, v in labels.items())]
    lines = [ln for ln in text.splitlines() if ln.startswith(name + "{") and all(w in ln for w in want)]
    if not lines and missing is not None:
        return missing
    assert lines, (name, labels)
    return float(lines[0].rsplit(" ", 1)[1])


def _metrics_when(server: LocalTorchServe, done, what: str, timeout: float = 120) -> str:
    """The metrics page once ``done(text)`` holds. The workers emit their pending counts after a second
    of idleness, later on a busy machine: wait for the counts themselves, never for a fixed time."""
    deadline = time.monotonic() + timeout
    while True:
        text = requests.get(f"{server.metrics_url}/metrics", timeout=10).text
        if done(text):
            return text
        assert time.monotonic() < deadline, f"the metrics did not show {what} within {timeout}s"
        time.sleep(0.5)


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def _busiest(pids: list[int], window_s: float = 0.3) -> int:
    """The process that used the most CPU over the next ``window_s``."""
    before = {pid: _cpu_ticks(pid) for pid in pids}
    time.sleep(window_s)
    return max(pids, key=lambda pid: _cpu_ticks(pid) - before[pid])


def _kill_while_busy(pid: int, timeout: float = 20.0) -> None:
    """SIGKILL ``pid`` at a moment it is burning CPU (mid-batch), or at the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t0 = _cpu_ticks(pid)
        time.sleep(0.03)
        if _cpu_ticks(pid) - t0 >= 2:  # busy for most of the last 30 ms (ticks are 10 ms)
            break
    os.kill(pid, signal.SIGKILL)


def _each_answers_once_more(clients: list[Traffic], seen: list[int], timeout: float = 120) -> None:
    """Wait until every client has had one more answer than ``seen``."""
    deadline = time.monotonic() + timeout
    while any(len(t.results) <= n for t, n in zip(clients, seen, strict=True)):
        assert time.monotonic() < deadline, (
            f"a client had no answer within {timeout}s: {[len(t.results) for t in clients]} vs {seen}"
        )
        time.sleep(0.1)


def test_a_killed_worker_loses_no_request_of_a_retrying_client(ws, server, production):
    version = server.default_version()
    bodies = [sample_request(ws.data, DS, 1000, seed=s) for s in range(3)]
    clients = [Traffic(server, bodies) for _ in range(3)]  # three clients: the worker is never idle
    for traffic in clients:
        traffic.start()
    _each_answers_once_more(clients, [0] * len(clients))  # the clients are sending
    killed: list[int] = []
    for _ in range(3):
        # Kill it while it is scoring: with batching, one worker can take all three clients' requests
        # in one batch and leave the other idle, so a kill at an arbitrary instant may hit an idle worker.
        # "Busy" is read over the last 30 ms, so the batch may have been answered just before the kill;
        # then no request was in flight and the kill is repeated on the restarted worker (at most 3 times).
        killed.append(_busiest([w["pid"] for w in server.describe(version)["workers"]]))
        _kill_while_busy(killed[-1])
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            workers = server.describe(version)["workers"]
            pids = {w["pid"] for w in workers}
            if (
                len(workers) == SERVING.workers
                and not pids & set(killed)
                and all(w["status"] == "READY" for w in workers)
            ):
                break
            time.sleep(0.5)
        _each_answers_once_more(clients, [len(t.results) for t in clients])  # through the restarted worker
        if any(attempts > 1 for traffic in clients for _, attempts, _ in list(traffic.results)):
            break
    results = [r for traffic in clients for r in traffic.stop()]
    assert not pids & set(killed) and all(w["status"] == "READY" for w in workers), workers
    assert results and all(status == 200 for status, _, _ in results), [r for r in results if r[0] != 200][:5]
    assert any(attempts > 1 for _, attempts, _ in results), f"no in-flight batch was retried ({len(killed)} kills)"


def test_overload_is_shed_with_a_truthful_503_and_retry_after(ws, server, versions):
    """A version that sheds above two queued requests, under 24 concurrent clients: the overflow is
    answered at once with 503 ``overloaded`` and Retry-After (not TorchServe's "no worker" text, not a
    timeout), counted by kind; the rest are answered, and the client names the 503 ``overloaded``."""
    from concurrent.futures import ThreadPoolExecutor

    from hap_runtime.config import RoutingConfig

    tight = replace(CFG, serving=replace(SERVING, batch_size=1), routing=RoutingConfig(shed_queue_depth=2))
    label = f"{versions[0]}-shed2"
    build_archive(Registry(ws).version_dir(versions[0]), label, tight, server.model_store)
    server.register(mar_name(label))
    try:
        body = sample_request(ws.data, DS, 1000, seed=9)
        with ThreadPoolExecutor(24) as pool:
            out = list(pool.map(lambda _: _twin(server).predict(body, version=label, retries=0), range(240)))
        shed = [r for r in out if r.status_code == 503]
        assert shed and sum(r.status_code == 200 for r in out) > 0, Counter(r.status_code for r in out)
        assert len(shed) + sum(r.status_code == 200 for r in out) == len(out)
        for r in shed:
            assert r.json()["kind"] == "overloaded" and "queued" in r.json()["error"], r.text[:200]
            assert r.headers["Retry-After"] == "1" and transient_failure(r) == "overloaded"
            assert r.elapsed.total_seconds() < 10
        metrics = _metrics_when(
            server, lambda t: _metric(t, "HapRequestErrors", label, 0.0, ErrorKind="overloaded") >= len(shed),
            f"{len(shed)} overloaded errors of {label}",
        )  # fmt: skip
        assert _metric(metrics, "HapRequestErrors", label, ErrorKind="overloaded") == len(shed)
    finally:
        server.unregister(label)


def test_shadow_scores_live_traffic_beside_production_then_is_promoted(ws, server, versions, production):
    prod = server.default_version()
    candidate = versions[11]
    out = deploy(ws, candidate, CFG, server, smoke_ds=DS, reason="shadow test", shadow=True)
    assert out["shadow"]["shadow"] == candidate and server.default_version() == prod
    bodies = [sample_request(ws.data, DS, 300, seed=s) for s in range(5)]
    for b in bodies * 4:
        assert server.predict(b).json()["model_version"] == prod  # production answers
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        report = shadow_report(server)["versions"].get(candidate)
        if report and report["requests"] >= 10:
            break
        time.sleep(1)
    assert report and report["requests"] >= 10 and report["failed"] == 0, report
    assert 0.0 <= report["mean_overlap"] <= 1.0 and report["mean_rank_corr"] is not None
    assert report["shadow_worker_ms_p50"] > 0 and report["production_worker_ms_p50"] > 0
    pointer = promote_shadow(ws, CFG, server, "shadow looked right")
    assert pointer["version"] == candidate and pointer["previous"] == prod
    assert server.default_version() == candidate and shadow_report(server)["shadow"] is None
    assert {v["modelVersion"] for v in server.versions()} == {candidate, prod}
    events = [json.loads(x)["event"] for x in (ws.registry / "events.jsonl").read_text().splitlines()]
    assert events[-3:] == ["shadow_start", "set_production", "shadow_end"], events[-3:]


def test_archive_serves_with_its_own_code_in_an_environment_holding_only_torch(ws, versions, tmp_path):
    """The .mar unpacked next to nothing but torch and its own requirements (no site-packages, so no
    project, numpy or msgspec) answers exactly what the installed code answers."""
    version = versions[0]
    mar = build_archive(Registry(ws).version_dir(version), version, CFG, tmp_path / "store")
    model_dir = extract_archive(mar, tmp_path / "unpacked")
    site = _torch_only_site(tmp_path / "site")
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(site)}
    probe = "import importlib.util as u; print([m for m in ('hap', 'models', 'serving', 'numpy', 'msgspec') if u.find_spec(m)])"
    seen = subprocess.run([sys.executable, "-S", "-c", probe], env=env, cwd=model_dir, capture_output=True, text=True)
    assert seen.returncode == 0 and seen.stdout.strip() == "[]", (seen.stdout, seen.stderr[-3000:])
    clean = archive_runtime(model_dir, env=env, python_args=("-S",))
    assert clean["decoder"] == "json" and clean["version"] == version
    assert clean["runtime"]["code_sha256"] == json.loads((model_dir / "runtime.json").read_text())["code_sha256"]
    bodies = [sample_request(ws.data, DS, 200, seed=s) for s in range(3)]
    bodies += [columnar({**bodies[0], "k": 5, "m": 80}), {"user": {}, "candidates": []}]
    got = archive_answers(model_dir, bodies, env=env, python_args=("-S",))
    from hap_runtime.scorer import TwoStageScorer

    installed = TwoStageScorer(model_dir)
    for body, answer in zip(bodies[:-1], got, strict=False):
        want = installed(body)
        assert [it["item_id"] for it in answer["items"]] == [it["item_id"] for it in want["items"]]
        assert max(abs(a["score"] - w["score"]) for a, w in zip(answer["items"], want["items"], strict=True)) < 1e-5
    assert got[-1]["error"]["kind"] == "missing_field"


def _torch_only_site(dest: Path) -> Path:
    """A directory of links to torch and the distributions it requires, and nothing else."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement

    dest.mkdir(parents=True)
    todo, seen = ["torch"], set()
    while todo:
        dist = distribution(todo.pop())
        name = dist.metadata["Name"].lower()
        if name in seen:
            continue
        seen.add(name)
        for req in dist.requires or []:
            r = Requirement(req)
            if r.marker is None or r.marker.evaluate({"extra": ""}):
                todo.append(r.name)
        for top in {f.parts[0] for f in dist.files or [] if len(f.parts) > 1 or f.suffix == ".py"}:
            src = Path(dist.locate_file(top))
            if src.exists() and not top.endswith((".dist-info", ".data")) and top != "..":
                link = dest / top
                if not link.exists():
                    link.symlink_to(src)
    return dest


def test_a_failed_packaging_says_what_the_archiver_said(tmp_path, monkeypatch):
    """torch-model-archiver's own words reach the package step's error (the task log and the step
    record), not only its exit status. The archiver is the one beside ``sys.executable``: here a
    stand-in that fails the way a full disk does."""
    from hap_runtime.nets import PreRanker, save_model
    from hap_runtime.spec import DEFAULT_SPEC

    version_dir = tmp_path / "versions" / "20261001.1"
    cfg = HapConfig()
    save_model(PreRanker(cfg.light, DEFAULT_SPEC), version_dir / "light")
    save_model(PreRanker(cfg.expressive, DEFAULT_SPEC), version_dir / "expressive")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    archiver = bin_dir / "torch-model-archiver"
    archiver.write_text("#!/bin/sh\necho 'OSError: [Errno 28] No space left on device' >&2\nexit 1\n")
    archiver.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    with pytest.raises(RuntimeError, match=r"(?s)torch-model-archiver exited 1 packaging 20261001\.1:.*No space left"):
        build_archive(version_dir, "20261001.1", cfg, tmp_path / "store")
    assert not (tmp_path / "store" / mar_name("20261001.1")).exists()


def test_packaging_stages_in_its_own_temp_folder(tmp_path, monkeypatch):
    """torch-model-archiver stages in ``$TMPDIR/hap`` and deletes it first: in the machine's shared temp
    folder two packagings at once (two workspaces, a test run beside the daily run) deleted or mixed
    each other's files. Here the shared temp folder holds a ``hap`` that is not a folder, as a
    concurrent packaging's half-written one may be: the archive is built all the same, from its own."""
    import tempfile
    import zipfile

    from hap_runtime.nets import PreRanker, save_model
    from hap_runtime.spec import DEFAULT_SPEC

    shared = tmp_path / "shared-tmp"
    shared.mkdir()
    (shared / "hap").write_text("another packaging's leftovers")
    monkeypatch.setenv("TMPDIR", str(shared))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads $TMPDIR again
    cfg = HapConfig()
    version_dir = tmp_path / "versions" / "20261001.1"
    save_model(PreRanker(cfg.light, DEFAULT_SPEC), version_dir / "light")
    save_model(PreRanker(cfg.expressive, DEFAULT_SPEC), version_dir / "expressive")
    mar = build_archive(version_dir, "20261001.1", cfg, tmp_path / "store")
    with zipfile.ZipFile(mar) as z:
        assert any(n.endswith("light/weights.pt") for n in z.namelist())
    assert (shared / "hap").read_text() == "another packaging's leftovers"  # untouched


def test_a_clone_shifts_the_logit_bias_of_every_architecture_and_every_ensemble_member():
    """Deploy drills roll through clones whose scores move by a constant: for an ensemble every
    member's bias moves, so their mean moves by the same constant."""
    from hap_runtime.config import ModelConfig
    from hap_runtime.nets import build_model
    from hap_runtime.spec import DEFAULT_SPEC
    from serving.deploy import _logit_biases
    from serving.errors import DeployFailed

    for arch in ("interaction", "two_tower", "ranktower"):
        assert len(_logit_biases(build_model(ModelConfig(arch=arch), DEFAULT_SPEC).state_dict())) == 1
    state = build_model(ModelConfig(arch="two_tower", members=3), DEFAULT_SPEC).state_dict()
    assert _logit_biases(state) == [f"members.{i}.similarity.bias" for i in range(3)]
    with pytest.raises(DeployFailed, match="no logit bias"):
        _logit_biases({"embeddings.tables.user_id.weight": 0})
