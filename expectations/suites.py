"""The expectation suites: built here from the data contract and the feature spec, committed as GX
suite JSON under ``expectations/gx/expectations/`` (kept fresh by a test), and read from there —
read-only — by every validation.

Everything a deployment configures (the composition bounds, the day-over-day bands) enters as a
GX suite parameter (``{"$PARAMETER": …}``) filled in per run, so the committed suites hold for any
``$HAP_CONFIG``. Four batches per day (``expectations.derived`` builds three of them):

- ``requests``: the raw requests partition (one row per request: small);
- ``schema``: expected vs observed Arrow type of every contract column;
- ``candidate_values``: the candidates table compacted per column and source;
- ``per_request``: counts, bounds and integrity per request id;
- ``daily``: the day's aggregates against their bands.

Regenerate after changing the contract or the spec: ``python -m expectations.suites``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from expectations.derived import SHARE_STATS, mode_features
from hap import SOURCES
from hap.contract import LABEL_COLUMNS, POSITION_COLUMNS
from hap_runtime.spec import DEFAULT_SPEC, Feature, FeatureSpec

SUITES_DIR = Path(__file__).parent / "gx" / "expectations"
BATCHES = ("requests", "schema", "candidate_values", "per_request", "daily")
VOLUME_STATS = ("request_rows", "candidate_rows")


def daily_stat_names(spec: FeatureSpec = DEFAULT_SPEC) -> tuple[str, ...]:
    """The ``daily`` batch's columns, each banded by ``<name>_min`` / ``<name>_max`` parameters."""
    base = (*VOLUME_STATS, "positive_rate", "leakage_share", *SHARE_STATS, "carryover_share", "request_id_reuse_share")
    return base + tuple(f"mode_share_{f.name}" for f in mode_features(spec))


def _param(name: str) -> dict[str, str]:
    return {"$PARAMETER": name}


def _request_feature_checks(gxe, feats: tuple[Feature, ...]) -> list:
    out = []
    for f in feats:
        out.append(gxe.ExpectColumnValuesToNotBeNull(column=f.name))  # NaN counts as null
        if f.vocab:
            out.append(gxe.ExpectColumnValuesToBeInSet(column=f.name, value_set=list(f.vocab)))
        elif f.low is not None or f.high is not None:
            out.append(gxe.ExpectColumnValuesToBeBetween(column=f.name, min_value=f.low, max_value=f.high))
    return out


