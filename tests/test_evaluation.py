"""Evaluation at serving ratios, the choice of K, and the gate on a tiny real run."""

import dataclasses
import json

import numpy as np
import pytest

from hap.config import HapConfig, SimConfig
from models.evaluation import bootstrap_mean_ci, captured_share, choose_k, padded


def test_captured_share_routes_the_light_top_k_through_the_expressive_model():
    p = np.array([[0.0, 0.1, 0.9, 0.2, 0.0]])  # the best item is third by the light model
    light = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    expr = np.array([[0.0, 0.0, 9.0, 0.0, 0.0]])
    assert captured_share(light, expr, p, 0, 1)[0] == 0.0  # light alone: item 0
    assert captured_share(light, expr, p, 1, 1)[0] == 0.0  # K ≤ M changes nothing
    assert captured_share(light, expr, p, 3, 1)[0] == pytest.approx(1.0)  # routed and promoted
    assert captured_share(light, expr, p, 3, 2)[0] == pytest.approx((0.9 + 0.0) / (0.9 + 0.2))


def test_padding_never_enters_the_top_m():
    offsets = np.array([0, 2, 5])
    light = padded(np.array([1.0, 2.0, 3.0, 1.0, 2.0]), offsets, -np.inf)
    gain = padded(np.array([0.5, 0.1, 0.2, 0.3, 0.4]), offsets, 0.0)
    assert light.shape == (2, 3) and np.isneginf(light[0, 2])
    share = captured_share(light, light, gain, 0, 2)
    assert share[0] == pytest.approx(1.0) and share[1] == pytest.approx((0.2 + 0.4) / (0.4 + 0.3))


def test_bootstrap_interval_brackets_the_mean_and_is_zero_width_for_zero():
    rng = np.random.default_rng(0)
    diff = rng.normal(0.02, 0.05, 2000)
    lo, hi = bootstrap_mean_ci(diff, 200)
    assert lo < diff.mean() < hi and lo > 0
    assert bootstrap_mean_ci(np.zeros(50), 50) == [0.0, 0.0]


def _row(k, value, lo, flops=1.0):
    return {"k": k, "value": value, "lift": value - 0.5, "lift_ci95": [lo, lo + 0.02], "flops_per_request": flops}


def test_k_selection_picks_the_smallest_k_within_one_percent_of_the_best():
    curve = [_row(0, 0.50, 0.0), _row(50, 0.55, 0.01), _row(100, 0.598, 0.02), _row(200, 0.600, 0.03),
             _row(300, 0.601, 0.03)]  # fmt: skip
    assert choose_k(curve, 0.01, 0.0, 1.0)["k"] == 100  # 0.598 ≥ 0.99 × 0.601; 0.55 is not
    assert choose_k(curve, 0.0, 0.0, 1.0)["k"] == 300
    # a FLOPs budget: the best affordable K
    priced = [dict(r, flops_per_request=r["k"] + 10.0) for r in curve]
    assert choose_k(priced, 0.0, 0.5, 400.0)["k"] == 100  # budget 200 FLOPs: K ≤ 190


