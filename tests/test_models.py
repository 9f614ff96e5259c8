"""Model parts, request-level batching, determinism, serialization, hard-source training."""

import dataclasses

import numpy as np
import pytest
import torch

from hap import SOURCES
from hap.config import HapConfig, TrainConfig
from hap_runtime.config import ModelConfig
from hap_runtime.nets import PreRanker, load_model, save_model
from hap_runtime.spec import DEFAULT_SPEC
from models.data import EncodedData, encode_tables, holdout_mask
from models.metrics import predict
from models.train import train_expressive, train_model

FAST = HapConfig(train=TrainConfig(epochs=1, batch_requests=64))


@pytest.fixture(scope="module")
def data(small_day) -> EncodedData:
    return encode_tables(small_day.requests, small_day.candidates, DEFAULT_SPEC, "click")


@pytest.mark.parametrize("attention", [False, True])
def test_forward_shapes(data, attention):
    model = PreRanker(ModelConfig(attention=attention, mlp_dims=(16, 8)), DEFAULT_SPEC)
    b = data.batch(np.arange(5))
    user = model.user_side(b.user_x, b.seq)
    assert user.vec.shape == (5, model.cfg.tower_dim)
    assert model.score(user, b.item_x, b.req).shape == (len(b.req),)


def test_user_side_once_per_request_equals_per_candidate(data):
    """Request-level batching computes the user tower once and broadcasts; same scores as per row."""
    model = PreRanker(ModelConfig(attention=True), DEFAULT_SPEC).eval()
    b = data.batch(np.arange(4))
    with torch.no_grad():
        once = model(b.user_x, b.seq, b.item_x, b.req)
        per_row = model(b.user_x[b.req], b.seq[b.req], b.item_x, torch.arange(len(b.req)))
    assert torch.allclose(once, per_row, atol=1e-6)


def test_select_requests_keeps_each_requests_candidates(data):
    sub = data.select_requests(np.array([3, 0]))
    off = data.offsets
    assert sub.n_requests == 2
    assert (sub.item_x[sub.req == 0] == data.item_x[off[3] : off[4]]).all()
    assert (sub.item_x[sub.req == 1] == data.item_x[off[0] : off[1]]).all()


def test_holdout_split_is_deterministic(data):
    a = holdout_mask(data.request_ids, 0.2)
    assert (a == holdout_mask(data.request_ids, 0.2)).all()
    assert 0.1 < a.mean() < 0.3


def test_training_is_deterministic_for_a_seed(data):
    a, _ = train_model(data, FAST.light, FAST.light_loss, FAST.train, DEFAULT_SPEC)
    b, _ = train_model(data, FAST.light, FAST.light_loss, FAST.train, DEFAULT_SPEC)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def test_expressive_model_never_sees_easy_sources(data, monkeypatch):
    seen = []
    real_batch = EncodedData.batch

    def spy(self, idx):
        b = real_batch(self, idx)
        seen.append(b.source.unique())
        return b

    monkeypatch.setattr(EncodedData, "batch", spy)
    train_expressive(data, FAST, DEFAULT_SPEC)
    sources = set(torch.cat(seen).tolist())
    assert sources == {SOURCES.index("expose"), SOURCES.index("rank")}


def test_save_load_round_trip_gives_identical_scores(data, tmp_path):
    model, _ = train_model(data, FAST.expressive, FAST.expressive_loss, FAST.train, DEFAULT_SPEC)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert np.array_equal(predict(model, data), predict(loaded, data))


def test_gradient_conflict_monitor_reports_every_present_source(data):
    cfg = HapConfig(train=TrainConfig(epochs=1, batch_requests=64, monitor_every=2))
    _, history = train_model(data, cfg.light, cfg.light_loss, cfg.train, DEFAULT_SPEC)
    mon = history["grad_monitor"]
    assert len(mon) >= 2 and mon[0]["step"] == 0
    assert set(mon[0]["norm"]) == set(SOURCES)
    assert len(mon[0]["cosine"]) == 6
    assert all(-1.0 <= c <= 1.0 for c in mon[-1]["cosine"].values())
    epoch = history["epochs"][0]
    assert epoch["data_seconds"] + epoch["compute_seconds"] <= epoch["seconds"] + 1e-6


def test_paired_bootstrap_is_zero_for_a_model_against_itself_and_brackets_a_real_difference(data):
    from models.metrics import evaluate_pair, paired_bootstrap
    from models.train import train_expressive, train_light

    cfg, other = FAST, dataclasses.replace(FAST, train=dataclasses.replace(FAST.train, seed=1))
    a = (train_light(data, cfg, DEFAULT_SPEC)[0], train_expressive(data, cfg, DEFAULT_SPEC)[0])
    b = (train_light(data, other, DEFAULT_SPEC)[0], train_expressive(data, other, DEFAULT_SPEC)[0])
    same = paired_bootstrap(a, a, data, 12, 6, n_boot=20)
    assert all(lo == hi == 0.0 for lo, hi in same.values())
    ci = paired_bootstrap(a, b, data, 12, 6, n_boot=50)
    delta = evaluate_pair(*a, data, 12, 6)["light.auc.rank"] - evaluate_pair(*b, data, 12, 6)["light.auc.rank"]
    lo, hi = ci["light.auc.rank"]
    assert lo < hi and lo - 0.01 <= delta <= hi + 0.01
