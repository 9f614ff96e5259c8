"""Model parts, request-level batching, determinism, serialization, hard-source training."""

import dataclasses

import numpy as np
import pytest
import torch

from hap import SOURCES
from hap.config import HapConfig, TrainConfig
from hap_runtime.config import ModelConfig
from hap_runtime.nets import Ensemble, PreRanker, load_model, save_model
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
    light, _ = train_model(data, FAST.light, FAST.light_loss, FAST.train, DEFAULT_SPEC)
    seen.clear()
    train_expressive(data, FAST, DEFAULT_SPEC, light=light)
    sources = set(torch.cat(seen).tolist())
    assert sources == {SOURCES.index("expose"), SOURCES.index("rank")}


def test_warm_start_copies_the_light_models_embeddings_and_towers(data):
    light, _ = train_model(data, FAST.light, FAST.light_loss, FAST.train, DEFAULT_SPEC)
    one_step = dataclasses.replace(FAST.train, epochs=0)  # no training step: only the copy
    expr, history = train_model(data, FAST.expressive, FAST.expressive_loss, one_step, DEFAULT_SPEC, init=light)
    copied = set(history["warm_start"])
    assert any(k.startswith("embeddings.") for k in copied) and any(k.startswith("user_tower.") for k in copied)
    assert any(k.startswith("item_tower.") for k in copied)
    assert not any(k.startswith(("attention.", "mlp.", "head.")) for k in copied)
    src, dst = light.state_dict(), expr.state_dict()
    for k in copied:
        assert torch.equal(src[k], dst[k]), k
    cold, _ = train_model(data, FAST.expressive, FAST.expressive_loss, one_step, DEFAULT_SPEC)
    assert not torch.equal(
        cold.state_dict()["embeddings.tables.item_id.weight"], src["embeddings.tables.item_id.weight"]
    )
    with pytest.raises(ValueError, match="light model"):
        train_expressive(data, FAST, DEFAULT_SPEC)  # the default recipe warm-starts: no light, no training


def test_early_stopping_keeps_the_best_epoch(data):
    """A learning rate that wrecks the model after its first epochs: the best validation epoch is the
    one kept, and training stops ``patience`` epochs after it."""
    train_part = data.select_requests(np.arange(0, data.n_requests, 2))
    valid = data.select_requests(np.arange(1, data.n_requests, 2))
    cfg = dataclasses.replace(FAST.train, epochs=6, patience=2, lr=0.3)
    model, history = train_model(train_part, FAST.light, FAST.light_loss, cfg, DEFAULT_SPEC, valid=valid)
    scores = [e["valid_auc"] for e in history["epochs"]]
    best = int(np.argmax(scores))
    assert history["best_epoch"] == best and history["best_valid_auc"] == max(scores)
    assert len(scores) == min(6, best + 3)  # stopped `patience` epochs after the best (or at the cap)
    from models.train import validation_score

    assert validation_score(model, valid) == pytest.approx(max(scores))  # the best epoch's weights


def test_harmonized_ghcl_equalizes_source_gradient_norms(data):
    from hap.config import LossConfig
    from models.losses import hap_loss
    from models.train import harmonized_loss

    model = PreRanker(FAST.light, DEFAULT_SPEC)
    b = data.batch(np.arange(64))
    cfg = LossConfig(harmonize="norm")
    logits = model(b.user_x, b.seq, b.item_x, b.req)
    _, parts = hap_loss(logits, b, cfg)
    shared = [p for n, p in model.named_parameters() if not n.startswith("embeddings.")]
    _, scales = harmonized_loss(parts, shared, cfg)
    assert set(scales) == set(SOURCES)
    norms = {}
    for s in SOURCES:  # each rescaled term's gradient norm on the shared layers
        g = torch.autograd.grad(scales[s] * parts[f"nce_{s}"], shared, retain_graph=True, allow_unused=True)
        norms[s] = float(torch.sqrt(sum((x * x).sum() for x in g if x is not None)))
    assert max(norms.values()) == pytest.approx(min(norms.values()), rel=1e-4)
    hist = train_model(data, FAST.light, cfg, FAST.train, DEFAULT_SPEC)[1]
    assert "harmony_expose" in hist["epochs"][0]


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
    la, lb = train_light(data, cfg, DEFAULT_SPEC)[0], train_light(data, other, DEFAULT_SPEC)[0]
    a = (la, train_expressive(data, cfg, DEFAULT_SPEC, light=la)[0])
    b = (lb, train_expressive(data, other, DEFAULT_SPEC, light=lb)[0])
    same = paired_bootstrap(a, a, data, 12, 6, n_boot=20)
    assert all(lo == hi == 0.0 for lo, hi in same.values())
    ci = paired_bootstrap(a, b, data, 12, 6, n_boot=50)
    delta = evaluate_pair(*a, data, 12, 6)["light.auc.rank"] - evaluate_pair(*b, data, 12, 6)["light.auc.rank"]
    lo, hi = ci["light.auc.rank"]
    assert lo < hi and lo - 0.01 <= delta <= hi + 0.01