def build_suites(spec: FeatureSpec = DEFAULT_SPEC) -> dict[str, list]:
    import great_expectations.expectations as gxe
    from great_expectations.expectations.row_conditions import Column

    column, source = Column("column"), Column("source")
    present = ["value", "min", "max"]  # a `null` stat row means some values were null or NaN

    def where(name: str, src=None):
        return column == name if src is None else (column == name) & src

    item_checks = []
    for f in spec.side("item"):
        item_checks.append(
            gxe.ExpectColumnValuesToBeInSet(column="stat", value_set=present, row_condition=where(f.name))
        )
        if f.vocab:
            item_checks.append(
                gxe.ExpectColumnValuesToBeInSet(column="value", value_set=list(f.vocab), row_condition=where(f.name))
            )
        elif f.low is not None or f.high is not None:
            item_checks.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column="num", min_value=f.low, max_value=f.high, row_condition=where(f.name)
                )
            )
    user_feats = spec.side("user")
    daily = [
        gxe.ExpectColumnValuesToBeBetween(column=name, min_value=_param(f"{name}_min"), max_value=_param(f"{name}_max"))
        for name in daily_stat_names(spec)
    ]
    return {
        "requests": [
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectColumnValuesToNotBeNull(column="request_id"),
            gxe.ExpectColumnValuesToNotBeNull(column="ts"),
            *_request_feature_checks(gxe, user_feats),
        ],
        "schema": [
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectColumnPairValuesToBeEqual(column_A="expected_type", column_B="observed_type"),
        ],
        "candidate_values": [
            gxe.ExpectTableRowCountToBeBetween(min_value=1),  # an empty candidates table profiles to nothing
            gxe.ExpectColumnValuesToBeInSet(column="stat", value_set=present, row_condition=where("source")),
            gxe.ExpectColumnValuesToBeInSet(column="value", value_set=list(SOURCES), row_condition=where("source")),
            *[
                gxe.ExpectColumnValuesToBeInSet(column="value", value_set=["0", "1"], row_condition=where(c))
                for c in ("click", "like", "comment")
            ],
            gxe.ExpectColumnValuesToBeBetween(column="num", min_value=0, row_condition=where("dwell_ms")),
            # labels only on exposed rows
            gxe.ExpectColumnValuesToBeBetween(
                column="num",
                min_value=0,
                max_value=0,
                row_condition=column.is_in(list(LABEL_COLUMNS)) & (source != "expose"),
            ),
            # stage positions must match the source that logged the row
            gxe.ExpectColumnValuesToBeBetween(
                column="num", min_value=_param("rank_pos_min"), row_condition=where("rank_pos", source == "rank")
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column="num",
                min_value=_param("prerank_pos_min"),
                row_condition=where("prerank_pos", source == "prerank"),
            ),
            gxe.ExpectColumnValuesToBeInSet(
                column="stat", value_set=["null"], row_condition=where("rank_pos", source == "prerank")
            ),
            gxe.ExpectColumnValuesToBeInSet(
                column="stat",
                value_set=["null"],
                row_condition=column.is_in(list(POSITION_COLUMNS)) & (source == "global"),
            ),
            gxe.ExpectColumnValuesToBeInSet(
                column="stat",
                value_set=present,
                row_condition=column.is_in(list(POSITION_COLUMNS)) & (source == "expose"),
            ),
            *item_checks,
        ],
        "per_request": [
            gxe.ExpectColumnValuesToBeBetween(column="id_rows", min_value=1, max_value=1),  # known, and unique
            gxe.ExpectColumnValuesToBeBetween(column="duplicate_rows", max_value=0),
            gxe.ExpectColumnValuesToBeBetween(
                column="n_expose", min_value=_param("expose_min"), max_value=_param("expose_max")
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column="n_rank", min_value=_param("rank_min"), max_value=_param("rank_max")
            ),
            gxe.ExpectColumnValuesToBeBetween(
                column="n_prerank", min_value=_param("prerank_min"), max_value=_param("prerank_max")
            ),
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="n_global", column_B="n_global_min", or_equal=True),
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="n_global_max", column_B="n_global", or_equal=True),
            gxe.ExpectColumnValuesToBeInSet(column="ts_day", value_set=_param("ds_set")),
            gxe.ExpectColumnValuesToBeBetween(column="history_len", min_value=0, max_value=spec.sequence.max_len),
            gxe.ExpectColumnValuesToBeBetween(column="history_nulls", max_value=0),
        ],
        "daily": daily,
    }


def _record(e) -> dict[str, Any]:
    cfg = e.configuration.to_json_dict()
    cfg.pop("id", None)
    return cfg


def render(spec: FeatureSpec = DEFAULT_SPEC) -> dict[str, str]:
    """Each suite as the JSON committed under ``SUITES_DIR``."""
    return {
        name: json.dumps(
            {"name": name, "expectations": [_record(e) for e in exps], "meta": {}}, indent=2, sort_keys=True
        )
        + "\n"
        for name, exps in build_suites(spec).items()
    }


def load_committed(name: str) -> dict[str, Any]:
    """A committed suite as GX suite JSON (read only)."""
    return json.loads((SUITES_DIR / f"{name}.json").read_text())


def main() -> None:
    SUITES_DIR.mkdir(parents=True, exist_ok=True)
    for old in SUITES_DIR.glob("*.json"):
        old.unlink()
    for name, text in render().items():
        (SUITES_DIR / f"{name}.json").write_text(text)
        print(f"wrote {SUITES_DIR / name}.json")


if __name__ == "__main__":
    main()
