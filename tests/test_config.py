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


def test_a_section_given_in_part_keeps_the_rest_of_its_own_default(tmp_path):
    path = tmp_path / "hap.yaml"
    path.write_text("expressive:\n  numeric: cumulative\nexpressive_loss:\n  mode: bce\n")
    cfg, default = HapConfig.load(path), HapConfig()
    assert cfg.expressive.numeric == "cumulative" and cfg.expressive_loss.mode == "bce"
    assert cfg.expressive.attention and cfg.expressive.mlp_dims == default.expressive.mlp_dims  # not ModelConfig()
    assert cfg.expressive_loss.source_weights == default.expressive_loss.source_weights  # the hard sources only


def test_modes_are_checked_when_a_config_loads():
    for section, key, bad in (("kfp", "mode", "clustr"), ("light_loss", "mode", "infonce"), ("job", "launcher", "ssh"),
                              ("light_loss", "harmonize", "pcgrad"), ("orchestration", "sensor_mode", "sleep")):  # fmt: skip
        with pytest.raises(ValueError, match=f"{key} must be one of"):
            HapConfig.from_dict({section: {key: bad}})


def test_the_dag_knobs_are_typed_config_with_documented_environment_overrides(monkeypatch):
    from hap.config import ENV_OVERRIDES

    monkeypatch.delenv("HAP_CONFIG", raising=False)
    for var in ENV_OVERRIDES:
        monkeypatch.delenv(var, raising=False)
    assert HapConfig.from_env().orchestration.sensor_poke_s == 300
    monkeypatch.setenv("HAP_SENSOR_POKE_S", "7")
    monkeypatch.setenv("HAP_RUN_DEADLINE_H", "0.5")
    monkeypatch.setenv("HAP_GATE_POLICY", "/etc/hap/policy.yaml")
    orch = HapConfig.from_env().orchestration
    assert (orch.sensor_poke_s, orch.run_deadline_h, orch.gate_policy) == (7, 0.5, "/etc/hap/policy.yaml")
    monkeypatch.setenv("HAP_SENSOR_MODE", "sleep")
    with pytest.raises(ValueError, match="sensor_mode must be one of"):
        HapConfig.from_env()
