import json
import math

from hap.gate import Policy, Threshold, decide, gate_run, load_policy

POLICY = Policy(
    {
        "light.auc.rank": Threshold(floor=0.6, max_drop=0.02, min_examples=100),
        "system.recall_at_m": Threshold(floor=0.3, max_drop=0.0, min_examples=10, count="system.n.requests"),
        "system.flops_per_request": Threshold(ceiling=6e7),
    }
)
GOOD = {
    "light.auc.rank": 0.8,
    "light.n.rank": 500,
    "system.recall_at_m": 0.5,
    "system.n.requests": 50,
    "system.flops_per_request": 5.4e7,
}


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
    names = set(load_policy().metrics)
    for s in ("overall", "expose", "rank", "prerank", "global"):
        assert f"light.auc.{s}" in names
    assert {"system.recall_at_m", "system.flops_per_request"} <= names
    assert load_policy().metrics["system.flops_per_request"].ceiling < 7.55e7  # below expressive-on-all


def test_compute_budget_fails_an_over_budget_candidate():
    d = decide({**GOOD, "system.flops_per_request": 7.5e7}, None, POLICY)
    assert not d["passed"] and "system.flops_per_request" in d["reason"] and "budget" in d["reason"]


def test_recall_must_not_regress_beyond_noise():
    worse = {**GOOD, "system.recall_at_m": 0.48}
    assert not decide(worse, GOOD, POLICY)["passed"]  # no intervals: any drop fails
    assert not decide(worse, GOOD, POLICY, {"system.recall_at_m": [-0.04, -0.005]})["passed"]
    noisy = decide(worse, GOOD, POLICY, {"system.recall_at_m": [-0.05, 0.01]})
    assert noisy["passed"] and "within noise" in noisy["checks"][1]["why"]


def test_insignificant_drops_can_be_made_to_fail_by_policy():
    strict = Policy(POLICY.metrics, significant_drops=False)
    worse = {**GOOD, "light.auc.rank": 0.75}
    assert not decide(worse, GOOD, strict, {"light.auc.rank": [-0.09, 0.01]})["passed"]
