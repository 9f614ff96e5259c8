"""The one feature encoding (``hap_runtime.encode``) that training and serving share."""

import numpy as np
import torch

from hap_runtime.encode import encode_column, encode_sequences, encode_side, hash_ids
from hap_runtime.spec import DEFAULT_SPEC, FeatureSpec

EXTREMES = [1, 2, 10**12, -5, 0, 2**63 - 1, -(2**63), 0x9E3779B97F4A7C15 - 2**64, 123456789123]


def _reference_hash(v: int, size: int) -> int:
    """The hash in exact integer arithmetic: ((v mod 2**64) * 0x9E3779B97F4A7C15 mod 2**64) >> 33."""
    return ((v % 2**64) * 0x9E3779B97F4A7C15 % 2**64 >> 33) % size + 1


def test_ids_hash_like_exact_unsigned_arithmetic_including_int64_extremes():
    rng = np.random.default_rng(0)
    values = EXTREMES + rng.integers(-(2**63), 2**63 - 1, 2000, dtype=np.int64).tolist()
    for size in (100, 100_000):
        got = hash_ids(values, size).tolist()
        assert got == [_reference_hash(v, size) for v in values]
        assert min(got) >= 1 and max(got) <= size


def test_numpy_columns_and_lists_encode_alike():
    ids = np.array([5, 77, 10**9], dtype=np.int64)
    assert torch.equal(hash_ids(ids, 1000), hash_ids(ids.tolist(), 1000))


def test_unknown_categories_and_missing_numbers_map_to_reserved_zero():
    ctype = DEFAULT_SPEC["content_type"]
    assert encode_column(ctype, ["video", "podcast"]).tolist() == [2, 0]
    cat = DEFAULT_SPEC["category"]
    assert encode_column(cat, [0, 31, 32, -1]).tolist() == [1, 32, 0, 0]
    age = DEFAULT_SPEC["item_age_hours"]
    enc = encode_column(age, [0.5, 2.0, float("nan"), 1e6, float("inf")]).tolist()
    assert enc[2] == 0 and enc[0] == 1 and enc[3] == age.table_size - 1 and enc[4] == 0
    assert encode_column(age, [1.0]).tolist() == [2]  # a value on a boundary goes right, like numpy's side="right"


def test_sequences_are_padded_and_truncated():
    seq = encode_sequences([[5, 6], [], list(range(1, 200))], DEFAULT_SPEC)
    assert seq.shape == (3, DEFAULT_SPEC.sequence.max_len) and seq.dtype == torch.int64
    assert (seq[0, :2] > 0).all() and (seq[0, 2:] == 0).all()
    assert (seq[1] == 0).all()
    assert (seq[2] > 0).all()
    assert encode_sequences([[], []], DEFAULT_SPEC).abs().sum() == 0


def test_side_matrix_follows_spec_order():
    item = {f.name: [3] if not f.vocab else [f.vocab[0]] for f in DEFAULT_SPEC.side("item")}
    x = encode_side(item, DEFAULT_SPEC, "item")
    assert x.shape == (1, len(DEFAULT_SPEC.side("item")))
    assert x[0, 0] == hash_ids([3], DEFAULT_SPEC["item_id"].size)[0]


def test_spec_round_trips():
    assert FeatureSpec.from_dict(DEFAULT_SPEC.to_dict()) == DEFAULT_SPEC


def test_a_side_encodes_like_its_columns_one_by_one():
    """encode_side applies each kind's transform to all its features at once: same indices as
    encode_column per feature, including NaN/inf, boundaries, negatives and unknown strings."""
    rng = np.random.default_rng(0)
    for side in ("user", "item"):
        cols = {}
        for f in DEFAULT_SPEC.side(side):
            if f.vocab:
                cols[f.name] = [[*f.vocab, "unknown"][i % (len(f.vocab) + 1)] for i in range(300)]
            elif f.kind == "bucket":
                x = rng.uniform(-5, 2 * f.boundaries[-1], 300)
                x[: 3 + len(f.boundaries)] = [np.nan, np.inf, -np.inf, *f.boundaries]
                cols[f.name] = x
            else:
                cols[f.name] = rng.integers(-5, 2 * (f.size or 10), 300)
        want = torch.stack([encode_column(f, cols[f.name]) for f in DEFAULT_SPEC.side(side)], dim=1)
        assert torch.equal(encode_side(cols, DEFAULT_SPEC, side), want), side
