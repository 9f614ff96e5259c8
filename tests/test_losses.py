import math

import pytest
import torch

from hap.config import LossConfig
from models.data import Batch
from models.losses import distillation, graded_listwise, group_logsumexp, hap_loss

# one request: positive (logit 2) and one negative of each source
LOGITS = torch.tensor([2.0, 1.0, 0.0, -1.0, -2.0])
LABEL = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0])
SOURCE = torch.tensor([0, 0, 1, 2, 3])
REQ = torch.zeros(5, dtype=torch.long)


def toy(label=LABEL, source=SOURCE, req=REQ, grade=None, teacher=None) -> Batch:
    """A batch of the given candidates (features are never read by the loss)."""
    n_req, c = int(req.max()) + 1, len(label)
    return Batch(
        torch.zeros((n_req, 1), dtype=torch.long), torch.zeros((n_req, 1), dtype=torch.long),
        torch.zeros((c, 1), dtype=torch.long), req, source, label,
        label.clone() if grade is None else grade, torch.full((c,), float("nan")) if teacher is None else teacher,
    )  # fmt: skip


def test_group_logsumexp_handles_empty_groups():
    out = group_logsumexp(torch.tensor([0.0, 0.0, 3.0]), torch.tensor([0, 0, 2]), 4)
    assert torch.allclose(out[0], torch.tensor(math.log(2.0)))
    assert out[1] == float("-inf") and out[3] == float("-inf")
    assert torch.allclose(out[2], torch.tensor(3.0))


def test_ghcl_is_per_source_softmax_plus_bce():
    cfg = LossConfig(bce_weight=0.0)
    loss, parts = hap_loss(LOGITS, toy(), cfg)
    expected = sum(math.log(1 + math.exp(n - 2.0)) for n in (1.0, 0.0, -1.0, -2.0))
    assert math.isclose(float(loss), expected, rel_tol=1e-5)
    assert math.isclose(float(parts["nce_rank"]), math.log(1 + math.exp(-2.0)), rel_tol=1e-5)


def test_softmax_baseline_puts_all_negatives_in_one_group():
    loss, _ = hap_loss(LOGITS, toy(), LossConfig(mode="softmax", bce_weight=0.0))
    denominator = sum(math.exp(v) for v in (2.0, 1.0, 0.0, -1.0, -2.0))
    assert math.isclose(float(loss), -math.log(math.exp(2.0) / denominator), rel_tol=1e-5)


def test_source_weight_zero_stops_that_sources_gradient():
    logits = LOGITS.clone().requires_grad_(True)
    cfg = LossConfig(bce_weight=0.0, source_weights={"expose": 1.0, "rank": 1.0, "prerank": 1.0, "global": 0.0})
    loss, _ = hap_loss(logits, toy(), cfg)
    loss.backward()
    assert logits.grad[4] == 0  # the global negative
    assert (logits.grad[1:4] > 0).all()


def test_requests_without_positives_only_get_bce():
    label = torch.zeros(5)
    loss, parts = hap_loss(LOGITS, toy(label=label), LossConfig())
    assert "contrastive" not in parts
    assert torch.allclose(loss, parts["bce"])


# two requests: request 0 has three exposed items graded 0, 1 (click) and 2 (click + long view) and
# one `rank` negative; request 1 has two exposed items, none engaged
TWO_REQ = torch.tensor([0, 0, 0, 0, 1, 1])
TWO_SOURCE = torch.tensor([0, 0, 0, 1, 0, 0])
TWO_GRADE = torch.tensor([0.0, 1.0, 2.0, 0.0, 0.0, 0.0])
TWO_LOGITS = torch.tensor([0.5, 1.0, 2.0, 3.0, 0.0, 1.0])


def test_the_graded_listwise_term_weighs_each_exposed_item_by_its_gain_and_skips_requests_without_one():
    exposed = TWO_SOURCE == 0
    got = graded_listwise(TWO_LOGITS, TWO_GRADE, exposed, TWO_REQ, 2)
    lse = math.log(sum(math.exp(v) for v in (0.5, 1.0, 2.0)))  # the `rank` negative is not in the list
    want = -(1 * (1.0 - lse) + 3 * (2.0 - lse)) / 4  # gains 2^g − 1: 0, 1, 3; request 1 has none
    assert math.isclose(float(got), want, rel_tol=1e-6)


def test_distillation_teaches_the_ranking_stages_order_over_the_items_it_ranked():
    teacher = torch.tensor([1.0, 2.0, float("nan"), 4.0, 7.0, float("nan")])  # request 1: one ranked item
    got = distillation(TWO_LOGITS, teacher, TWO_REQ, 2, temperature=1.0)
    p = torch.tensor([1.0, 1 / 2, 1 / 4])
    p = p / p.sum()  # teacher ∝ 1 / position over rows 0, 1, 3
    z = torch.tensor([0.5, 1.0, 3.0])
    want = -(p * torch.log_softmax(z, 0)).sum()
    assert math.isclose(float(got), float(want), rel_tol=1e-6)
    ordered = distillation(torch.tensor([3.0, 2.0, 0.0, 1.0, 0.0, 0.0]), teacher, TWO_REQ, 2, 1.0)
    assert float(ordered) < float(got)  # scores in the teacher's order lose less


def test_the_hybrid_loss_has_finite_gradients_on_a_toy_batch_and_each_term_its_weight():
    logits = TWO_LOGITS.clone().requires_grad_(True)
    teacher = torch.tensor([1.0, 2.0, float("nan"), 4.0, 7.0, float("nan")])
    b = toy(label=(TWO_GRADE > 0).float(), source=TWO_SOURCE, req=TWO_REQ, grade=TWO_GRADE, teacher=teacher)
    cfg = LossConfig(mode="bce", listwise_weight=1.0, distill_weight=0.5)
    loss, parts = hap_loss(logits, b, cfg)
    by_parts = parts["bce"] + parts["listwise"] + 0.5 * parts["distill"]
    assert math.isclose(loss.item(), by_parts.item(), rel_tol=1e-6)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    nothing = toy(label=torch.zeros(6), source=TWO_SOURCE, req=TWO_REQ, grade=torch.zeros(6))
    empty, parts = hap_loss(TWO_LOGITS.clone().requires_grad_(True), nothing, cfg)  # no gain, no teacher
    assert parts["listwise"].item() == 0.0 and parts["distill"].item() == 0.0 and torch.isfinite(empty)
    with pytest.raises(ValueError, match="distill_temperature"):
        LossConfig(distill_temperature=0.0)


def test_harmonizing_the_sources_keeps_the_hybrid_terms():
    from models.train import harmonized_loss

    w = torch.tensor(1.0, requires_grad=True)
    logits = TWO_LOGITS * w
    teacher = torch.tensor([1.0, 2.0, float("nan"), 4.0, 7.0, float("nan")])
    b = toy(label=(TWO_GRADE > 0).float(), source=TWO_SOURCE, req=TWO_REQ, grade=TWO_GRADE, teacher=teacher)
    cfg = LossConfig(harmonize="norm", bce_weight=0.0, listwise_weight=1.0, distill_weight=0.5,
                     source_weights=dict.fromkeys(("expose", "rank", "prerank", "global"), 0.0))  # fmt: skip
    _, parts = hap_loss(logits, b, cfg)
    total, _ = harmonized_loss(parts, [w], cfg)  # no source term left: the hybrid terms alone
    assert math.isclose(total.item(), (parts["listwise"] + 0.5 * parts["distill"]).item(), rel_tol=1e-6)
