import json

import pytest

from registry.store import Registry


def _run(tmp_path, name, weights: bytes):
    run = tmp_path / name
    for part in ("light", "expressive"):
        (run / part).mkdir(parents=True)
        (run / part / "weights.pt").write_bytes(weights)
        (run / part / "history.json").write_text(json.dumps({"seconds": len(name)}))
    (run / "evaluation.json").write_text(json.dumps({"holdout": {"days": ["2026-11-22"]}, "candidate": {}}))
    return run


def test_same_content_same_version_new_content_new_version(workspace, tmp_path):
    reg = Registry(workspace)
    v1 = reg.register("2026-11-22", _run(tmp_path, "a", b"w1"))
    assert reg.register("2026-11-22", _run(tmp_path, "b", b"w1")) == v1  # only timings differ
    v2 = reg.register("2026-11-22", _run(tmp_path, "c", b"w2"))
    assert (v1, v2) == ("20261122.1", "20261122.2")
    assert [m["version"] for m in reg.versions()] == [v1, v2]


def test_production_pointer_remembers_previous(workspace, tmp_path):
    reg = Registry(workspace)
    v1 = reg.register("2026-11-21", _run(tmp_path, "a", b"w1"))
    v2 = reg.register("2026-11-22", _run(tmp_path, "b", b"w2"))
    reg.set_production(v1, "first")
    pointer = reg.set_production(v2, "second")
    assert pointer["previous"] == v1 and reg.production()["version"] == v2
    # a redeploy of the serving version keeps the pointer (and its rollback target) and is on the audit trail
    assert reg.set_production(v2, "redeploy by on-call") == pointer
    events = [json.loads(line) for line in (reg.root / "events.jsonl").read_text().splitlines()]
    assert [e["event"] for e in events] == ["set_production", "set_production", "redeploy"]
    assert (
        events[-1]["version"] == v2 and events[-1]["previous"] == v1 and events[-1]["reason"] == "redeploy by on-call"
    )
    with pytest.raises(KeyError):
        reg.set_production("19990101.1", "nope")


def test_index_lists_versions_with_gate_lineage_and_serving_marker(workspace, tmp_path):
    reg = Registry(workspace)
    run = _run(tmp_path, "a", b"w1")
    (run / "decision.json").write_text(json.dumps({"passed": True}))
    v1 = reg.register("2026-11-22", run)
    v2 = reg.register("2026-11-23", _run(tmp_path, "b", b"w2"))
    reg.set_production(v1, "first")
    rows = [line for line in (reg.root / "index.md").read_text().splitlines() if line.startswith("| [")]
    assert len(rows) == 2
    assert v1 in rows[0] and "| pass |" in rows[0] and "| production |" in rows[0]
    assert rows[0].rstrip().endswith("| [ds=2026-11-22](../reports/ds=2026-11-22/index.html) |")  # the day's report
    assert v2 in rows[1] and "| — |" in rows[1] and "production" not in rows[1]
