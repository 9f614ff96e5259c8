"""The KFP pipeline compiles, and the committed YAML is what the code compiles to."""

import pytest
import yaml

from components.pipeline import COMPILED, compile_pipeline
from hap.config import TrainJobConfig


def test_pipeline_compiles_and_committed_yaml_is_fresh(tmp_path):
    out = compile_pipeline(tmp_path / "pipeline.yaml")
    fresh = list(yaml.safe_load_all(out.read_text()))
    assert set(fresh[0]["root"]["dag"]["tasks"]) == {
        "prepare-op",
        "train-light-op",
        "train-expressive-op",
        "evaluate-op",
    }
    committed = list(yaml.safe_load_all(COMPILED.read_text()))
    assert committed == fresh, "components/pipeline.yaml is stale: run `make compile`"


def test_every_task_mounts_the_workspace_volume_and_runs_the_configured_image(tmp_path):
    """Cluster mode runs as compiled: the workspace PVC is declared in the package (kfp-kubernetes)."""
    job = TrainJobConfig(image="registry.example/hap-training:9", workspace_pvc="ws-claim", workspace_mount="/mnt/ws")
    spec, platform = yaml.safe_load_all(compile_pipeline(tmp_path / "p.yaml", job).read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == set(spec["deploymentSpec"]["executors"]) and len(executors) == 4
    for name, ex in executors.items():
        assert ex["pvcMount"] == [
            {
                "constant": "ws-claim",
                "mountPath": "/mnt/ws",
                "pvcNameParameter": {"runtimeValue": {"constant": "ws-claim"}},
            }
        ], name
        assert spec["deploymentSpec"]["executors"][name]["container"]["image"] == job.image
    default = list(yaml.safe_load_all(COMPILED.read_text()))[1]["platforms"]["kubernetes"]["deploymentSpec"]
    assert {ex["pvcMount"][0]["constant"] for ex in default["executors"].values()} == {TrainJobConfig.workspace_pvc}


def test_cluster_paths_are_passed_as_the_containers_see_the_volume(tmp_path):
    from components.runners import in_volume

    ws = tmp_path / "ws"
    assert in_volume(str(ws / "registry" / "versions" / "20261122.1"), str(ws), "/workspace") == (
        "/workspace/registry/versions/20261122.1"
    )
    assert in_volume("", str(ws), "/workspace") == ""
    with pytest.raises(ValueError):
        in_volume("/elsewhere/model", str(ws), "/workspace")


def test_components_document_their_inputs_and_outputs():
    """One documented function per component: KFP carries the docstring's Args into the spec."""
    from components.evaluate import evaluate_op
    from components.prepare import prepare_op
    from components.train_expressive import train_expressive_op
    from components.train_light import train_light_op

    for op in (prepare_op, train_light_op, train_expressive_op, evaluate_op):
        doc = op.python_func.__doc__ or ""
        params = op.python_func.__code__.co_varnames[: op.python_func.__code__.co_argcount]
        missing = [p for p in params if f"{p}:" not in doc]
        assert not missing, f"{op.name}: docstring does not describe {missing}"


def test_cluster_mode_needs_a_host_and_an_artifact_root():
    from components.runners import run_cluster
    from hap.config import HapConfig

    with pytest.raises(ValueError, match="kfp.host and kfp.pipeline_root"):
        run_cluster(HapConfig(), "/ws", "2026-11-22", "", "/tmp/never")


def test_cluster_outputs_are_found_by_run_id_and_published_through_fsspec(tmp_path):
    """The artifact layout of a KFP backend run under an fsspec pipeline root (here file://)."""
    import fsspec

    from components.runners import locate_outputs, publish

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
