"""The CLI wires the same library functions: simulate and validate from the command line."""

from hap.cli import main
from hap.contract import partition_dir


def test_simulate_then_validate(tmp_path, monkeypatch, capsys):
    cfg = tmp_path / "small.yaml"
    cfg.write_text("sim:\n  n_users: 500\n  n_items: 3000\n")
    monkeypatch.setenv("HAP_HOME", str(tmp_path / "ws"))
    data = tmp_path / "ws" / "data"
    assert main(["simulate", "--start", "2026-11-20", "--days", "2", "--requests", "50", "--out", str(data),
                 "--config", str(cfg)]) == 0  # fmt: skip
    for ds in ("2026-11-20", "2026-11-21"):
        assert (partition_dir(data, "candidates", ds) / "part-0.parquet").exists()
    assert main(["validate", "--ds", "2026-11-21"]) == 0
    assert "passed" in capsys.readouterr().out


def test_expected_failures_are_one_line_with_exit_code_1(tmp_path, capsys):
    """A refused step or an unknown version is an error message, not a traceback."""
    from hap.cli import main

    home = str(tmp_path / "ws")
    assert main(["--home", home, "deploy", "--ds", "2026-11-22", "--version", "20990101.7"]) == 1
    err = capsys.readouterr().err
    assert "unknown version '20990101.7'" in err and "Traceback" not in err
    assert main(["--home", home, "package", "--ds", "2026-11-22"]) == 1
    err = capsys.readouterr().err
    assert "no gate decision" in err and "Traceback" not in err
    assert main(["--home", home, "shadow", "promote"]) == 1
    assert "no shadow version is running" in capsys.readouterr().err