def test_k_is_zero_when_no_k_beats_light_alone_beyond_its_interval():
    curve = [_row(0, 0.50, 0.0), _row(50, 0.51, -0.01), _row(100, 0.52, -0.001)]
    choice = choose_k(curve, 0.01, 0.0, 1.0)
    assert choice["k"] == 0 and "light only" in choice["reason"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A real one-day run of the pipeline's steps on a small world with sequence structure: the
    prepared held-out and serving sets, a light model trained one epoch, and an expressive model
    that never trained (its scores are noise): routing through it can only hurt."""
    from hap.workspace import Workspace, write_json_atomic
    from hap_runtime.nets import PreRanker
    from models.prepare import HOLDOUT_DIR, SERVING_DIR, TRAIN_DIR, prepare, prepared_spec
    from models.stream import read_shards, shard_files
    from models.train import train_model

    root = tmp_path_factory.mktemp("tiny")
    sim = SimConfig(n_users=800, n_items=4000, session_beta=4.0)
    cfg = HapConfig(window_days=3, sim=sim)  # a window reaching before the log's first day
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=1, batch_requests=64))
    ws = Workspace.from_env(str(root))
    from samples.simulator import CascadeSimulator

    CascadeSimulator(sim).write_days(ws.data, "2026-11-22", 1, 1500)
    write_json_atomic(ws.validation_dir("2026-11-22") / "verdict.json", {"success": True})  # stands in for GX
    manifest = prepare(str(root), "2026-11-22", cfg, str(root / "prep"))
    spec = prepared_spec(root / "prep")  # the transforms fitted on the training rows
    light, _ = train_model(
        read_shards(shard_files(root / "prep" / TRAIN_DIR)), cfg.light, cfg.light_loss, cfg.train, spec
    )
    noise = PreRanker(cfg.expressive, spec).eval()
    holdout = read_shards(shard_files(root / "prep" / HOLDOUT_DIR))
    serving = read_shards(shard_files(root / "prep" / SERVING_DIR))
    return cfg, manifest, light, noise, holdout, serving, root / "prep"


def test_held_out_rows_encoded_again_with_the_prepared_spec_are_the_shards(tiny_run):
    """Evaluation encodes the kept raw rows with each model's own spec: with the spec the shards were
    written with, that is exactly the shards, request for request and candidate for candidate."""
    from models.evaluation import held_out_views
    from models.prepare import prepared_spec

    cfg, _, light, _, holdout, serving, prep = tiny_run
    again, served_again, raw = held_out_views(prep, prepared_spec(prep), cfg)
    for name in ("request_ids", "user_x", "seq", "item_x", "req", "source", "label"):
        assert np.array_equal(getattr(again, name), getattr(holdout, name)), name
        assert np.array_equal(getattr(served_again, name), getattr(serving, name)), name
    assert raw.num_rows == len(holdout.label)
    assert raw["request_id"].to_pylist() == holdout.request_ids[holdout.req].tolist()


def test_prepare_writes_the_serving_set_of_held_out_requests(tiny_run):
    cfg, manifest, _, _, holdout, serving, prep = tiny_run
    # the window's two earlier days have no data: absent, not "skipped for not passing validation"
    assert manifest["days"] == ["2026-11-22"] and manifest["skipped_days"] == {}
    assert manifest["absent_days"] == ["2026-11-20", "2026-11-21"]
    assert manifest["serving_requests"] == serving.n_requests == holdout.n_requests > 200
    assert set(serving.request_ids) == set(holdout.request_ids)
    assert (np.diff(serving.offsets) == cfg.sim.retrieval_size).all()  # every retrieved candidate
    assert 0.0 <= serving.label.min() and serving.label.max() <= 1.0  # p(click), not a click


def test_gate_refuses_a_two_stage_system_worse_than_light_alone(tiny_run):
    from models.evaluation import assess
    from registry.gate import decide, load_policy

    cfg, _, light, noise, holdout, serving, prep = tiny_run
    forced = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, select_k=False))
    metrics, intervals, routing, _ = assess(light, noise, holdout, serving, forced)
    assert routing["view"] == "serving" and metrics["system.k"] == cfg.routing.k
    assert metrics["system.lift"] < 0 and intervals["system.lift"][1] < 0  # measured, not invented
    decision = decide(metrics, None, load_policy(), own_intervals=intervals)
    assert not decision["passed"] and "system.lift" in decision["reason"]

    # with K chosen per run the same models ship light only, and that passes the routing rules
    metrics, intervals, routing, _ = assess(light, noise, holdout, serving, cfg)
    assert routing["k"] == 0 and metrics["system.lift"] == 0.0
    decision = decide(metrics, None, load_policy(), own_intervals=intervals)
    failed = {c["metric"] for c in decision["checks"] if c["status"] == "fail"}
    assert not {"system.lift", "expressive_vs_light.auc.expose", "expressive_vs_light.auc.rank"} & failed


def test_served_k_is_the_one_the_evaluation_chose(tmp_path):
    from hap_runtime.config import RoutingConfig
    from serving.archive import served_routing

    (tmp_path / "evaluation.json").write_text(json.dumps({"routing": {"k": 0, "reason": "light only"}}))
    assert served_routing(tmp_path, RoutingConfig()).k == 0
    (tmp_path / "evaluation.json").write_text(json.dumps({"routing": {"k": 150}}))
    routed = served_routing(tmp_path, RoutingConfig(k=200, m=50))
    assert routed.k == 150 and routed.m == 50


def _save_pair(folder, light, expressive, **records):
    from hap_runtime.nets import save_model

    save_model(light, folder / "light")
    save_model(expressive, folder / "expressive")
    for name, record in records.items():
        (folder / f"{name}.json").write_text(json.dumps(record))
    return folder


def test_production_and_the_anchor_are_replayed_on_the_candidates_requests(tiny_run, tmp_path):
    """evaluate() scores production's and the first accepted version's models on the run day's held-out
    requests: each reference figure is its own models' scores on those rows (never the figure its
    registry record carries), and each interval equals a paired bootstrap recomputed here from the
    three models' scores on the same resampled requests. The gate reads exactly these."""
    import copy

    import torch

    from hap_runtime.nets import PreRanker
    from models.evaluation import evaluate
    from models.metrics import predict, slice_aucs
    from registry.gate import gate_run

    cfg, _, light, noise, holdout, _, prep = tiny_run
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, bootstrap=20))
    torch.manual_seed(7)
    untrained = PreRanker(cfg.light, light.spec).eval()
    perturbed = copy.deepcopy(light)
    with torch.no_grad():
        for p in perturbed.parameters():
            p.add_(0.3 * torch.randn_like(p))
    cand = _save_pair(tmp_path / "candidate", light, noise)
    prod = _save_pair(tmp_path / "production", untrained, noise, evaluation={"routing": {"k": 0}})
    bogus = {"light.auc.rank": 0.999, "light.auc.expose": 0.999, "light.auc.global": 0.999}
    anchor = _save_pair(tmp_path / "anchor", perturbed, noise,
                        manifest={"version": "20261120.1", "ds": "2026-11-20", "metrics": bogus})  # fmt: skip
    run = tmp_path / "run"
    run.mkdir()
    result = evaluate(str(prep), str(cand / "light"), str(cand / "expressive"), str(prod), cfg,
                      str(run / "evaluation.json"), str(anchor))  # fmt: skip

    scores = {name: predict(m, holdout) for name, m in (("cand", light), ("prod", untrained), ("anchor", perturbed))}
    aucs = {name: slice_aucs(s, holdout) for name, s in scores.items()}
    first = result["first_accepted"]
    assert (first["version"], first["ds"]) == ("20261120.1", "2026-11-20")
    for s in ("overall", "expose", "rank", "prerank", "global"):
        key = f"light.auc.{s}"
        assert result["candidate"][key] == pytest.approx(aucs["cand"][f"auc.{s}"])
        assert result["production"][key] == pytest.approx(aucs["prod"][f"auc.{s}"])
        assert first["metrics"][key] == pytest.approx(aucs["anchor"][f"auc.{s}"])  # replayed, not the record's 0.999

    # the paired interval of (candidate − anchor), recomputed from scores: the same resampled requests
    rng = np.random.default_rng(0)
    deltas = []
    for _ in range(cfg.eval.bootstrap):
        reqs = np.sort(rng.integers(0, holdout.n_requests, holdout.n_requests))
        rows, _ = holdout.candidate_rows(reqs)
        sub = holdout.select_requests(reqs)
        deltas.append(
            slice_aucs(scores["cand"][rows], sub)["auc.expose"] - slice_aucs(scores["anchor"][rows], sub)["auc.expose"]
        )
    expected = [np.nanpercentile(deltas, 2.5), np.nanpercentile(deltas, 97.5)]
    assert first["delta_ci95"]["light.auc.expose"] == pytest.approx(expected)

    (run / "evaluation.json").write_text(json.dumps({**result, "production_version": "20261121.1"}))
    checks = {c["metric"]: c for c in gate_run(run)["checks"]}
    for key in ("light.auc.expose", "light.auc.rank", "light.auc.global"):
        c = checks[key]
        assert c["production"] == result["production"][key] and c["delta_ci95"] == result["delta_ci95"][key]
        assert c["first"] == first["metrics"][key] and c["first_delta_ci95"] == first["delta_ci95"][key]


