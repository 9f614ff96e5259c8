"""The KFP pipeline compiles, and the committed YAML is what the code compiles to."""

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
