"""The item snapshot (``models.snapshot``, ``hap_runtime.snapshot``): each window item's latest
features kept by prepare, encoded with a decoupled model's item vectors by the light model's
training step, and read by the scorer so a request may send its candidates by ``item_ids``."""

import dataclasses
import json
from dataclasses import asdict

import numpy as np
import pyarrow.compute as pc
import pytest
import torch

from hap.config import HapConfig, TrainConfig
from hap.contract import write_partition
from hap_runtime.codec import RequestError
from hap_runtime.config import ModelConfig, RoutingConfig
from hap_runtime.nets import save_model
from hap_runtime.scorer import TwoStageScorer
from hap_runtime.snapshot import SNAPSHOT_FILE, ItemSnapshot
from hap_runtime.spec import DEFAULT_SPEC
from models.data import encode_tables
from models.snapshot import latest_items, write_latest_items, write_snapshot
from models.train import train_expressive, train_light

CFG = HapConfig(train=TrainConfig(epochs=1, batch_requests=64))
ROUTING = RoutingConfig(k=8, m=5, max_candidates=300, max_k=100)
USER_FIELDS = [f.name for f in DEFAULT_SPEC.features if f.side == "user"]
ITEM_FIELDS = [f.name for f in DEFAULT_SPEC.side("item")]


@pytest.fixture(scope="module")
def two_days(small_day, tmp_path_factory):
    """The small day twice; on the second, every item's `item_ctr_7d` doubled (capped at 1)."""
    root = tmp_path_factory.mktemp("data")
    later = small_day.candidates.set_column(
        small_day.candidates.schema.get_field_index("item_ctr_7d"), "item_ctr_7d",
        pc.min_element_wise(pc.multiply(small_day.candidates["item_ctr_7d"], 2.0), 1.0),
    )  # fmt: skip
    for ds, cands in (("2026-11-20", small_day.candidates), ("2026-11-21", later)):
        write_partition(root, "requests", ds, small_day.requests)
        write_partition(root, "candidates", ds, cands)
    return root, later


def test_the_snapshot_keeps_each_items_last_row_over_the_window(two_days):
    root, later = two_days
    items = latest_items(root, ["2026-11-20", "2026-11-21"], DEFAULT_SPEC)
    ids = later["item_id"].to_numpy()
    assert items.num_rows == len(np.unique(ids)) and items.column_names == ITEM_FIELDS
    last = {}
    for i, v in zip(ids, later["item_ctr_7d"].to_numpy(), strict=True):
        last[i] = v  # the later day's last row of each item wins
    got = dict(zip(items["item_id"].to_numpy(), items["item_ctr_7d"].to_numpy(), strict=True))
    assert got == pytest.approx(last)
    assert latest_items(root, [], DEFAULT_SPEC).num_rows == 0
    merged_often = latest_items(root, ["2026-11-20", "2026-11-21"], DEFAULT_SPEC, merge_rows=50)
    assert merged_often.sort_by("item_id").equals(items.sort_by("item_id"))  # merging in parts changes nothing


def _version(small_day, root, tmp, light_cfg: ModelConfig):
    """A model folder as the daily run writes it, its light model trained with ``light_cfg``."""
    cfg = dataclasses.replace(CFG, light=light_cfg)
    data = encode_tables(small_day.requests, small_day.candidates, DEFAULT_SPEC, "click")
    light = train_light(data, cfg, DEFAULT_SPEC)[0]
    save_model(light, tmp / "light")
    write_latest_items(root, ["2026-11-20", "2026-11-21"], DEFAULT_SPEC, tmp)  # what prepare keeps
    n = write_snapshot(light, tmp, tmp / "light")
    save_model(train_expressive(data, cfg, DEFAULT_SPEC, light=light)[0], tmp / "expressive")
    (tmp / "routing.json").write_text(json.dumps(asdict(ROUTING)))
    return light, n


