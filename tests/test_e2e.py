"""The whole flow through the real parts: Airflow ``dag.test()``, the KFP local runner, Great
Expectations and a real ``torchserve`` on 127.0.0.1 with token auth."""

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pytest

from hap.contract import partition_dir, read_partition, write_partition
from registry.store import Registry
from serving.deploy import sample_request
from serving.server import LocalTorchServe
from workflow.airflow_local import run_day
from workflow.status import day_outcome

pytestmark = pytest.mark.slow

FIRST, GATE_FAIL, CORRUPT = "2026-11-22", "2026-11-23", "2026-11-24"
V1, V2 = "20261122.1", "20261123.1"  # versions are content-addressed per day: a rerun gives the same one


@pytest.fixture(scope="module")
def ws(tmp_path_factory, simulated_workspace):
    with simulated_workspace(tmp_path_factory.mktemp("e2e"), "2026-11-20", 5) as ws:
        yield ws


@pytest.fixture(scope="module")
def server(ws):
    return LocalTorchServe(ws.serving)


@pytest.fixture(scope="module")
def first_day(ws, server):
    """Day 1 run once for the module (the shipped gate policy: no production yet, so only floors and
    the routing rules apply): its task states. Every test depends on it, so each runs alone too."""
    return run_under_shipped_policy(FIRST, ws)


def run_under_shipped_policy(ds: str, ws) -> dict:
    """The daily DAG for ``ds`` judged by configs/gate_policy.yaml, whatever ``HAP_GATE_POLICY`` says."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("HAP_GATE_POLICY", raising=False)
        return run_day(ds, ws)


def deploy_day_one(ws) -> None:
    """Make day 1's version production and TorchServe's default again, unless it already is."""
    from workflow.flow import deploy

    server = LocalTorchServe(ws.serving)
    if (Registry(ws).production() or {}).get("version") != V1 or not server.is_running() or \
            server.default_version() != V1:  # fmt: skip
        deploy(FIRST, V1, ws)


@pytest.fixture
def day_one_serving(ws, server, first_day):
    """Day 1's version is production in the registry and TorchServe's default, whatever an earlier
    test deployed or stopped (a no-op in file order, where each test leaves it so)."""
    assert first_day["deploy"] == "success", first_day
    deploy_day_one(ws)
    assert Registry(ws).production()["version"] == server.default_version() == V1
    return V1


@dataclass(frozen=True)
class DayRun:
    """A run's task states and what served right after it (later tests may deploy something else)."""

    states: dict
    production: dict | None
    default_version: str | None
    answered_by: str | None  # the model_version of a request sent right after the run


@pytest.fixture(scope="module")
def second_day(ws, server, first_day):
    """Day 2 run once for the module under the shipped gate policy, judged against day 1 in
    production: its task states and what served after it. Later tests re-gate this run instead of
    training it again."""
    assert first_day["deploy"] == "success", first_day
    deploy_day_one(ws)
    states = run_under_shipped_policy(GATE_FAIL, ws)
    answer = server.predict(sample_request(ws.data, GATE_FAIL, 50))
    assert answer.status_code == 200, answer.text
    return DayRun(states, Registry(ws).production(), server.default_version(), answer.json()["model_version"])


def test_daily_run_validates_trains_gates_and_serves(ws, server, first_day):
    assert first_day == {
        "wait_for_partition": "success", "validate": "success", "train": "success", "gate": "success",
        "package": "success", "promote": "success", "deploy": "success", "report": "success", "dag_run": "success",
    }  # fmt: skip
    version = json.loads((ws.run_dir(FIRST) / "promotion.json").read_text())["version"]  # what the run produced
    assert version == V1 == Registry(ws).production()["version"]
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

    # the archive carries the window's item snapshot: the same items by id alone, and an id outside it
    ids = [c["item_id"] for c in body["candidates"]]
    by_id = server.predict({"user": body["user"], "item_ids": ids})
    assert by_id.status_code == 200, by_id.text
    assert by_id.json()["n_candidates"] == 500 and {it["item_id"] for it in by_id.json()["items"]} <= set(ids)
    refused = server.predict({"user": body["user"], "item_ids": [ids[0], 10**15]})
    assert refused.status_code == 400 and refused.json()["kind"] == "unknown_item", refused.text
    assert refused.json()["field"] == "item_ids[1]"


