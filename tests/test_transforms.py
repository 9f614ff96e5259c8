"""Fitted feature transforms: fitted on training rows only, bounded, and the same in training, the
evaluation and the archive's scorer (no train/serve skew)."""

import dataclasses
import json
from collections import Counter
from dataclasses import asdict

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from hap.config import HapConfig, SimConfig, TransformConfig
from hap.contract import partition_dir, read_partition, split_mask
from hap_runtime.spec import DEFAULT_SPEC
from models.transforms import _Thinned, fit_spec, quantile_boundaries, top_vocabulary

DS = "2026-11-22"
HELD = 0.4  # held-out + validation share of the run's day


def test_quantile_boundaries_merge_ties_and_keep_a_constant_column():
    assert quantile_boundaries(np.full(500, 3.0), 16) == (3.0,)
    assert quantile_boundaries(np.zeros(0), 16) == ()
    skewed = np.concatenate([np.zeros(900), np.linspace(0.01, 0.1, 100)])  # 90% ties at 0
    bounds = quantile_boundaries(skewed, 16)
    assert bounds[0] == 0.0 and list(bounds) == sorted(set(bounds)) and len(bounds) < 15
    even = quantile_boundaries(np.arange(1000.0), 4)
    assert even == pytest.approx((249.75, 499.5, 749.25))


def test_thinning_holds_at_most_its_cap_and_stays_uniform():
    sample = _Thinned(cap=1000)
    for start in range(0, 100_000, 7_919):  # chunks of uneven size
        sample.add(np.arange(start, min(start + 7_919, 100_000), dtype=np.float64))
    values = sample.values()
    assert 500 <= len(values) <= 1000
    assert np.all(values % sample.stride == 0)  # every stride-th position, whatever the chunking
    assert np.median(values) == pytest.approx(50_000, rel=0.03)


def test_vocabulary_is_the_most_frequent_values_ties_by_value():
    counts = Counter({"web": 5, "ios": 9, "android": 9, "tv": 1})
    assert top_vocabulary(counts, 3) == ("android", "ios", "web")


@pytest.fixture(scope="module")
def day_root(tmp_path_factory):
    from samples.simulator import CascadeSimulator

    root = tmp_path_factory.mktemp("transforms")
    CascadeSimulator(SimConfig(n_users=800, n_items=4000)).write_days(root, DS, 1, 600)
    return root


def _rewrite(root, tmp, held: bool):
    """A copy of the day where the candidates of held-out (or of trained) requests get extreme values."""
    import shutil

    copy = tmp / ("held" if held else "trained")
    shutil.copytree(root, copy)
    cands = read_partition(copy, "candidates", DS)
    mask = split_mask(np.asarray(cands["request_id"].to_pylist(), dtype=str), 0.0, HELD)
    pick = pa.array(mask if held else ~mask)
    ctr = pc.if_else(pick, pa.scalar(0.99), cands["item_ctr_7d"].cast(pa.float64()))
    cands = cands.set_column(
        cands.schema.get_field_index("item_ctr_7d"), "item_ctr_7d", ctr.cast(cands["item_ctr_7d"].type)
    )
    pq.write_table(cands, partition_dir(copy, "candidates", DS) / "part-0.parquet")
    return copy


