"""Lineage: the code revision, config hash, partition fingerprints and actor a version records."""

import json
import subprocess
from pathlib import Path

import pytest

from hap import lineage
from hap.config import HapConfig, SimConfig
from hap.contract import partition_dir
from hap.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


def test_code_revision_is_this_checkouts_commit_or_the_images(monkeypatch):
    monkeypatch.delenv("HAP_CODE_REVISION", raising=False)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    lineage.code_revision.cache_clear()
    rev = lineage.code_revision()
    assert rev["commit"] == head.stdout.strip() and rev["source"] == "git" and isinstance(rev["dirty"], bool)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HAP_CODE_REVISION", "0123abcd")
        lineage.code_revision.cache_clear()
        assert lineage.code_revision() == {"commit": "0123abcd", "dirty": False, "source": "HAP_CODE_REVISION"}
    lineage.code_revision.cache_clear()


def test_config_hash_follows_the_settings_not_their_spelling():
    cfg = HapConfig()
    same = '{"window_days": 3, ' + cfg.to_json()[1:].replace('"window_days": 3, ', "")
    assert lineage.config_hash(cfg.to_json()) == lineage.config_hash(same)
    other = HapConfig.from_dict({"window_days": 4})
    assert lineage.config_hash(cfg.to_json()) != lineage.config_hash(other.to_json())


def test_partition_fingerprints_change_with_the_bytes(tmp_path):
    from samples.simulator import CascadeSimulator

    CascadeSimulator(SimConfig(n_users=200, n_items=500)).write_days(tmp_path, "2026-01-01", 1, 40)
    before = lineage.partition_fingerprint(tmp_path, "candidates", "2026-01-01")
    assert before["files"] >= 1 and before["bytes"] > 0 and len(before["sha256"]) == 16
    assert lineage.partition_fingerprint(tmp_path, "candidates", "2026-01-01") == before  # stable
    part = sorted(partition_dir(tmp_path, "candidates", "2026-01-01").glob("*.parquet"))[0]
    part.write_bytes(part.read_bytes() + b"\0")
    assert lineage.partition_fingerprint(tmp_path, "candidates", "2026-01-01")["sha256"] != before["sha256"]
    assert lineage.partition_fingerprint(tmp_path, "candidates", "2026-01-02") is None


def test_run_lineage_names_every_window_day_with_its_verdict(tmp_path):
    from samples.simulator import CascadeSimulator
    from workflow.flow import run_lineage

    ws = Workspace(tmp_path)
    CascadeSimulator(SimConfig(n_users=200, n_items=500)).write_days(ws.data, "2026-01-01", 2, 40)
    ws.record_validation("2026-01-02", {"ds": "2026-01-02", "success": False, "status": "quarantined", "tables": {}})
    record = run_lineage("2026-01-02", ws, HapConfig.from_dict({"window_days": 3}))
    assert [d["ds"] for d in record["data"]] == ["2025-12-31", "2026-01-01", "2026-01-02"]
    assert record["data"][0]["candidates"] is None and record["data"][0]["validation"] is None  # no data that day
    assert record["data"][2]["validation"] == "quarantined" and record["data"][2]["requests"]["files"] >= 1
    from importlib import metadata

    assert record["libraries"]["torch"] == metadata.version("torch") and record["libraries"]["kfp"] == metadata.version(
        "kfp"
    )
    assert record["code"]["commit"] and len(record["config_sha256"]) == 16


def test_a_change_of_orchestration_alone_keeps_the_training_inputs():
    """The gate policy's path (a per-test file in test_ops) once made a rerun train again, and a retrain
    is not always bit-identical on a busy machine: the rerun registered a second version of the day."""
    from workflow.flow import TRAINING_INPUTS, training_config_hash

    base = HapConfig.from_dict({"window_days": 2})
    judged_elsewhere = HapConfig.from_dict({"window_days": 2, "orchestration": {"gate_policy": "/tmp/other.yaml"}})
    assert training_config_hash(base) == training_config_hash(judged_elsewhere)
    assert training_config_hash(base) != training_config_hash(HapConfig.from_dict({"window_days": 3}))
    assert "training_config_sha256" in TRAINING_INPUTS and "config_sha256" not in TRAINING_INPUTS


