import pytest

from hap.config import HapConfig
from hap_runtime.config import ModelConfig


def test_config_round_trips_through_json():
    cfg = HapConfig(window_days=5, light=ModelConfig(mlp_dims=(8, 4)))
    back = HapConfig.from_json(cfg.to_json())
    assert back == cfg
    assert back.light.mlp_dims == (8, 4)


def test_unknown_config_key_is_rejected():
    with pytest.raises(ValueError, match="unknown HapConfig keys"):
        HapConfig.from_dict({"window_dayz": 3})


def test_config_file_overrides_only_given_keys(tmp_path):
    path = tmp_path / "hap.yaml"
    path.write_text("window_days: 2\ntrain:\n  epochs: 1\n")
    cfg = HapConfig.load(path)
    assert cfg.window_days == 2 and cfg.train.epochs == 1
    assert cfg.train.lr == HapConfig().train.lr
