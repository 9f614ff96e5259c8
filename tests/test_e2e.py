"""The whole flow through the real parts: Airflow ``dag.test()``, the KFP local runner, Great
Expectations and a real ``torchserve`` on 127.0.0.1 with token auth."""

import json

import numpy as np
import pyarrow as pa
import pytest

from hap.airflow_local import run_day
from hap.contract import partition_dir, read_partition, write_partition
from hap.registry import Registry
from serving.archive import MODEL_NAME
from serving.deploy import sample_request
from serving.server import LocalTorchServe

pytestmark = pytest.mark.slow

FIRST, GATE_FAIL, CORRUPT = "2026-11-22", "2026-11-23", "2026-11-24"


@pytest.fixture(scope="module")
def ws(tmp_path_factory, simulated_workspace):
    with simulated_workspace(tmp_path_factory.mktemp("e2e"), "2026-11-20", 5) as ws:
        yield ws


@pytest.fixture(scope="module")
def server(ws):
    return LocalTorchServe(ws.serving)


def test_daily_run_validates_trains_gates_and_serves(ws, server):
    states = run_day(FIRST, ws)
    assert states == {
        "wait_for_partition": "success", "validate": "success", "train": "success", "gate": "success",
        "package": "success", "promote": "success", "deploy": "success", "dag_run": "success",
    }  # fmt: skip
    version = Registry(ws).production()["version"]
    assert version == "20261122.1"
    evaluation = json.loads((ws.run_dir(FIRST) / "evaluation.json").read_text())
    assert evaluation["holdout"]["days"] == ["2026-11-20", "2026-11-21", FIRST]  # whole window validated
    for s in ("overall", "expose", "rank", "prerank", "global"):
        assert 0.5 < evaluation["candidate"][f"light.auc.{s}"] <= 1.0
    assert json.loads((ws.run_dir(FIRST) / "decision.json").read_text())["passed"]

    body = sample_request(ws.data, FIRST, 500, seed=5)
    resp = server.predict(body)
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["model_version"] == version and answer["n_candidates"] == 500
    assert [it["rank"] for it in answer["items"]] == list(range(1, 51))
    k = evaluation["routing"]["k"]  # chosen per run on held-out requests at serving ratios
    assert answer["k"] == k == evaluation["candidate"]["system.k"]  # the archive serves the chosen K
    assert {it["stage"] for it in answer["items"]} == ({"expressive"} if k >= 50 else {"light"} if k == 0 else
                                                       {"expressive", "light"})  # fmt: skip
    report = (ws.run_dir(FIRST) / "decision.md").read_text()
    assert f"## Routing: K = {k}" in report and "lift vs light alone" in report
    assert server.default_version() == version


def test_token_auth_is_on(ws, server):
    """A valid request without the token, or with a wrong one, is refused by TorchServe's auth (not
    by our parser); the same request with the inference key is answered."""
    import requests

    body = sample_request(ws.data, FIRST, 20, seed=2)
    url = f"{server.inference_url}/predictions/{MODEL_NAME}"
    for headers in (
        {},
        {"Authorization": "Bearer not-the-key"},
        {"Authorization": f"Bearer {server.keys.key('management')}"},
    ):
        r = requests.post(url, json=body, headers=headers, timeout=10)
        assert r.status_code in (400, 401) and "InvalidKeyException" in r.text, (headers, r.status_code, r.text)
    r = requests.get(f"{server.management_url}/models", timeout=10)
    assert r.status_code in (400, 401) and "InvalidKeyException" in r.text
    assert server.predict(body).status_code == 200


def test_rerunning_a_day_creates_no_duplicates(ws, server):
    assert run_day(FIRST, ws)["dag_run"] == "success"
    assert [m["version"] for m in Registry(ws).versions()] == ["20261122.1"]
    assert sorted(p.name for p in (ws.root / "runs").iterdir()) == [f"ds={FIRST}"]
    assert [p.name for p in server.model_store.glob("*.mar")] == ["hap-20261122.1.mar"]
    assert [v["modelVersion"] for v in server.versions()] == ["20261122.1"]