def test_the_shipped_slice_rules_accept_a_better_hard_order_and_refuse_a_worse_expose(tiny_run):
    """On a tiny real run's held-out requests, production's scores against two candidates derived from
    them: one that orders the hard negatives (expose, rank) better and gives up a little on ``global``
    is accepted by the shipped policy's slice rules; one worse on ``expose`` is refused."""
    from hap import SOURCES
    from models.evaluation import slice_delta_intervals
    from models.metrics import predict, slice_aucs
    from registry.gate import Policy, decide, load_policy

    _, _, light, _, holdout, _, _ = tiny_run
    shipped = load_policy()
    policy = Policy({k: v for k, v in shipped.metrics.items() if k.startswith("light.auc.")}, shipped.significant_drops)
    prod = predict(light, holdout).astype(np.float64)
    spread = prod.std()
    neg = holdout.label == 0
    hard = neg & np.isin(holdout.source, [SOURCES.index("expose"), SOURCES.index("rank")])
    catalogue = neg & (holdout.source == SOURCES.index("global"))

    def judged(scores, rules=policy):
        metrics = {f"light.{k}": v for k, v in slice_aucs(scores, holdout).items()}
        intervals = slice_delta_intervals(scores, prod, holdout, SOURCES, 100, seed=3)
        return metrics, decide(metrics, {f"light.{k}": v for k, v in slice_aucs(prod, holdout).items()}, rules,
                               {f"light.{k}": v for k, v in intervals.items()})  # fmt: skip

    better = prod - 0.5 * spread * hard + 0.2 * spread * catalogue  # catalogue negatives a little higher
    _, decision = judged(better)
    checks = {c["metric"]: c for c in decision["checks"]}
    assert checks["light.auc.expose"]["delta"] > 0.01 and checks["light.auc.rank"]["delta"] > 0.01
    assert -0.10 < checks["light.auc.global"]["delta"] < -0.02, checks["light.auc.global"]  # worse on global
    assert decision["passed"], decision["reason"]
    assert checks["light.auc.global"]["delta_ci95"][1] < 0  # a real, significant drop on the easy slice
    # the same candidate under a policy that lets global decide like a hard slice is refused
    uniform = Policy({**policy.metrics, "light.auc.global": policy.metrics["light.auc.expose"]}, True)
    assert not judged(better, uniform)[1]["passed"]

    worse = prod + 0.5 * spread * (neg & (holdout.source == SOURCES.index("expose")))
    _, decision = judged(worse)
    assert not decision["passed"] and "light.auc.expose" in decision["reason"], decision["reason"]
