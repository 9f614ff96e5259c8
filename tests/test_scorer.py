"""The two-stage scorer in-process: routing, offline/online agreement, and every bad input."""

import json
import math
from dataclasses import asdict

import numpy as np
import pytest

from hap.config import HapConfig, RoutingConfig, TrainConfig
from hap.features import DEFAULT_SPEC
from models.data import encode_tables
from models.metrics import predict
from models.nets import save_model
from models.train import train_expressive, train_light
from serving.scorer import RequestError, TwoStageScorer, decode_body

CFG = HapConfig(train=TrainConfig(epochs=1, batch_requests=64))
ROUTING = RoutingConfig(k=8, m=5, max_candidates=300, max_k=100)
USER_FIELDS = [f.name for f in DEFAULT_SPEC.features if f.side == "user"]
ITEM_FIELDS = [f.name for f in DEFAULT_SPEC.side("item")]


@pytest.fixture(scope="module")
def model_dir(small_day, tmp_path_factory):
    data = encode_tables(small_day.requests, small_day.candidates, DEFAULT_SPEC, "click")
    d = tmp_path_factory.mktemp("model")
    save_model(train_light(data, CFG, DEFAULT_SPEC)[0], d / "light")
    save_model(train_expressive(data, CFG, DEFAULT_SPEC)[0], d / "expressive")
    (d / "routing.json").write_text(json.dumps(asdict(ROUTING)))
    (d / "version.json").write_text(json.dumps({"version": "test.1"}))
    return d


@pytest.fixture(scope="module")
def scorer(model_dir):
    return TwoStageScorer(model_dir)


def logged_request(day, i=0):
    """Request i of the day exactly as logged, with its logged candidates."""
    req = day.requests.slice(i, 1).to_pylist()[0]
    cands = day.candidates.filter(np.asarray(day.candidates["request_id"]) == req["request_id"])
    return {"user": {k: req[k] for k in USER_FIELDS}, "candidates": cands.select(ITEM_FIELDS).to_pylist()}


def test_answer_is_a_ranked_top_m_with_stages(scorer, small_day):
    body = logged_request(small_day)
    out = scorer(body)
    items = out["items"]
    assert out["model_version"] == "test.1" and out["k"] == 8 and len(items) == 5
    assert [it["rank"] for it in items] == [1, 2, 3, 4, 5]
    assert all(it["stage"] == "expressive" for it in items)  # M <= K: all re-scored
    scores = [it["score"] for it in items]
    assert scores == sorted(scores, reverse=True)
    ids = {c["item_id"] for c in body["candidates"]}
    assert {it["item_id"] for it in items} <= ids


def test_m_beyond_k_is_filled_by_the_light_model(scorer, small_day):
    out = scorer({**logged_request(small_day), "k": 2, "m": 6})
    assert [it["stage"] for it in out["items"]] == ["expressive"] * 2 + ["light"] * 4


def test_online_scores_match_offline_evaluation(scorer, small_day):
    """Serving and offline evaluation share encoding and model: light scores are identical."""
    body = logged_request(small_day, 3)
    n = len(body["candidates"])
    out = scorer({**body, "k": 0, "m": n})
    online = {it["item_id"]: it["score"] for it in out["items"]}
    one = small_day.requests.slice(3, 1)
    rows = np.asarray(small_day.candidates["request_id"]) == one["request_id"][0].as_py()
    data = encode_tables(one, small_day.candidates.filter(rows), DEFAULT_SPEC, "click")
    offline = predict(scorer.light, data)
    for item_id, score in zip(small_day.candidates.filter(rows)["item_id"].to_pylist(), offline, strict=True):
        assert math.isclose(online[item_id], float(score), rel_tol=1e-5, abs_tol=1e-5)


def test_unknown_ids_are_hashed_not_rejected(scorer, small_day):
    body = logged_request(small_day)
    body["candidates"][0]["item_id"] = 10**15
    body["user"]["user_id"] = 987654321
    assert len(scorer(body)["items"]) == 5


def _bad_cases(body):
    c0 = body["candidates"][0]
    return [
        ("not an object", [1, 2], "body"),
        ("missing user", {"candidates": body["candidates"]}, "user"),
        ("extra top-level field", {**body, "debug": True}, "debug"),
        (
            "missing user field",
            {**body, "user": {k: v for k, v in body["user"].items() if k != "gender"}},
            "user.gender",
        ),
        ("extra candidate field", {**body, "candidates": [{**c0, "colour": 1}]}, "candidates[0].colour"),
        ("wrong type", {**body, "candidates": [{**c0, "item_id": "abc"}]}, "candidates[0].item_id"),
        ("NaN feature", {**body, "candidates": [{**c0, "item_ctr_7d": float("nan")}]}, "candidates[0].item_ctr_7d"),
        ("inf feature", {**body, "candidates": [{**c0, "duration_s": float("inf")}]}, "candidates[0].duration_s"),
        ("bool as int", {**body, "candidates": [{**c0, "category": True}]}, "candidates[0].category"),
        ("empty candidates", {**body, "candidates": []}, "candidates"),
        ("too many candidates", {**body, "candidates": [c0] * 301}, "candidates"),
        ("bad sequence", {**body, "user": {**body["user"], "hist_item_ids": ["x"]}}, "user.hist_item_ids"),
        ("k out of range", {**body, "k": 101}, "k"),
        ("m out of range", {**body, "m": 0}, "m"),
        ("k not int", {**body, "k": "10"}, "k"),
    ]


def test_every_bad_input_names_its_field(scorer, small_day):
    body = logged_request(small_day)
    for name, bad, field in _bad_cases(body):
        with pytest.raises(RequestError) as err:
            scorer(bad)
        assert err.value.field == field, name
        assert 400 <= err.value.status < 500
    with pytest.raises(RequestError, match="malformed JSON"):
        decode_body(b"{nope")