def test_rerunning_a_day_creates_no_duplicates(ws, server, day_one_serving):
    weights = (ws.run_dir(FIRST) / "light" / "weights.pt").read_bytes()
    assert run_day(FIRST, ws)["dag_run"] == "success"
    # production is now the day's own version: the models are kept byte for byte and judged again
    lineage = json.loads((ws.run_dir(FIRST) / "lineage.json").read_text())
    assert "reevaluated" in lineage and lineage["production_at_training"]["version"] == V1, lineage
    assert (ws.run_dir(FIRST) / "light" / "weights.pt").read_bytes() == weights
    evaluation = json.loads((ws.run_dir(FIRST) / "evaluation.json").read_text())
    assert evaluation["production_version"] == V1 and evaluation["production"] is not None  # replayed
    assert json.loads((ws.run_dir(FIRST) / "promotion.json").read_text())["version"] == V1  # same content, same version
    assert [m["version"] for m in Registry(ws).versions() if m["ds"] == FIRST] == [V1]
    assert len(list((ws.root / "runs").glob(f"ds={FIRST}*"))) == 1
    assert [p.name for p in server.model_store.glob("hap-20261122.*.mar")] == [f"hap-{V1}.mar"]
    assert [v["modelVersion"] for v in server.versions() if v["modelVersion"].startswith("20261122.")] == [V1]
    assert Registry(ws).production()["version"] == server.default_version() == V1


def test_gate_failure_skips_package_and_deploy(ws, server, second_day, tmp_path, monkeypatch):
    """A failed gate stops the DAG before package: nothing registered, production unchanged. Day 2's
    run under the shipped policy is that case when it fails; when it passes, a stricter policy makes
    it, and the shipped run's records are put back for the tests that read them."""
    states = second_day.states
    run_dir = ws.run_dir(GATE_FAIL)
    decision = json.loads((run_dir / "decision.json").read_text())
    registered = [m["version"] for m in Registry(ws).versions() if m["ds"] == GATE_FAIL]
    assert registered == ([V2] if decision["passed"] else []), registered
    if decision["passed"]:  # then fail it with a policy no model meets, through the DAG again
        shipped = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
        strict = tmp_path / "strict.yaml"
        strict.write_text("metrics:\n  light.auc.overall: {floor: 0.999, max_drop: 0.0, min_examples: 1}\n")
        monkeypatch.setenv("HAP_GATE_POLICY", str(strict))
        deploy_day_one(ws)
        try:
            states = run_day(GATE_FAIL, ws)
            decision = json.loads((run_dir / "decision.json").read_text())
            promoted = (run_dir / "promotion.json").exists()
        finally:
            for name, content in shipped.items():
                (run_dir / name).write_bytes(content)
        assert "light.auc.overall" in decision["reason"]
    else:
        promoted = (run_dir / "promotion.json").exists()
    assert not promoted
    assert states["gate"] == "skipped" and states["dag_run"] == "success", states  # the refusal shows in the grid
    assert states["package"] == states["promote"] == states["deploy"] == "skipped", states
    assert not decision["passed"]
    outcome = day_outcome(ws, GATE_FAIL, states)  # what `hap run-day` says last, and its exit code
    assert outcome.state == "refused" and outcome.exit_code == 3 and outcome.serving == V1, outcome
    assert decision["reason"][:60] in outcome.line()
    assert [m["version"] for m in Registry(ws).versions() if m["ds"] == GATE_FAIL] == registered  # none added
    assert Registry(ws).production()["version"] == server.default_version() == V1


