import json
import math

from hap.gate import Threshold, decide, gate_run, load_policy

POLICY = {
    "light.auc.rank": Threshold(floor=0.6, max_drop=0.02, min_examples=100),
    "system.recall_at_m": Threshold(floor=0.3, max_drop=0.05, min_examples=10, count="system.n.requests"),
}
GOOD = {"light.auc.rank": 0.8, "light.n.rank": 500, "system.recall_at_m": 0.5, "system.n.requests": 50}


def test_first_model_is_judged_on_floors_alone():
    d = decide(GOOD, None, POLICY)
    assert d["passed"] and "floors only" in d["basis"]
    assert not decide({**GOOD, "light.auc.rank": 0.55}, None, POLICY)["passed"]


def test_drop_against_production_fails_and_names_the_slice():
    d = decide({**GOOD, "light.auc.rank": 0.77}, {**GOOD}, POLICY)
    assert not d["passed"]
    assert "light.auc.rank" in d["reason"] and "dropped" in d["reason"]
    assert decide({**GOOD, "light.auc.rank": 0.79}, GOOD, POLICY)["passed"]


def test_small_slices_are_skipped_and_nan_fails():
    d = decide({**GOOD, "light.n.rank": 5, "light.auc.rank": 0.1}, None, POLICY)
    assert d["passed"]
    assert next(c for c in d["checks"] if c["metric"] == "light.auc.rank")["status"] == "skipped"
    assert not decide({**GOOD, "system.recall_at_m": math.nan}, None, POLICY)["passed"]


def test_gate_run_writes_json_and_report(tmp_path):
    evaluation = {"holdout": {"ds": "2026-11-22"}, "candidate": GOOD, "production": None}
    (tmp_path / "evaluation.json").write_text(json.dumps(evaluation))
    policy = tmp_path / "policy.yaml"
    policy.write_text("metrics:\n  light.auc.rank: {floor: 0.9, max_drop: 0.01, min_examples: 1}\n")
    d = gate_run(tmp_path, policy)
    assert not d["passed"]
    assert json.loads((tmp_path / "decision.json").read_text())["passed"] is False
    assert "| light.auc.rank | 0.8000 |" in (tmp_path / "decision.md").read_text()


def test_default_policy_covers_every_slice():
    names = set(load_policy())
    for s in ("overall", "expose", "rank", "prerank", "global"):
        assert f"light.auc.{s}" in names
    assert "system.recall_at_m" in names
