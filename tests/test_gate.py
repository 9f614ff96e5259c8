import json
import math

import pytest

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
    assert "replayed" not in d["basis"]  # nothing was replayed: the basis does not say so
    assert "replayed on today's requests" in decide(GOOD, GOOD, POLICY)["basis"]
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
    assert "| light.auc.rank | decides | 0.8000 |" in (tmp_path / "decision.md").read_text()


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


def test_the_first_accepted_version_is_a_paired_reference_like_production():
    """The anchor's figures are its models replayed on the candidate's requests: a drop beyond
    ``max_drop_vs_first`` fails only when the paired interval of (candidate − anchor) lies below 0."""
    policy = Policy({"light.auc.rank": Threshold(floor=0.5, max_drop_vs_first=0.03, min_examples=1)})
    first = {"light.auc.rank": 0.85}
    assert decide({**GOOD, "light.auc.rank": 0.83}, None, policy, first=first)["passed"]
    significant = {"light.auc.rank": [-0.07, -0.02]}
    d = decide({**GOOD, "light.auc.rank": 0.80}, None, policy, first=first, first_intervals=significant)
    assert not d["passed"] and "first accepted version" in d["reason"] and "-0.0700..-0.0200" in d["reason"]
    row = d["checks"][0]
    assert row["first"] == 0.85 and row["first_delta_ci95"] == significant["light.auc.rank"]
    assert row["first_delta"] == pytest.approx(0.80 - 0.85)
    noisy = decide(
        {**GOOD, "light.auc.rank": 0.80}, None, policy, first=first, first_intervals={"light.auc.rank": [-0.09, 0.01]}
    )
    assert noisy["passed"] and "within noise" in noisy["checks"][0]["why"]
    # the anchor and production are judged alike: a significant drop vs either refuses
    both = decide({**GOOD, "light.auc.rank": 0.80}, {"light.auc.rank": 0.84}, policy, {"light.auc.rank": [-0.06, -0.01]},
                  first=first, first_intervals={"light.auc.rank": [-0.09, 0.01]})  # fmt: skip
    assert both["passed"]  # no max_drop vs production in this policy: only the anchor's limit applies


def test_a_sanity_floor_fails_only_on_a_large_significant_drop_even_where_drops_need_no_interval():
    strict = Policy(
        {
            "light.auc.rank": Threshold(max_drop=0.02, min_examples=1),
            "light.auc.global": Threshold(max_drop=0.10, min_examples=1, role="sanity"),
        },
        significant_drops=False,
    )
    prod = {**GOOD, "light.auc.global": 0.90, "light.n.global": 500}
    worse_global = {**prod, "light.auc.global": 0.75}
    assert not decide(worse_global, prod, strict, {"light.auc.global": [-0.2, -0.1]})["passed"]
    assert decide(worse_global, prod, strict, {"light.auc.global": [-0.2, 0.01]})["passed"]  # large, not significant
    assert decide({**prod, "light.auc.global": 0.82}, prod, strict, {"light.auc.global": [-0.12, -0.04]})["passed"]
    # the same drop on a deciding slice fails without an interval under this policy
    assert not decide({**GOOD, "light.auc.rank": 0.75}, GOOD, strict, {"light.auc.rank": [-0.09, 0.01]})["passed"]


def test_the_shipped_policy_lets_the_hard_slices_decide_and_keeps_the_easy_ones_as_sanity_floors():
    policy = load_policy()
    roles = {name: th.role for name, th in policy.metrics.items()}
    assert roles["light.auc.prerank"] == roles["light.auc.global"] == "sanity"
    assert {name for name, role in roles.items() if role == "sanity"} == {"light.auc.prerank", "light.auc.global"}
    for easy in ("light.auc.prerank", "light.auc.global"):
        for hard in ("light.auc.expose", "light.auc.rank"):
            e, h = policy.metrics[easy], policy.metrics[hard]
            assert e.max_drop > h.max_drop, (easy, hard)
            # bound against the anchor on the hard slices only: an easy slice is judged day over day
            assert math.isinf(e.max_drop_vs_first) and h.max_drop_vs_first < 0.1, (easy, hard)
    assert "hard slices" in policy.reasoning and "sanity" in policy.reasoning


def test_a_policy_with_an_unknown_key_or_role_is_refused_at_load(tmp_path):
    bad = tmp_path / "policy.yaml"
    bad.write_text("metrics:\n  light.auc.rank: {max_drop: 0.02, role: maybe}\n")
    with pytest.raises(ValueError, match="light.auc.rank.*role"):
        load_policy(bad)
    bad.write_text("metrics:\n  light.auc.rank: {max_dorp: 0.02}\n")
    with pytest.raises(ValueError, match="light.auc.rank.*max_dorp"):
        load_policy(bad)
    bad.write_text("metric:\n  light.auc.rank: {max_drop: 0.02}\n")
    with pytest.raises(ValueError, match="unknown gate policy keys"):
        load_policy(bad)


def test_the_decision_report_carries_the_roles_and_the_policys_reasoning(tmp_path):
    evaluation = {"holdout": {"ds": "2026-11-22"}, "candidate": GOOD, "production": GOOD,
                  "first_accepted": {"version": "20261120.1", "metrics": GOOD, "delta_ci95": {}}}  # fmt: skip
    (tmp_path / "evaluation.json").write_text(json.dumps(evaluation))
    d = gate_run(tmp_path)
    assert d["anchor_version"] == "20261120.1" and d["reasoning"] == load_policy().reasoning
    md = (tmp_path / "decision.md").read_text()
    assert "## Why these rules" in md and load_policy().reasoning in md
    assert "| light.auc.global | sanity |" in md and "| light.auc.expose | decides |" in md


def test_insignificant_drops_can_be_made_to_fail_by_policy():
    strict = Policy(POLICY.metrics, significant_drops=False)
    worse = {**GOOD, "light.auc.rank": 0.75}
    assert not decide(worse, GOOD, strict, {"light.auc.rank": [-0.09, 0.01]})["passed"]