def test_actor_names_the_airflow_run_or_the_user(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CTX_DAG_RUN_ID", raising=False)
    assert lineage.actor().endswith("(hap CLI)")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_RUN_ID", "scheduled__2026-11-23")
    monkeypatch.setenv("AIRFLOW_CTX_DAG_ID", "hap_daily")
    monkeypatch.setenv("AIRFLOW_CTX_TASK_ID", "deploy")
    assert lineage.actor() == "airflow hap_daily/scheduled__2026-11-23 task deploy"


def test_a_run_is_reused_only_for_the_same_inputs_and_intact_outputs(tmp_path):
    from workflow.flow import outputs_hash, reusable_run

    run = tmp_path / "ds=2026-01-02"
    for part in ("light", "expressive"):
        (run / part).mkdir(parents=True)
        (run / part / "weights.pt").write_bytes(part.encode() * 10)
    (run / "evaluation.json").write_text('{"k": 150, "production_version": "20260101.1"}')
    earlier = {"inputs_sha256": "k1", "outputs_sha256": outputs_hash(run), "trained_at": "t", "trained_by": "b"}
    (run / "lineage.json").write_text(json.dumps(earlier))
    assert reusable_run(run, "k1") == earlier
    assert reusable_run(run, "k2") is None  # another input: train again
    (run / "evaluation.json").write_text('{"k": 150, "production_version": "20260102.1"}')
    assert reusable_run(run, "k1") == earlier  # what train itself sets afterwards does not count
    (run / "evaluation.json").write_text('{"k": 100}')
    assert reusable_run(run, "k1") is None  # an evaluation edited since training: train again
    (run / "evaluation.json").write_text('{"k": 150}')
    (run / "light" / "weights.pt").write_bytes(b"tampered")
    assert reusable_run(run, "k1") is None  # outputs changed since training: train again
    assert reusable_run(tmp_path / "absent", "k1") is None


def test_models_are_kept_only_for_the_same_model_inputs_and_intact_weights(tmp_path):
    from registry.store import content_hash
    from workflow.flow import MODEL_INPUTS, TRAINING_INPUTS, reusable_models

    assert set(MODEL_INPUTS) < set(TRAINING_INPUTS)  # what the models are judged against is not a model input
    assert not {"production_at_training", "anchor_at_training"} & set(MODEL_INPUTS)
    run = tmp_path / "ds=2026-01-02"
    for part in ("light", "expressive"):
        (run / part).mkdir(parents=True)
        (run / part / "weights.pt").write_bytes(part.encode() * 10)
    earlier = {"model_inputs_sha256": "m1", "models_sha256": content_hash(run), "trained_at": "t", "trained_by": "b"}
    (run / "lineage.json").write_text(json.dumps(earlier))
    (run / "evaluation.json").write_text('{"k": 100}')  # the evaluation is redone: it does not count
    assert reusable_models(run, "m1") == earlier
    assert reusable_models(run, "m2") is None  # other data, code, config or libraries: train again
    (run / "light" / "weights.pt").write_bytes(b"tampered")
    assert reusable_models(run, "m1") is None  # weights changed since training: train again
    assert reusable_models(tmp_path / "absent", "m1") is None


def test_the_reuse_key_reads_the_training_sources_not_the_commit():
    from workflow.flow import MODEL_INPUTS, inputs_key

    base = {"code": {"commit": "a1", "dirty": False, "training_code_sha256": "t1"}, "training_config_sha256": "c",
            "libraries": {"torch": "2"}, "data": [{"ds": "2026-01-01"}]}  # fmt: skip
    docs_commit = {**base, "code": {**base["code"], "commit": "b2"}}
    edited = {**base, "code": {**base["code"], "training_code_sha256": "t2"}}
    assert inputs_key(docs_commit, MODEL_INPUTS) == inputs_key(base, MODEL_INPUTS)
    assert inputs_key(edited, MODEL_INPUTS) != inputs_key(base, MODEL_INPUTS)
