"""The CLI wires the same library functions: simulate and validate from the command line."""

import pytest

from hap.contract import partition_dir
from workflow.cli import main


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
    assert "ds=2026-11-21: PASSED" in capsys.readouterr().out


def test_expected_failures_are_one_line_with_exit_code_1(tmp_path, capsys):
    """A refused step or an unknown version is an error message, not a traceback."""
    from workflow.cli import main

    home = str(tmp_path / "ws")
    assert main(["--home", home, "deploy", "--ds", "2026-11-22", "--version", "20990101.7"]) == 1
    err = capsys.readouterr().err
    assert "unknown version '20990101.7'" in err and "Traceback" not in err
    assert main(["--home", home, "package", "--ds", "2026-11-22"]) == 1
    err = capsys.readouterr().err
    assert "no gate decision" in err and "Traceback" not in err
    assert main(["--home", home, "gate", "--ds", "2026-11-22"]) == 1
    err = capsys.readouterr().err
    assert "has no evaluation" in err and "Traceback" not in err
    assert main(["--home", home, "shadow", "promote"]) == 1
    assert "no shadow version is running" in capsys.readouterr().err


def _hap(home, *args: str, env: dict[str, str] | None = None):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HAP_HOME": str(home), **(env or {})}
    return subprocess.run([sys.executable, "-m", "workflow.cli", *args], env=env, capture_output=True, text=True)


def test_backfill_runs_historical_dates_oldest_first_and_names_the_days_that_failed(tmp_path, small_sim):
    """`hap backfill` over dates years before today (and before any default start date): the first
    day has no data (not run, and the backfill goes on), the second runs for real — its data is bad,
    so validation quarantines it and the run fails, it does not succeed having run nothing. Progress
    is a line per day in a log (not a terminal); exit 1 names the failed days."""
    import json

    import pyarrow.parquet as pq

    home = tmp_path / "ws"
    small_sim.write_days(home / "data", "2019-11-12", 1, 200)
    path = partition_dir(home / "data", "candidates", "2019-11-12") / "part-0.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["source"]), path)
    proc = _hap(home, "backfill", "--from", "2019-11-11", "--to", "2019-11-12", env={"HAP_PROGRESS_INTERVAL_S": "0"})
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("2019-11-11: DAG run not run; no step ran (no data for ds=2019-11-11"), lines
    assert lines[1].startswith("2019-11-12: DAG run failed; steps: wait_for_partition=success, validate=failed"), lines
    assert "report=success" in lines[1] and "Airflow log" in lines[1], lines
    # the day's outcome under its steps: what failed first, and what serves now
    assert lines[2].startswith("  ds=2019-11-12: FAILED — ") and "validate" in lines[2], lines
    assert lines[2].endswith("(now serving: nothing)"), lines
    assert lines[-1].startswith(
        "backfilled 2 day(s) 2019-11-11..2019-11-12: 0 succeeded, failed: 2019-11-11, 2019-11-12"
    )
    assert "backfill: 1/2 days (50%)" in proc.stderr and "backfill: done 2/2 days" in proc.stderr, proc.stderr[-2000:]
    assert "\r" not in proc.stderr
    assert json.loads((home / "validation" / "ds=2019-11-12" / "verdict.json").read_text())["status"] == "quarantined"
    assert (home / "reports" / "ds=2019-11-12" / "index.html").exists()


def test_run_day_without_data_is_a_clear_error(tmp_path):
    proc = _hap(tmp_path / "ws", "run-day", "--ds", "2019-11-12")
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "no data for ds=2019-11-12" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_run_day_is_quiet_and_a_refusal_is_its_own_exit_code(tmp_path, small_sim):
    """`hap run-day` prints a short summary (the frameworks' output goes to the day's log file, whose
    path it names) ending with one line that says what the day came to; a day the gate refuses
    exits 3, not 0 (serving unchanged), and `hap status` lists it; the same day accepted exits 0."""
    import json

    home = tmp_path / "ws"
    ds = "2019-11-12"
    small_sim.write_days(home / "data", ds, 1, 300)
    strict, lenient = tmp_path / "strict.yaml", tmp_path / "lenient.yaml"
    strict.write_text("metrics:\n  light.auc.overall: {floor: 0.999, max_drop: 0.0, min_examples: 1}\n")
    lenient.write_text("metrics:\n  light.auc.overall: {floor: 0.0, max_drop: 1.0, min_examples: 1}\n")
    skip = json.dumps({"skip_deploy": True})  # no TorchServe here: the run stops after promote either way

    proc = _hap(home, "run-day", "--ds", ds, "--conf", skip, env={"HAP_GATE_POLICY": str(strict)})
    lines = proc.stdout.splitlines()
    assert proc.returncode == 3, proc.stdout + proc.stderr[-3000:]
    assert len(lines) < 40 and "Traceback" not in proc.stderr, lines
    log_file = home / "airflow" / "logs" / f"dag_test_{ds}.log"
    assert str(log_file) in lines[0] and "hap_daily" in log_file.read_text(errors="replace")
    assert lines[1].startswith(  # the refusal is the gate task's own state, as in the Airflow grid
        "steps: wait_for_partition=success, validate=success, train=success, gate=skipped, package=skipped, "
    ), lines
    assert (
        lines[-1].startswith(f"ds={ds}: REFUSED — gate FAIL — light.auc.overall: ") and "serving unchanged" in lines[-1]
    )
    status = _hap(home, "status", "--no-live")
    assert (
        status.returncode == 1
        and f"1 day(s) refused by the gate since the last accepted one (newest ds={ds}" in status.stdout
    )

    proc = _hap(home, "run-day", "--ds", ds, "--conf", skip, env={"HAP_GATE_POLICY": str(lenient)})
    lines = proc.stdout.splitlines()
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert len(lines) < 40 and lines[-1].startswith(f"ds={ds}: STOPPED — not deployed: "), lines
    assert "refused" not in _hap(home, "status", "--no-live").stdout