@pytest.mark.parametrize(
    ("arch", "members"), [("two_tower", 1), ("ranktower", 1), ("interaction", 1), ("two_tower", 2)]
)
def test_a_request_by_item_ids_answers_what_the_same_items_with_their_features_answer(
    small_day, two_days, tmp_path, arch, members
):
    """Also for an ensemble: its stored item vectors are its members' stacked, read member by member."""
    root, later = two_days
    light, n = _version(small_day, root, tmp_path, ModelConfig(arch=arch, members=members))
    snapshot = ItemSnapshot.load(tmp_path / "light" / SNAPSHOT_FILE)
    assert n == len(snapshot) == len(np.unique(later["item_id"].to_numpy()))
    if arch == "interaction":
        assert snapshot.vectors is None  # features only: its item side needs the request
    else:  # the stored vectors are what the model computes on the fly
        with torch.no_grad():
            fly = light.eval().item_side(snapshot.item_x)
        assert torch.allclose(snapshot.vectors, fly, atol=1e-6)
    scorer = TwoStageScorer(tmp_path)
    items = latest_items(root, ["2026-11-20", "2026-11-21"], DEFAULT_SPEC).slice(0, 40)
    user = {k: small_day.requests.slice(0, 1).to_pylist()[0][k] for k in USER_FIELDS}
    by_features = scorer({"user": user, "candidates": items.to_pylist(), "k": 0, "m": 40})
    by_id = scorer({"user": user, "item_ids": items["item_id"].to_pylist(), "k": 0, "m": 40})
    assert [it["item_id"] for it in by_id["items"]] == [it["item_id"] for it in by_features["items"]]
    assert np.allclose([it["score"] for it in by_id["items"]], [it["score"] for it in by_features["items"]],
                       atol=1e-5)  # fmt: skip
    ids = items["item_id"].to_pylist()
    twice = scorer({"user": user, "item_ids": ids[:3] + ids[:1], "k": 0, "m": 3})
    assert twice["duplicates"] == 1 and twice["n_candidates"] == 3


def test_an_id_outside_the_snapshot_is_refused_by_name_and_a_version_without_one_says_so(small_day, two_days, tmp_path):
    root, later = two_days
    _version(small_day, root, tmp_path, ModelConfig(arch="two_tower"))
    scorer = TwoStageScorer(tmp_path)
    user = {k: small_day.requests.slice(0, 1).to_pylist()[0][k] for k in USER_FIELDS}
    known = int(later["item_id"][0].as_py())
    unknown = int(pc.max(later["item_id"]).as_py()) + 1
    with pytest.raises(RequestError) as err:
        scorer.parse({"user": user, "item_ids": [known, unknown]})
    assert (err.value.field, err.value.kind, err.value.status) == ("item_ids[1]", "unknown_item", 400)
    assert f"item {unknown} is not in this version's item snapshot" in err.value.message
    with pytest.raises(RequestError) as err:
        scorer.parse({"user": user, "item_ids": [known], "candidates": []})
    assert err.value.field == "item_ids" and err.value.kind == "unknown_field"
    (tmp_path / "light" / SNAPSHOT_FILE).unlink()  # a version trained before snapshots existed
    with pytest.raises(RequestError, match="carries no item snapshot"):
        TwoStageScorer(tmp_path).parse({"user": user, "item_ids": [known]})


def test_a_snapshot_that_is_not_the_models_is_refused_at_load(small_day, two_days, tmp_path):
    root, _ = two_days
    _version(small_day, root, tmp_path, ModelConfig(arch="two_tower"))
    path = tmp_path / "light" / SNAPSHOT_FILE
    good = ItemSnapshot.load(path)
    for bad, why in (
        (ItemSnapshot(good.item_id, good.item_x[:, :3], good.vectors), "features of shape"),
        (ItemSnapshot(good.item_id, good.item_x + 10**6, good.vectors), "outside the model's tables"),
        (ItemSnapshot(good.item_id, good.item_x, None), "absent for a two_tower"),
        (ItemSnapshot(good.item_id, good.item_x, good.vectors[:, :5]), "item vectors of shape"),
    ):
        bad.save(path)
        with pytest.raises(ValueError, match=why):
            TwoStageScorer(tmp_path)


def test_the_snapshot_finds_ids_by_value_and_holds_each_once():
    snap = ItemSnapshot(torch.tensor([7, 3, 5]), torch.tensor([[7], [3], [5]]), None)
    assert snap.item_id.tolist() == [3, 5, 7]
    assert snap.rows(torch.tensor([5, 4, 7, 100])).tolist() == [1, -1, 2, -1]
    with pytest.raises(ValueError, match="once"):
        ItemSnapshot(torch.tensor([1, 1]), torch.zeros((2, 1), dtype=torch.long), None)