def test_target_attention_skips_padding_yet_equals_the_dense_masked_form():
    """The unit scores only real (candidate, history item) pairs; the result must equal scoring the
    whole padded (C, L) grid and masking, including for a request with an empty history."""
    from hap_runtime.nets import TargetAttention

    torch.manual_seed(0)
    att = TargetAttention(8, (16,))
    seq_emb, target = torch.randn(3, 6, 8), torch.randn(7, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    req = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    keys = seq_emb[req]  # (C, L, D): the dense reference
    q = target.unsqueeze(1).expand_as(keys)
    logits = att.score(att.unit(torch.cat([q, keys, q * keys, q - keys], dim=-1))).squeeze(-1)
    logits = logits.masked_fill(~mask[req], float("-inf"))
    pooled = torch.einsum("cl,cld->cd", torch.softmax(logits, -1).nan_to_num(0.0), keys)
    best = logits.amax(-1, keepdim=True)
    best = torch.where(torch.isfinite(best), best, torch.zeros_like(best))
    expected = torch.cat([pooled, target * pooled, best], dim=-1)
    out = att(target, seq_emb, mask, req)
    assert torch.allclose(out, expected, atol=1e-6)
    assert torch.equal(out[5:], torch.cat([torch.zeros(2, 16), torch.zeros(2, 1)], dim=-1))  # empty history


TWO_TOWER = ModelConfig(arch="two_tower", mlp_dims=(16, 8))


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_a_two_tower_score_is_the_similarity_of_a_user_vector_and_a_request_free_item_vector(data, similarity):
    """Decoupled: an item's vector is computed from its own features alone, so scoring it for any
    request is one product with that request's user vector (what an item snapshot can carry)."""
    model = PreRanker(dataclasses.replace(TWO_TOWER, similarity=similarity), DEFAULT_SPEC).eval()
    b = data.batch(np.arange(4))
    with torch.no_grad():
        scores = model(b.user_x, b.seq, b.item_x, b.req)  # (C,)
        items = model.item_vectors(model.embeddings.side(b.item_x, model.item_feats))  # (C, T)
        alone = model.item_vectors(model.embeddings.side(b.item_x[:1], model.item_feats))  # one item, no request
        users = model.user_proj(model.user_side(b.user_x, b.seq).vec)  # (B, T)
        if similarity == "cosine":
            items, users = torch.nn.functional.normalize(items, dim=-1), torch.nn.functional.normalize(users, dim=-1)
        by_hand = model.similarity.log_scale.exp() * (users[b.req] * items).sum(-1) + model.similarity.bias
    alone = alone if similarity == "dot" else torch.nn.functional.normalize(alone, dim=-1)
    assert torch.allclose(items[:1], alone, atol=1e-6)  # batched or alone: the same vector (float sums aside)
    assert torch.allclose(scores, by_hand, atol=1e-6)
    assert not hasattr(model, "mlp")  # no per-candidate network beyond the item tower


def test_a_two_tower_light_model_trains_saves_and_warm_starts_the_expressive_model(data, tmp_path):
    cfg = dataclasses.replace(FAST, light=TWO_TOWER)
    light, _ = train_model(data, cfg.light, cfg.light_loss, cfg.train, DEFAULT_SPEC)
    save_model(light, tmp_path / "tt")
    loaded = load_model(tmp_path / "tt")
    assert loaded.cfg.arch == "two_tower" and np.array_equal(predict(light, data), predict(loaded, data))
    expr, history = train_expressive(data, cfg, DEFAULT_SPEC, light=light)
    assert any(k.startswith("item_tower.") for k in history["warm_start"])
    assert not any(k.startswith(("item_proj.", "similarity.")) for k in history["warm_start"])


def test_model_config_refuses_a_coupled_two_tower_and_unknown_choices():
    for arch in ("two_tower", "ranktower"):
        with pytest.raises(ValueError, match="decoupled"):
            ModelConfig(arch=arch, attention=True)
    with pytest.raises(ValueError, match="arch"):
        HapConfig.from_dict({"light": {"arch": "three_tower"}})
    with pytest.raises(ValueError, match="numeric"):
        HapConfig.from_dict({"light": {"numeric": "thermometer"}})


def test_a_cumulative_numeric_embedding_sums_the_steps_up_to_its_bucket_and_serves_what_it_trained(data, tmp_path):
    cfg = dataclasses.replace(FAST.light, numeric="cumulative")
    model, _ = train_model(data, cfg, FAST.light_loss, FAST.train, DEFAULT_SPEC)
    emb, name = model.embeddings, "item_ctr_7d"
    steps, vectors = emb.tables[name].weight.detach(), emb.weight(name).detach()
    assert torch.equal(vectors[0], steps[0])  # missing stays its own row
    assert torch.allclose(vectors[3] - vectors[2], steps[3], atol=1e-6)  # neighbours differ by one step
    assert torch.allclose(vectors[-1], steps[1:].sum(0), atol=1e-5)
    assert torch.equal(emb.weight("item_id"), emb.tables["item_id"].weight)  # ids stay plain rows
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")  # eval mode, fused lookups: the cumulative rows precomputed
    assert loaded.cfg.numeric == "cumulative"
    assert np.allclose(predict(model, data), predict(loaded, data), atol=1e-6)
    from models.train import warm_start

    plain = PreRanker(FAST.expressive, DEFAULT_SPEC)  # bucket rows: steps would mean something else there
    copied = warm_start(plain, model)
    assert "embeddings.tables.item_id.weight" in copied and f"embeddings.tables.{name}.weight" not in copied
    same = PreRanker(dataclasses.replace(FAST.expressive, numeric="cumulative"), DEFAULT_SPEC)
    assert f"embeddings.tables.{name}.weight" in warm_start(same, model)


def test_a_linear_numeric_embedding_adds_a_learned_direction_by_bucket_position_and_serves_what_it_trained(
    data, tmp_path
):
    cfg = dataclasses.replace(FAST.light, numeric="linear")
    model, _ = train_model(data, cfg, FAST.light_loss, FAST.train, DEFAULT_SPEC)
    emb, name = model.embeddings, "item_ctr_7d"
    rows, direction = emb.tables[name].weight.detach(), emb.directions[name].detach()
    vectors = emb.weight(name).detach()
    assert direction.abs().sum() > 0  # trained away from its zero start
    assert torch.equal(vectors[0], rows[0])  # missing: its own row, no position
    assert torch.allclose(vectors[1], rows[1] - direction) and torch.allclose(vectors[-1], rows[-1] + direction)
    assert torch.equal(emb.weight("item_id"), emb.tables["item_id"].weight)  # ids stay plain rows
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert np.allclose(predict(model, data), predict(loaded, data), atol=1e-6)


RANKTOWER = ModelConfig(arch="ranktower", heads=3)


def test_ranktowers_user_side_needs_no_item_and_its_item_side_no_request(data):
    """Decoupled as the paper serves it: the user's prepared heads come from user features and
    history alone, an item's from its own features alone (what an item snapshot can carry); per
    pair only the parameter-free cross-attention and maximum similarity run."""
    model = PreRanker(RANKTOWER, DEFAULT_SPEC).eval()
    b = data.batch(np.arange(4))
    with torch.no_grad():
        users = model.user_vectors(model.user_side(b.user_x, b.seq))  # no item input at all
        items = model.item_vectors(model.embeddings.side(b.item_x, model.item_feats))
        alone = model.item_vectors(model.embeddings.side(b.item_x[:1], model.item_feats))
        scores = model(b.user_x, b.seq, b.item_x, b.req)
        by_parts = model.ranktower(users[b.req], items)
    assert users.shape == (4, 3, 5, RANKTOWER.tower_dim) and items.shape == (len(b.req), 3, 5, RANKTOWER.tower_dim)
    assert torch.allclose(items[:1], alone, atol=1e-6)
    assert torch.allclose(scores, by_parts, atol=1e-6)
    pair = [p for n, p in model.ranktower.named_parameters() if not n.startswith(("user_", "item_"))]
    assert sum(p.numel() for p in pair) == 2  # the maximum similarity's scale and bias


def test_a_ranktower_light_model_trains_with_the_hybrid_loss_saves_and_warm_starts_the_expressive_model(data, tmp_path):
    from hap.config import LossConfig

    hybrid = LossConfig(mode="bce", listwise_weight=1.0, distill_weight=0.5)
    light, history = train_model(data, RANKTOWER, hybrid, FAST.train, DEFAULT_SPEC)
    assert np.isfinite(history["epochs"][-1]["loss"])
    save_model(light, tmp_path / "rt")
    loaded = load_model(tmp_path / "rt")
    assert loaded.cfg.arch == "ranktower" and np.allclose(predict(light, data), predict(loaded, data), atol=1e-6)
    expr, history = train_expressive(data, dataclasses.replace(FAST, light=RANKTOWER), DEFAULT_SPEC, light=light)
    assert any(k.startswith("item_tower.") for k in history["warm_start"])
    assert not any(k.startswith("ranktower.") for k in history["warm_start"])


def test_ranktower_scores_one_user_against_many_items_as_it_scores_pairs():
    model = PreRanker(RANKTOWER, DEFAULT_SPEC).eval()
    user, items = torch.randn(3, 5, RANKTOWER.tower_dim), torch.randn(40, 3, 5, RANKTOWER.tower_dim)
    with torch.no_grad():
        pairs = model.ranktower(user.expand(40, *user.shape), items)
        assert torch.allclose(model.ranktower.one_user(user, items), pairs, atol=1e-5)
        assert torch.allclose(model.meet_one(user, model.stored_items(items)), pairs, atol=1e-5)


def test_an_ensemble_is_its_members_trained_alone_with_their_own_seeds_and_serves_their_mean(data, tmp_path):
    """Member i is exactly the network one seed-(seed + i) run trains (its own start, batch order and
    best epoch); the ensemble answers the mean of their logits, loads back as itself, and lends its
    first member to the expressive model's warm start."""
    cfg = dataclasses.replace(FAST, light=ModelConfig(members=3))
    light, history = train_model(data, cfg.light, cfg.light_loss, cfg.train, DEFAULT_SPEC)
    assert isinstance(light, Ensemble) and len(light.members) == 3 and len(history["members"]) == 3
    alone, _ = train_model(data, ModelConfig(), cfg.light_loss, dataclasses.replace(cfg.train, seed=1), DEFAULT_SPEC)
    each = [predict(m, data) for m in light.members]
    assert np.array_equal(each[1], predict(alone, data))
    assert not np.allclose(each[0], each[1])
    assert np.allclose(predict(light, data), np.mean(each, axis=0), atol=1e-6)
    save_model(light, tmp_path / "ens")
    loaded = load_model(tmp_path / "ens")
    assert isinstance(loaded, Ensemble) and np.allclose(predict(light, data), predict(loaded, data), atol=1e-6)
    expr, history = train_expressive(data, cfg, DEFAULT_SPEC, light=light)
    assert isinstance(expr, PreRanker) and any(k.startswith("item_tower.") for k in history["warm_start"])
    with pytest.raises(ValueError, match="members"):
        ModelConfig(members=0)
