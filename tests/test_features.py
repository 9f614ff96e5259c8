import numpy as np

from hap.features import DEFAULT_SPEC, FeatureSpec, encode_column, encode_sequences, hash_ids


def test_ids_hash_into_table_and_are_stable():
    h = hash_ids(np.array([1, 2, 10**12, -5]), 100)
    assert ((h >= 1) & (h <= 100)).all()
    assert (hash_ids(np.array([1, 2, 10**12, -5]), 100) == h).all()


def test_unknown_categories_and_missing_numbers_map_to_reserved_zero():
    ctype = DEFAULT_SPEC["content_type"]
    assert list(encode_column(ctype, ["video", "podcast"], DEFAULT_SPEC)) == [2, 0]
    cat = DEFAULT_SPEC["category"]
    assert list(encode_column(cat, [0, 31, 32, -1], DEFAULT_SPEC)) == [1, 32, 0, 0]
    age = DEFAULT_SPEC["item_age_hours"]
    enc = encode_column(age, [0.5, 2.0, float("nan"), 1e6], DEFAULT_SPEC)
    assert enc[2] == 0 and enc[0] == 1 and enc[-1] == age.table_size - 1


def test_sequences_are_padded_and_truncated():
    seq = encode_sequences([[5, 6], [], list(range(1, 200))], DEFAULT_SPEC)
    assert seq.shape == (3, DEFAULT_SPEC.sequence.max_len)
    assert (seq[0, :2] > 0).all() and (seq[0, 2:] == 0).all()
    assert (seq[1] == 0).all()
    assert (seq[2] > 0).all()


def test_spec_round_trips():
    assert FeatureSpec.from_dict(DEFAULT_SPEC.to_dict()) == DEFAULT_SPEC
