import math

import torch

from hap.config import LossConfig
from models.losses import group_logsumexp, hap_loss

# one request: positive (logit 2) and one negative of each source
LOGITS = torch.tensor([2.0, 1.0, 0.0, -1.0, -2.0])
LABEL = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
SOURCE = torch.tensor([0, 0, 1, 2, 3])
REQ = torch.zeros(5, dtype=torch.long)


def test_group_logsumexp_handles_empty_groups():
    out = group_logsumexp(torch.tensor([0.0, 0.0, 3.0]), torch.tensor([0, 0, 2]), 4)
    assert torch.allclose(out[0], torch.tensor(math.log(2.0)))
    assert out[1] == float("-inf") and out[3] == float("-inf")
    assert torch.allclose(out[2], torch.tensor(3.0))


def test_ghcl_is_per_source_softmax_plus_bce():
    cfg = LossConfig(bce_weight=0.0)
    loss, parts = hap_loss(LOGITS, LABEL, SOURCE, REQ, 1, cfg)
    expected = sum(math.log(1 + math.exp(n - 2.0)) for n in (1.0, 0.0, -1.0, -2.0))
    assert math.isclose(float(loss), expected, rel_tol=1e-5)
    assert math.isclose(float(parts["nce_rank"]), math.log(1 + math.exp(-2.0)), rel_tol=1e-5)


def test_softmax_baseline_puts_all_negatives_in_one_group():
    loss, _ = hap_loss(LOGITS, LABEL, SOURCE, REQ, 1, LossConfig(mode="softmax", bce_weight=0.0))
    denominator = sum(math.exp(v) for v in (2.0, 1.0, 0.0, -1.0, -2.0))
    assert math.isclose(float(loss), -math.log(math.exp(2.0) / denominator), rel_tol=1e-5)


def test_source_weight_zero_stops_that_sources_gradient():
    logits = LOGITS.clone().requires_grad_(True)
    cfg = LossConfig(bce_weight=0.0, source_weights={"expose": 1.0, "rank": 1.0, "prerank": 1.0, "global": 0.0})
    loss, _ = hap_loss(logits, LABEL, SOURCE, REQ, 1, cfg)
    loss.backward()
    assert logits.grad[4] == 0  # the global negative
    assert (logits.grad[1:4] > 0).all()


def test_requests_without_positives_only_get_bce():
    label = torch.zeros(5)
    loss, parts = hap_loss(LOGITS, label, SOURCE, REQ, 1, LossConfig())
    assert "contrastive" not in parts
    assert torch.allclose(loss, parts["bce"])
