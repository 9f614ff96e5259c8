"""The KFP pipeline compiles, and the committed YAML is what the code compiles to."""

import pytest
import yaml

from components.pipeline import COMPILED, compile_pipeline


def test_pipeline_compiles_and_committed_yaml_is_fresh(tmp_path):
    out = compile_pipeline(tmp_path / "pipeline.yaml")
    fresh = yaml.safe_load(out.read_text())
    assert set(fresh["root"]["dag"]["tasks"]) == {
        "prepare-op",
        "train-light-op",
        "train-expressive-op",
        "evaluate-op",
    }
    committed = yaml.safe_load(COMPILED.read_text())
    assert committed == fresh, "components/pipeline.yaml is stale: run `make compile`"


def test_cluster_mode_needs_a_host_and_an_artifact_root():
    from components.pipeline import run_cluster
    from hap.config import KfpConfig

    with pytest.raises(ValueError, match="kfp.host and kfp.pipeline_root"):
        run_cluster(KfpConfig(mode="cluster"), "/ws", "2026-11-22", "{}", "", "/tmp/never")


def test_cluster_outputs_are_found_by_run_id_and_published_through_fsspec(tmp_path):
    """The artifact layout of a KFP backend run under an fsspec pipeline root (here file://)."""
    import fsspec

    from components.pipeline import locate_outputs, publish

    run_id = "7f3c2a"
    base = tmp_path / "root" / "hap-daily-training" / run_id
    for task, output in (("train-light-op", "model"), ("train-expressive-op", "model")):
        (base / task / "4711" / output).mkdir(parents=True)
        (base / task / "4711" / output / "weights.pt").write_bytes(task.encode())
    (base / "evaluate-op" / "4712").mkdir(parents=True)
    (base / "evaluate-op" / "4712" / "evaluation").write_text('{"candidate": {}}')
    (tmp_path / "root" / "hap-daily-training" / "other-run" / "train-light-op").mkdir(parents=True)

    fs, root = fsspec.core.url_to_fs(f"file://{tmp_path / 'root'}")
    found = locate_outputs(fs, root, run_id)
    assert set(found) == {"light", "expressive", "evaluation.json"}
    run_dir = tmp_path / "runs" / "ds=2026-11-22"
    run_dir.mkdir(parents=True)
    (run_dir / "stale.txt").write_text("from an earlier run")
    publish(found, run_dir, fs=fs)
    assert sorted(p.name for p in run_dir.iterdir()) == ["evaluation.json", "expressive", "light"]
    assert (run_dir / "light" / "weights.pt").read_bytes() == b"train-light-op"
    with pytest.raises(FileNotFoundError, match="not found"):
        locate_outputs(fs, root, "missing-run")
