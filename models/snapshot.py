"""The training window's item snapshot: prepare keeps each item's latest raw features
(``ITEMS_FILE``), the light model's training step encodes them and adds the item vectors of a
decoupled model (``hap_runtime.snapshot``), so serving can score candidates sent by id."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from hap.contract import partition_dir
from hap_runtime.config import DECOUPLED
from hap_runtime.encode import encode_side
from hap_runtime.nets import PreRanker
from hap_runtime.snapshot import SNAPSHOT_FILE, ItemSnapshot
from hap_runtime.spec import FeatureSpec
from models.data import _columns

ITEMS_FILE = "items.parquet"  # in the prepared folder
ROW = "__row"


def latest_items(data_root: str | Path, days: list[str], spec: FeatureSpec, merge_rows: int = 1_000_000) -> pa.Table:
    """Each item's raw features from its last row over ``days`` (oldest first: a later day wins,
    within a day the later row). Files are read as training reads them (sorted, record batches); each
    batch is cut to its last row per item and the kept parts are merged when they outgrow
    ``merge_rows`` or twice the items merged so far, so memory follows the distinct items and each
    row is grouped a bounded number of times."""
    names = [f.name for f in spec.side("item")]
    latest: pa.Table | None = None
    pending: list[pa.Table] = []
    for day in days:
        for path in sorted(partition_dir(data_root, "candidates", day).glob("*.parquet")):
            for batch in pq.ParquetFile(path).iter_batches(columns=names):
                part = pa.Table.from_batches([batch])
                pending.append(_last_per_item(part.filter(pc.is_valid(part["item_id"]))))
                if sum(t.num_rows for t in pending) > max(merge_rows, 2 * (latest.num_rows if latest else 0)):
                    latest, pending = _merge(latest, pending), []
    latest = _merge(latest, pending)
    return latest if latest is not None else pa.table({n: pa.array([], pa.int64()) for n in names})


def _merge(latest: pa.Table | None, pending: list[pa.Table]) -> pa.Table | None:
    parts = ([latest] if latest is not None else []) + pending
    return _last_per_item(pa.concat_tables(parts, promote_options="permissive")) if parts else None


def _last_per_item(table: pa.Table) -> pa.Table:
    """The last row of each item_id, in row order."""
    table = table.append_column(ROW, pa.array(np.arange(table.num_rows)))
    last = table.group_by("item_id", use_threads=False).aggregate([(ROW, "max")])[f"{ROW}_max"]
    return table.take(pa.array(np.sort(last.to_numpy()))).drop_columns([ROW])


def write_latest_items(data_root: str | Path, days: list[str], spec: FeatureSpec, out: str | Path) -> int:
    table = latest_items(data_root, days, spec)
    pq.write_table(table, Path(out) / ITEMS_FILE)
    return table.num_rows


@torch.no_grad()
def write_snapshot(model: PreRanker, prepared_dir: str | Path, model_dir: str | Path, chunk: int = 65_536) -> int:
    """Encode the prepared folder's latest items with the model's spec, add a decoupled model's item
    vectors, and save them in ``model_dir`` (``SNAPSHOT_FILE``); 0 when prepare kept no items."""
    src = Path(prepared_dir) / ITEMS_FILE
    if not src.exists():
        return 0
    table = pq.read_table(src)
    item_x = encode_side(_columns(table, model.spec, "item"), model.spec, "item")  # (S, Fi)
    vectors = None
    if model.cfg.arch in DECOUPLED:
        was = model.training
        model.eval()
        parts = [model.item_side(item_x[i : i + chunk]) for i in range(0, len(item_x), chunk)]
        model.train(was)
        vectors = torch.cat(parts) if parts else None
    item_id = torch.from_numpy(table["item_id"].to_numpy(zero_copy_only=False).astype(np.int64))
    ItemSnapshot(item_id, item_x, vectors).save(Path(model_dir) / SNAPSHOT_FILE)
    return len(item_id)