def test_the_shipped_policy_judges_the_second_day_against_production(ws, server, second_day):
    """The shipped gate policy (configs/gate_policy.yaml), unmodified, judges day 2's model against
    day 1's in production: every rule is evaluated with production's figures, the paired-bootstrap
    interval of each delta is recorded, and the deploy follows the decision, whichever it is."""
    import math

    import yaml

    from registry.gate import DEFAULT_POLICY

    shipped = yaml.safe_load(DEFAULT_POLICY.read_text())["metrics"]
    states = second_day.states
    decision = json.loads((ws.run_dir(GATE_FAIL) / "decision.json").read_text())
    assert states["gate"] == ("success" if decision["passed"] else "skipped") and states["dag_run"] == "success"
    evaluation = json.loads((ws.run_dir(GATE_FAIL) / "evaluation.json").read_text())
    assert decision["production_version"] == evaluation["production_version"] == V1
    assert evaluation["first_accepted"]["version"] == V1
    checks = {c["metric"]: c for c in decision["checks"]}
    assert list(checks) == list(shipped)  # the shipped policy's rules, all of them, nothing else
    for metric, rule in shipped.items():
        c = checks[metric]
        # judged, not skipped: enough held-out examples per slice, and the run routes (K > 0)
        assert c["status"] in ("pass", "fail"), c
        assert c["production"] is not None and math.isfinite(c["production"]), c
        assert c["production"] == evaluation["production"][metric] and c["candidate"] == evaluation["candidate"][metric]
        assert c["delta"] == pytest.approx(c["candidate"] - c["production"]), c
        if "max_drop" in rule:  # a drop vs production is judged against its paired 95% interval
            lo, hi = c["delta_ci95"]
            assert lo <= hi and c["delta_ci95"] == evaluation["delta_ci95"][metric], c
            # the anchor (V1, also production here) is replayed on day 2's requests: the same figures
            assert c["first"] == evaluation["first_accepted"]["metrics"][metric] == c["production"], c
            assert c["first_delta_ci95"] == evaluation["first_accepted"]["delta_ci95"][metric] == c["delta_ci95"], c
        if rule.get("not_below_zero"):
            lo, hi = c["own_ci95"]
            assert lo <= hi and c["own_ci95"] == evaluation["candidate_ci95"][metric], c
        if c["status"] == "fail":
            assert metric in decision["reason"], (metric, decision["reason"])
    failed = [m for m, c in checks.items() if c["status"] == "fail"]
    assert decision["passed"] == (not failed), (failed, decision["reason"])

    if decision["passed"]:
        assert states["package"] == states["promote"] == states["deploy"] == "success", states
        version = json.loads((ws.run_dir(GATE_FAIL) / "promotion.json").read_text())["version"]
        assert version == V2 == second_day.default_version == second_day.answered_by
        assert second_day.production["version"] == V2 and second_day.production["previous"] == V1, second_day
    else:
        assert states["package"] == states["promote"] == states["deploy"] == "skipped", states
        assert [m["version"] for m in Registry(ws).versions() if m["ds"] == GATE_FAIL] == []
        assert second_day.production["version"] == second_day.default_version == second_day.answered_by == V1


def test_corrupted_partition_stops_at_validation_and_is_kept(ws, server, day_one_serving, page_text):
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
    assert Registry(ws).production()["version"] == V1
    assert server.predict(sample_request(ws.data, FIRST, 50)).json()["model_version"] == V1
    # on-call sees it at a glance: the run failed at validate, the day is quarantined with its first failed
    # expectation, the alert stays open, `hap status` exits 1; the day's report was still built (a teardown)
    assert states["report"] == "success"
    status = hap_status(ws)
    assert status["exit"] == 1
    run = next(r for r in status["runs"] if r["ds"] == CORRUPT)
    assert run["state"] == "failed" and run["summary"].startswith("failed at validate")
    assert run["steps"]["validate"]["state"] == "failed" and "train" not in run["steps"]
    (day,) = [q for q in status["quarantined"] if q["ds"] == CORRUPT]
    assert day["status"] == "quarantined" and "click" in day["first_failure"], day
    assert any(a["task_id"] == "validate" and a["ds"] == CORRUPT for a in status["alerts"])
    assert any(f"latest run (ds={CORRUPT}) failed at validate" in a for a in status["attention"])
    page = page_text((ws.report_dir(CORRUPT) / "index.html").as_uri())
    assert "FAILED: failed at validate" in page and "no data recorded" in page, page[:1500]