def test_gate_failure_skips_package_and_deploy(ws, server, tmp_path, monkeypatch):
    strict = tmp_path / "strict.yaml"
    strict.write_text("metrics:\n  light.auc.overall: {floor: 0.999, max_drop: 0.0, min_examples: 1}\n")
    monkeypatch.setenv("HAP_GATE_POLICY", str(strict))
    states = run_day(GATE_FAIL, ws)
    assert states["gate"] == "success"
    assert states["package"] == states["promote"] == states["deploy"] == "skipped"
    decision = json.loads((ws.run_dir(GATE_FAIL) / "decision.json").read_text())
    assert not decision["passed"] and "light.auc.overall" in decision["reason"]
    assert Registry(ws).production()["version"] == "20261122.1"
    assert server.default_version() == "20261122.1"


def test_corrupted_partition_stops_at_validation_and_is_kept(ws, server):
    cand = read_partition(ws.data, "candidates", CORRUPT)
    click = cand["click"].to_numpy().copy()
    click[np.asarray(cand["source"]) == "global"] = 1
    write_partition(ws.data, "candidates", CORRUPT, cand.set_column(cand.schema.get_field_index("click"), "click",
                                                                   pa.array(click, pa.int8())))  # fmt: skip
    states = run_day(CORRUPT, ws)
    assert states["validate"] == "failed" and states["dag_run"] == "failed"
    assert all(states[t] == "upstream_failed" for t in ("train", "gate", "package", "promote", "deploy"))
    assert ws.validation_status(CORRUPT) == "quarantined"
    assert (partition_dir(ws.data, "candidates", CORRUPT) / "part-0.parquet").exists()
    assert not ws.run_dir(CORRUPT).exists()
    assert Registry(ws).production()["version"] == "20261122.1"
    assert server.predict(sample_request(ws.data, FIRST, 50)).json()["model_version"] == "20261122.1"


def test_a_version_that_cannot_load_is_unregistered_and_serving_is_unchanged(ws, server):
    """A broken archive fails at register/smoke; the new version is removed, the old one serves."""
    import shutil

    from hap.flow import deploy
    from serving.errors import DeployFailed

    registry = Registry(ws)
    broken = registry.version_dir("20261124.9")
    shutil.copytree(registry.version_dir("20261122.1"), broken)
    (broken / "light" / "weights.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DeployFailed, match="still serving 20261122.1"):
        deploy("2026-11-22", "20261124.9", ws)
    assert "20261124.9" not in [v["modelVersion"] for v in server.versions()]
    assert server.default_version() == "20261122.1"
    assert Registry(ws).production()["version"] == "20261122.1"
    shutil.rmtree(broken)


def test_second_day_deploys_then_rollback_restores_the_previous_version(ws, server, lenient_policy, monkeypatch):
    from hap.cli import main

    # This test is about rollback, not the gate (tested above and in test_gate.py): a floors-only
    # policy keeps it independent of how close the second day's model lands to production.
    monkeypatch.setenv("HAP_GATE_POLICY", str(lenient_policy))
    assert run_day(GATE_FAIL, ws)["deploy"] == "success"
    new = Registry(ws).production()
    assert new["version"] == "20261123.1" and new["previous"] == "20261122.1"
    assert server.default_version() == "20261123.1"
    assert main(["--home", str(ws.root), "rollback", "--reason", "on-call: CTR dip"]) == 0
    pointer = Registry(ws).production()
    assert pointer["version"] == "20261122.1" and "CTR dip" in pointer["reason"]
    assert server.default_version() == "20261122.1"
    # production plus the version rolled back from (kept warm to roll forward), nothing else
    assert {v["modelVersion"] for v in server.versions()} == {"20261122.1", "20261123.1"}
    assert server.predict(sample_request(ws.data, FIRST, 50)).json()["model_version"] == "20261122.1"


def test_restarted_torchserve_comes_back_serving_production(ws, server):
    from hap.cli import main

    server.stop()
    assert not server.is_running()
    assert main(["--home", str(ws.root), "serve", "start"]) == 0
    assert server.default_version() == Registry(ws).production()["version"] == "20261122.1"
    assert server.predict(sample_request(ws.data, FIRST, 20)).status_code == 200
