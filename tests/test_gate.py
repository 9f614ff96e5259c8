import json
import math

from registry.gate import Policy, Threshold, decide, gate_run, load_policy

POLICY = Policy(
    {
        "light.auc.rank": Threshold(floor=0.6, max_drop=0.02, min_examples=100),
        "system.value": Threshold(floor=0.3, max_drop=0.0, min_examples=10, count="system.n.requests"),
        "system.flops_share": Threshold(ceiling=0.5),
        "system.lift": Threshold(not_below_zero=True, min_examples=10, count="system.n.requests"),
        "expressive_vs_light.auc.rank": Threshold(not_below_zero=True, when_routed=True, min_examples=100),
    }
)
GOOD = {
    "light.auc.rank": 0.8,
    "light.n.rank": 500,
    "system.value": 0.5,
    "system.n.requests": 50,
    "system.flops_share": 0.3,
    "system.k": 100,
    "system.lift": 0.01,
    "expressive_vs_light.auc.rank": 0.02,
    "expressive_vs_light.n.rank": 500,
}


def test_first_model_is_judged_on_floors_alone():
    d = decide(GOOD, None, POLICY)
    assert d["passed"] and "no production model yet" in d["basis"]
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
    assert not decide({**GOOD, "system.value": math.nan}, None, POLICY)["passed"]


def test_gate_run_writes_json_and_report(tmp_path):
    evaluation = {"holdout": {"ds": "2026-11-22"}, "candidate": GOOD, "production": None}
    (tmp_path / "evaluation.json").write_text(json.dumps(evaluation))
    policy = tmp_path / "policy.yaml"
    policy.write_text("metrics:\n  light.auc.rank: {floor: 0.9, max_drop: 0.01, min_examples: 1}\n")
    d = gate_run(tmp_path, policy)
    assert not d["passed"]
    assert json.loads((tmp_path / "decision.json").read_text())["passed"] is False
    assert "| light.auc.rank | 0.8000 |" in (tmp_path / "decision.md").read_text()


def test_default_policy_covers_every_slice_and_the_routing_rules():
    policy = load_policy()
    names = set(policy.metrics)
    for s in ("overall", "expose", "rank", "prerank", "global"):
        assert f"light.auc.{s}" in names
    assert {"system.value", "system.flops_share", "system.lift"} <= names
    assert {"expressive_vs_light.auc.expose", "expressive_vs_light.auc.rank"} <= names
    assert policy.metrics["system.flops_share"].ceiling < 1.0  # below the uniform expressive model
    # no absolute floor tuned to one world: at most "better than chance"
    assert all(th.floor <= 0.5 for th in policy.metrics.values())


def test_compute_budget_fails_an_over_budget_candidate():
    d = decide({**GOOD, "system.flops_share": 0.9}, None, POLICY)
    assert not d["passed"] and "system.flops_share" in d["reason"] and "budget" in d["reason"]


def test_system_metric_must_not_regress_beyond_noise():
    worse = {**GOOD, "system.value": 0.48}
    assert not decide(worse, GOOD, POLICY)["passed"]  # no intervals: any drop fails
    assert not decide(worse, GOOD, POLICY, {"system.value": [-0.04, -0.005]})["passed"]
    noisy = decide(worse, GOOD, POLICY, {"system.value": [-0.05, 0.01]})
    assert noisy["passed"] and "within noise" in noisy["checks"][1]["why"]


def test_two_stage_below_light_alone_is_refused_only_beyond_noise():
    harmful = {**GOOD, "system.lift": -0.01}
    d = decide(harmful, None, POLICY, own_intervals={"system.lift": [-0.02, -0.003]})
    assert not d["passed"] and "system.lift" in d["reason"] and "below 0" in d["reason"]
    assert decide(harmful, None, POLICY, own_intervals={"system.lift": [-0.02, 0.004]})["passed"]


def test_expressive_below_light_on_its_scope_is_refused_when_it_serves():
    worse = {**GOOD, "expressive_vs_light.auc.rank": -0.03}
    ci = {"expressive_vs_light.auc.rank": [-0.05, -0.01]}
    d = decide(worse, None, POLICY, own_intervals=ci)
    assert not d["passed"] and "expressive_vs_light.auc.rank" in d["reason"]
    light_only = decide({**worse, "system.k": 0}, None, POLICY, own_intervals=ci)  # K = 0: not served
    assert light_only["passed"]
    row = next(c for c in light_only["checks"] if c["metric"] == "expressive_vs_light.auc.rank")
    assert row["status"] == "skipped" and "K = 0" in row["why"]


def test_relative_floor_against_the_first_accepted_run():
    policy = Policy({"light.auc.rank": Threshold(floor=0.5, max_drop_vs_first=0.03, min_examples=1)})
    first = {"light.auc.rank": 0.85}
    assert decide({**GOOD, "light.auc.rank": 0.83}, None, policy, first=first)["passed"]
    d = decide({**GOOD, "light.auc.rank": 0.80}, None, policy, first=first)
    assert not d["passed"] and "first accepted run" in d["reason"]


def test_insignificant_drops_can_be_made_to_fail_by_policy():
    strict = Policy(POLICY.metrics, significant_drops=False)
    worse = {**GOOD, "light.auc.rank": 0.75}
    assert not decide(worse, GOOD, strict, {"light.auc.rank": [-0.09, 0.01]})["passed"]
