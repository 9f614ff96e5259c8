import math

import numpy as np

from models.data import EncodedData
from models.metrics import auc, two_stage_recall


def test_auc_known_values():
    assert auc(np.array([0.9, 0.1]), np.array([1, 0])) == 1.0
    assert auc(np.array([0.1, 0.9]), np.array([1, 0])) == 0.0
    assert auc(np.array([0.5, 0.5]), np.array([1, 0])) == 0.5
    assert math.isnan(auc(np.array([0.5]), np.array([1])))


def _data(labels):
    n = len(labels)
    z = np.zeros((1, 1), dtype=np.int64)
    return EncodedData(
        np.array(["r"]), z, z, np.zeros((n, 1), np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64),
        np.asarray(labels, np.float32),
    )  # fmt: skip


def test_two_stage_recall_reorders_the_light_top_k():
    data = _data([0, 0, 1, 0])
    light = np.array([4.0, 3.0, 2.0, 1.0])  # the positive is third by the light model
    expressive = np.array([0.0, 0.0, 9.0, 0.0])
    out = two_stage_recall(light, expressive, data, k=3, m=1)
    assert out["recall_at_m"] == 1.0 and out["light_recall_at_m"] == 0.0
    assert two_stage_recall(light, expressive, data, k=2, m=1)["recall_at_m"] == 0.0


def test_ndcg_and_gauc():
    from models.metrics import gauc

    data = _data([0, 1, 0, 0])
    perfect = two_stage_recall(np.array([0.0, 9, 1, 2]), np.zeros(4), data, k=0, m=2)
    assert perfect["light_ndcg_at_m"] == 1.0
    second = two_stage_recall(np.array([3.0, 2, 1, 0]), np.zeros(4), data, k=0, m=2)
    assert math.isclose(second["light_ndcg_at_m"], 1 / math.log2(3))
    assert gauc(np.array([0.0, 9, 1, 2]), data) == 1.0


def test_flops_follow_routing():
    from hap.config import HapConfig
    from hap_runtime.nets import PreRanker
    from hap_runtime.spec import DEFAULT_SPEC
    from models.metrics import flops_per_request

    cfg = HapConfig()
    light, expr = PreRanker(cfg.light, DEFAULT_SPEC), PreRanker(cfg.expressive, DEFAULT_SPEC)
    small, big = flops_per_request(light, expr, 1000, 100), flops_per_request(light, expr, 1000, 200)
    assert small["light"] == big["light"] > 0
    assert big["expressive"] > small["expressive"] > 0
    assert flops_per_request(light, None, 1000, 0)["total"] == small["light"]
