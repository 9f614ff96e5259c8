"""The expectation suites, built from the data contract, the feature spec and the composition.

Six batches per day:
- ``requests``/``candidates``: the raw partitions;
- ``schema``: one row per contract column, expected vs observed Arrow type;
- ``per_request``: pyarrow aggregates per request (source counts, positives, timestamp day, history length);
- ``integrity``: each distinct candidate ``request_id`` and whether ``requests`` knows it;
- ``daily``: the day's volume and positive rate, checked against bands around the trailing days.
"""

from __future__ import annotations

from hap import SOURCES
from hap.config import Composition
from hap.contract import LABEL_COLUMNS, candidates_schema, requests_schema
from hap_runtime.spec import DEFAULT_SPEC, Feature

BATCHES = ("requests", "candidates", "schema", "per_request", "integrity", "daily")


def _feature_checks(gxe, feats: tuple[Feature, ...]) -> list:
    out = []
    for f in feats:
        out.append(gxe.ExpectColumnValuesToNotBeNull(column=f.name))  # NaN counts as null
        if f.vocab:
            out.append(gxe.ExpectColumnValuesToBeInSet(column=f.name, value_set=list(f.vocab)))
        elif f.low is not None or f.high is not None:
            out.append(gxe.ExpectColumnValuesToBeBetween(column=f.name, min_value=f.low, max_value=f.high))
    return out


def build_suites(comp: Composition) -> dict[str, list]:
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    spec = DEFAULT_SPEC
    src = Column("source")
    positions = ("retrieval_pos", "prerank_pos", "rank_pos")
    user_feats = tuple(f for f in spec.features if f.side == "user" and f.kind != "sequence")
    return {
        "requests": [
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectTableColumnsToMatchSet(column_set=requests_schema().names, exact_match=True),
            gxe.ExpectColumnValuesToNotBeNull(column="request_id"),
            gxe.ExpectColumnValuesToBeUnique(column="request_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="ts"),
            *_feature_checks(gxe, user_feats),
        ],
        "candidates": [
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectTableColumnsToMatchSet(column_set=candidates_schema().names, exact_match=True),
            gxe.ExpectColumnValuesToNotBeNull(column="request_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="source"),
            gxe.ExpectColumnValuesToBeInSet(column="source", value_set=list(SOURCES)),
            gxe.ExpectCompoundColumnsToBeUnique(column_list=["request_id", "item_id"]),
            *[gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[0, 1]) for c in ("click", "like", "comment")],
            gxe.ExpectColumnValuesToBeBetween(column="dwell_ms", min_value=0),
            *[
                gxe.ExpectColumnValuesToBeInSet(column=c, value_set=[0], row_condition=src != "expose")
                for c in LABEL_COLUMNS
            ],
            # stage positions must match the source that logged the row
            gxe.ExpectColumnValuesToBeBetween(
                column="rank_pos", min_value=comp.rank_cutoff + 1, row_condition=src == "rank"
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column="prerank_pos", min_value=comp.prerank_cutoff + 1, row_condition=src == "prerank"
            ),
            gxe.ExpectColumnValuesToBeNull(column="rank_pos", row_condition=src == "prerank"),
            *[gxe.ExpectColumnValuesToBeNull(column=c, row_condition=src == "global") for c in positions],
            *[gxe.ExpectColumnValuesToNotBeNull(column=c, row_condition=src == "expose") for c in positions],
            *_feature_checks(gxe, spec.side("item")),
        ],
        "schema": [
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectColumnPairValuesToBeEqual(column_A="expected_type", column_B="observed_type"),
        ],
        "per_request": [
            gxe.ExpectColumnValuesToBeBetween(column="n_expose", min_value=1),
            gxe.ExpectColumnValuesToBeBetween(
                column="n_rank", min_value=comp.rank_negatives, max_value=comp.rank_negatives
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column="n_prerank", min_value=comp.prerank_negatives, max_value=comp.prerank_negatives
            ),
            gxe.ExpectColumnPairValuesToBeEqual(column_A="n_global", column_B="n_global_expected"),
            gxe.ExpectColumnValuesToBeInSet(column="ts_day", value_set={"$PARAMETER": "ds_set"}),
            gxe.ExpectColumnValuesToBeBetween(column="history_len", min_value=0, max_value=spec.sequence.max_len),
        ],
        "integrity": [gxe.ExpectColumnValuesToBeInSet(column="known_request", value_set=[True])],
        "daily": [
            gxe.ExpectColumnValuesToBeBetween(
                column="candidate_rows", min_value={"$PARAMETER": "rows_min"}, max_value={"$PARAMETER": "rows_max"}
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column="positive_rate",
                min_value={"$PARAMETER": "positive_rate_min"},
                max_value={"$PARAMETER": "positive_rate_max"},
            ),
        ],
    }
