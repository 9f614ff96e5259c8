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