def test_boundaries_and_vocabularies_come_from_training_rows_only(day_root, tmp_path):
    cfg = TransformConfig(fit=True, buckets=8)
    spec = fit_spec(day_root, [DS], DS, HELD, DEFAULT_SPEC, cfg)
    ctr = spec["item_ctr_7d"]
    assert ctr.boundaries != DEFAULT_SPEC["item_ctr_7d"].boundaries and 1 <= len(ctr.boundaries) <= 7
    assert (ctr.low, ctr.high) == (DEFAULT_SPEC["item_ctr_7d"].low, DEFAULT_SPEC["item_ctr_7d"].high)  # declared
    assert set(spec["device"].vocab) <= set(DEFAULT_SPEC["device"].vocab)
    assert spec["item_id"] == DEFAULT_SPEC["item_id"]  # ids stay hashed as declared
    # a held-out value never moves a boundary; a trained one does
    assert fit_spec(_rewrite(day_root, tmp_path, held=True), [DS], DS, HELD, DEFAULT_SPEC, cfg) == spec
    moved = fit_spec(_rewrite(day_root, tmp_path, held=False), [DS], DS, HELD, DEFAULT_SPEC, cfg)
    assert moved["item_ctr_7d"].boundaries != ctr.boundaries
    assert fit_spec(day_root, [DS], DS, HELD, DEFAULT_SPEC, dataclasses.replace(cfg, fit=False)) == DEFAULT_SPEC


def test_transform_config_is_checked_at_load():
    with pytest.raises(ValueError, match="buckets"):
        HapConfig.from_dict({"transform": {"buckets": 0}})
    with pytest.raises(ValueError, match="unknown TransformConfig keys"):
        HapConfig.from_dict({"transform": {"bucket": 8}})


def test_archive_scorer_scores_a_request_exactly_as_training_did(day_root, tmp_path):
    """prepare fits the spec; the model trained on its shards carries it; the scorer the archive
    runs (``TwoStageScorer`` over the model folder) encodes a raw request with it and gives the same
    light scores as evaluation's encoding of the same held-out rows."""
    import shutil

    from hap.workspace import Workspace
    from hap_runtime.config import RoutingConfig
    from hap_runtime.nets import save_model
    from hap_runtime.scorer import TwoStageScorer
    from models.evaluation import held_out_views
    from models.metrics import predict
    from models.prepare import TRAIN_DIR, prepare, prepared_spec
    from models.stream import read_shards, shard_files
    from models.train import train_model

    ws = Workspace(tmp_path / "ws")
    shutil.copytree(day_root, ws.data)
    ws.record_validation(DS, {"success": True})
    base = HapConfig(window_days=1, transform=TransformConfig(fit=True))
    cfg = dataclasses.replace(base, train=dataclasses.replace(base.train, epochs=1, batch_requests=64))
    prepare(str(ws.root), DS, cfg, str(tmp_path / "prep"))
    spec = prepared_spec(tmp_path / "prep")
    assert spec != DEFAULT_SPEC
    light, _ = train_model(
        read_shards(shard_files(tmp_path / "prep" / TRAIN_DIR)), cfg.light, cfg.light_loss, cfg.train, spec
    )
    model_dir = tmp_path / "model"
    save_model(light, model_dir / "light")
    save_model(light, model_dir / "expressive")
    (model_dir / "routing.json").write_text(json.dumps(asdict(RoutingConfig(k=0, m=1000))))
    scorer = TwoStageScorer(model_dir)
    assert scorer.spec == spec  # the archive's transforms are training's

    holdout, _, raw = held_out_views(tmp_path / "prep", scorer.spec, cfg)
    expected = predict(light, holdout)
    requests = pq.read_table(sorted((tmp_path / "prep" / "holdout").glob("ds=*/raw-requests-*.parquet"))[0])
    user = requests.slice(0, 1).to_pylist()[0]
    rows = np.flatnonzero(np.asarray(raw["request_id"].to_pylist()) == user["request_id"])
    items = raw.take(pa.array(rows)).select([f.name for f in spec.side("item")]).to_pylist()
    body = {"user": {f.name: user[f.name] for f in spec.columns("user")}, "candidates": items}
    answer = scorer(body)
    got = sorted(it["score"] for it in answer["items"])
    first = int(np.flatnonzero(holdout.request_ids == user["request_id"])[0])
    lo, hi = holdout.offsets[first], holdout.offsets[first + 1]
    assert answer["duplicates"] == 0 and len(got) == hi - lo
    assert got == pytest.approx(sorted(expected[lo:hi].tolist()), abs=1e-5)
