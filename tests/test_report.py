"""The daily report where records are missing. The report of a real multi-day workspace, opened in a
headless browser, is checked in test_e2e.py (``test_status_and_report_show_two_days_…``)."""

import subprocess
import sys

from hap.workspace import Workspace
from workflow.report import FIGURES, build


def test_a_day_with_no_records_still_gets_a_page_that_says_so(tmp_path):
    """A run that stopped before anything was written (late partition, crash) still gets its page:
    every section is there and says what is missing instead of failing the report task."""
    ws = Workspace(tmp_path)
    page = build("2026-11-23", ws)
    assert page == ws.report_dir("2026-11-23") / "index.html"
    html = page.read_text()
    for name in FIGURES:
        assert f'<p class="empty" id="fig-{name}">no plot:' in html, name
    assert "the run did not reach the gate" in html and "nothing deployed" in html
    assert build("2026-11-23", ws) == page and [p.name for p in page.parent.iterdir()] == ["index.html"]


def test_hap_report_prints_the_pages_link(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "workflow.cli", "--home", str(tmp_path), "report", "--ds", "2026-11-23"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (Workspace(tmp_path).report_dir("2026-11-23") / "index.html").as_uri()


def test_broken_records_cost_a_section_never_the_page_or_status(tmp_path):
    """Half-written or hostile records (a truncated alert line, a steps file that is not an object,
    events without a time, a NaN statistic, markup in a message) do not stop the page or `hap status`."""
    import json

    from hap.workspace import write_json_atomic
    from workflow.status import collect, render

    ws = Workspace(tmp_path)
    ds = "2026-11-23"
    (ws.root / "alerts").mkdir(parents=True)
    (ws.root / "alerts" / "alerts.jsonl").write_text('{"kind": "task_failed", "at": 5}\n{"kind": "task_fa\n[]\n')
    (ws.root / "steps").mkdir()
    (ws.root / "steps" / "ds=2026-11-22.json").write_text("[]")
    write_json_atomic(ws.root / "steps" / f"ds={ds}.json", {"ds": ds, "run_id": "r", "steps": {
        "validate": {"state": "failed", "error": "<script>alert(1)</script>\x1b[31m"}}})  # fmt: skip
    ws.registry.mkdir(parents=True)
    (ws.registry / "events.jsonl").write_text('{"event": "set_production"}\nnot json\n{"event": 3, "at": "x"}\n')
    write_json_atomic(ws.validation_dir(ds) / "verdict.json", {"ds": ds, "success": True, "status": "passed",
        "tables": {}, "day_over_day": {"positive_rate": {"observed": float("nan"), "min": 0, "max": 1},
                                       "request_rows": {"observed": 10, "min": None, "max": 20}}})  # fmt: skip
    html = build(ds, ws).read_text()
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
    assert 'id="table-validation"' in html and "not a number" in html
    status = collect(ws, live=False)
    assert status["alerts"] == [] and [r["state"] for r in status["runs"]] == ["failed", "unknown"]
    text = render(status)
    assert "\x1b" not in text and json.dumps(status)


def test_a_step_whose_process_died_reads_as_interrupted(tmp_path):
    import os
    import socket
    import subprocess as sp

    from hap.workspace import write_json_atomic
    from workflow.status import collect

    dead = sp.Popen(["true"])
    dead.wait()
    ws = Workspace(tmp_path)
    ds = "2026-11-23"
    write_json_atomic(ws.root / "steps" / f"ds={ds}.json", {"ds": ds, "run_id": "r", "steps": {
        "validate": {"state": "success"}, "train": {"state": "running", "pid": dead.pid, "host": socket.gethostname()},
        "report": {"state": "running", "pid": os.getpid(), "host": socket.gethostname()}}})  # fmt: skip
    status = collect(ws, live=False)
    assert status["runs"][0]["state"] == "interrupted" and "train was interrupted" in status["runs"][0]["summary"]
    assert any("interrupted" in a for a in status["attention"])