def hap_status(ws) -> dict:
    """``hap status --json`` run as on-call would, with its exit code under ``exit``."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "workflow.cli", "--home", str(ws.root), "status", "--json"],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode in (0, 1) and proc.stdout.startswith("{"), proc.stderr[-3000:]
    return {**json.loads(proc.stdout), "exit": proc.returncode}


def test_status_and_report_show_two_days_from_data_to_serving(ws, server, second_day, day_one_serving, page_text):
    """Day 1 deployed, day 2 trained and stopped at the gate: `hap status` and day 2's report (built by
    the DAG's report task) show what serves, since when, why, its lineage, both runs' steps, and every
    figure and table, opened in a real headless browser."""
    status = hap_status(ws)
    prod = status["serving"]
    assert prod["version"] == V1 and prod["ds"] == FIRST and prod["k"] is not None
    assert prod["live"]["default"] == V1 and prod["live"]["healthy"]
    assert prod["by"].startswith("airflow hap_daily/") or "hap CLI" in prod["by"]
    lineage = prod["lineage"]
    head = subprocess_out(["git", "rev-parse", "HEAD"])
    assert lineage["code"]["commit"] == head
    assert lineage["trained_days"] == ["2026-11-20", "2026-11-21", FIRST]
    assert [d["ds"] for d in lineage["data"]] == ["2026-11-20", "2026-11-21", FIRST]
    assert all(len(d["candidates"]["sha256"]) == 16 and d["validation"] == "passed" for d in lineage["data"])
    assert len(lineage["config_sha256"]) == 16 and len(lineage["gate_policy"]["sha256"]) == 16
    assert {"torch", "kfp", "apache-airflow", "great-expectations"} <= set(lineage["libraries"])
    runs = {r["ds"]: r for r in status["runs"]}
    assert runs[FIRST]["steps"]["deploy"]["state"] == "success" and runs[FIRST]["steps"]["train"]["state"] == "success"
    day2 = runs[GATE_FAIL]
    assert [n for n in ("validate", "train", "gate", "report") if day2["steps"][n]["state"] == "success"] == [
        "validate", "train", "gate", "report"]  # fmt: skip
    gate_passed = json.loads((ws.run_dir(GATE_FAIL) / "decision.json").read_text())["passed"]
    assert day2["steps"]["gate"]["outcome"].startswith("PASS" if gate_passed else "FAIL")
    assert day2["report"] == (ws.report_dir(GATE_FAIL) / "index.html").as_uri()

    page_file = ws.report_dir(GATE_FAIL) / "index.html"
    html = page_file.read_text()
    from workflow.report import FIGURES, TABLES

    for name in FIGURES:
        assert f'id="fig-{name}"><img' in html, name  # a plot, not the "no plot" placeholder
    for name in TABLES:
        assert f'<table id="table-{name}">' in html, name  # a table with rows, not "no data"
    text = page_text(page_file.as_uri())
    assert f"plots rendered: {len(FIGURES)}/{len(FIGURES)}" in text, text[:1500]
    for heading in ("At a glance", f"Steps of ds={GATE_FAIL}", "Lineage: from data to the serving version",
                    "Held-out AUC by difficulty slice", "Against its own features", "Gate: ", "System metric against FLOPs across K",
                    "Validation statistics against their bands", "Gradient conflict during training",
                    "Deploys and rollbacks"):  # fmt: skip
        assert heading in text, heading
    assert f"{FIRST} overall" in text and f"{GATE_FAIL} overall" in text  # AUC per slice over both days
    assert "production version" in text and V1 in text  # day 2 judged against day 1 in production
    assert f"Serving chain (newest first): {V1}" in text and head in text
    assert "expose|global" in text  # gradient-conflict cosines of the light model's sources
    assert f"deploy {V1}" in text  # the timeline's table
    index = (ws.registry / "index.md").read_text()
    assert f"../reports/ds={FIRST}/index.html" in index
    # the Airflow UI's links on the day's tasks: computed by the worker as each task ended, kept as XComs
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from workflow.links import data_docs_url, report_url

    with create_session() as session:
        rows = session.query(XComModel).filter(XComModel.dag_id == "hap_daily", XComModel.key.like("_link_%")).all()
        links = {(r.task_id, XComModel.deserialize_value(r)) for r in rows}
    assert ("validate", report_url(GATE_FAIL)) in links and ("deploy", report_url(FIRST)) in links, links
    assert ("validate", data_docs_url(GATE_FAIL)) in links
    assert (
        data_docs_url(GATE_FAIL)
        == f"{ws.validation_dir(GATE_FAIL).as_uri()}/gx/uncommitted/data_docs/local_site/index.html"
    )


def subprocess_out(cmd: list[str]) -> str:
    import subprocess
    from pathlib import Path

    return subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=Path(__file__).parent).stdout.strip()


def test_a_version_that_cannot_load_is_unregistered_and_serving_is_unchanged(ws, server, day_one_serving):
    """A broken archive fails at register/smoke; the new version is removed, the old one serves."""
    import shutil

    from serving.errors import DeployFailed
    from workflow.flow import deploy

    registry = Registry(ws)
    broken = registry.version_dir("20261124.9")
    shutil.copytree(registry.version_dir(V1), broken)
    (broken / "light" / "weights.pt").write_bytes(b"not a checkpoint")
    try:
        with pytest.raises(DeployFailed, match=f"still serving {V1}"):
            deploy("2026-11-22", "20261124.9", ws)
        assert "20261124.9" not in [v["modelVersion"] for v in server.versions()]
        assert server.default_version() == V1
        assert Registry(ws).production()["version"] == V1
    finally:
        shutil.rmtree(broken)


def test_second_day_deploys_then_rollback_restores_the_previous_version(
    ws, server, second_day, day_one_serving, lenient_policy, monkeypatch
):
    from workflow.cli import main

    # This test is about rollback, not the gate (the shipped policy judges this same run in
    # test_the_shipped_policy_judges_the_second_day_against_production, and test_gate.py): a
    # floors-only policy passes day 2's trained run whatever its margin, and the CLI's steps
    # (`hap gate`, `hap package`, `hap deploy`) take it from there without training it again.
    monkeypatch.setenv("HAP_GATE_POLICY", str(lenient_policy))
    home = ["--home", str(ws.root)]
    assert main([*home, "gate", "--ds", GATE_FAIL]) == 0
    assert main([*home, "package", "--ds", GATE_FAIL]) == 0
    assert main([*home, "deploy", "--ds", GATE_FAIL, "--version", V2]) == 0
    new = Registry(ws).production()
    assert new["version"] == V2 and new["previous"] == V1
    assert server.default_version() == V2
    assert main(["--home", str(ws.root), "rollback", "--reason", "on-call: CTR dip"]) == 0
    pointer = Registry(ws).production()
    assert pointer["version"] == V1 and "CTR dip" in pointer["reason"]
    assert server.default_version() == V1
    # production plus the version rolled back from (kept warm to roll forward), nothing else
    assert {v["modelVersion"] for v in server.versions()} == {V1, V2}
    assert server.predict(sample_request(ws.data, FIRST, 50)).json()["model_version"] == V1


def test_restarted_torchserve_comes_back_serving_production(ws, server, day_one_serving):
    from workflow.cli import main

    server.stop()
    assert not server.is_running()
    assert server.busy_ports() == []  # stop returns once the JVM is gone, not when its pid file is
    assert main(["--home", str(ws.root), "serve", "start"]) == 0
    assert server.default_version() == Registry(ws).production()["version"] == V1
    assert server.predict(sample_request(ws.data, FIRST, 20)).status_code == 200
