"""``hap status``: what on-call asks first, from the workspace's records in one view.

What is serving (since when, K, who or what put it there and why, its lineage from data to
version), the last daily runs with each step's state and duration, quarantined days with their first
failed expectation, and the alerts no later success has answered. Reads files only (plus one health
call to the local TorchServe), so it answers in well under a second even when everything else is down.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from hap.workspace import Workspace, read_json_object
from registry.store import Registry
from workflow import runlog

RUNBOOK_REFUSED = "docs/runbook.md#the-gate-refused-a-day-or-the-day-ships-k--0"
# ``hap status`` exit codes (README: exit codes).
EXIT_OK, EXIT_ATTENTION, EXIT_ERROR = 0, 1, 3
# ``hap run-day`` / ``hap backfill`` exit codes: a refusal is not a success, nor a failure.
EXIT_FAILED, EXIT_REFUSED = 1, 3


@dataclass(frozen=True)
class DayOutcome:
    """What one day's DAG run came to, in one line: its state (``run_summary``'s, or ``failed`` when
    the DAG run failed before any step was recorded), why, and which version serves after it."""

    ds: str
    dag_run: str
    state: str
    summary: str
    serving: str | None

    @property
    def exit_code(self) -> int:
        if self.dag_run != "success" or self.state in ("failed", "interrupted"):
            return EXIT_FAILED
        return EXIT_REFUSED if self.state == "refused" else EXIT_OK

    def line(self) -> str:
        return f"ds={self.ds}: {self.state.upper()} — {self.summary} (now serving: {self.serving or 'nothing'})"


def steps_line(states: dict[str, str]) -> str:
    """The DAG's task states in the DAG's order (not Airflow's alphabetical one), e.g.
    ``steps: wait_for_partition=success, validate=success, train=success, gate=skipped, …`` (a refusal)."""
    rank = {task: i for i, task in enumerate(["wait_for_partition", *runlog.STEPS])}
    tasks = sorted((k for k in states if k not in ("dag_run", "why")), key=lambda k: (rank.get(k, len(rank)), k))
    if not tasks:
        return f"no step ran ({states.get('why', 'no task state recorded')})"
    return "steps: " + ", ".join(f"{k}={states[k]}" for k in tasks)


def day_outcome(ws: Workspace, ds: str, states: dict[str, str]) -> DayOutcome:
    """The outcome of ``ds``'s run that just ended with task ``states`` (its step records say why)."""
    state, summary = run_summary(runlog.read(ws, ds))
    if states.get("dag_run") != "success" and state not in ("failed", "interrupted"):
        stuck = [t for t, v in states.items() if v not in ("success", "skipped") and t != "dag_run"]
        state, summary = "failed", f"DAG run {states.get('dag_run')}: " + (", ".join(stuck) or "no task ran")
    pointer = Registry(ws).production()
    return DayOutcome(ds, str(states.get("dag_run")), state, summary, pointer["version"] if pointer else None)


def report_link(ws: Workspace, ds: str) -> str | None:
    page = ws.report_dir(ds) / "index.html"
    return page.as_uri() if page.exists() else None


def serving(ws: Workspace, live: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The production pointer with the version's day, K, lineage and report."""
    registry = Registry(ws)
    pointer = registry.production()
    if pointer is None:
        return None
    manifest = read_json_object(registry.version_dir(pointer["version"]) / "manifest.json") or {}
    lineage = manifest.get("lineage") or {}
    out = {
        "version": pointer["version"],
        "since": pointer.get("set_at"),
        "reason": pointer.get("reason"),
        "by": pointer.get("by", "not recorded"),
        "previous": pointer.get("previous"),
        "ds": manifest.get("ds"),
        "k": (manifest.get("metrics") or {}).get("system.k"),
        "content_hash": manifest.get("content_hash"),
        "parent": manifest.get("parent"),
        "lineage": lineage,
        "report": report_link(ws, manifest["ds"]) if manifest.get("ds") else None,
    }
    if live is not None:
        out["live"] = live
    return out


def live_check(ws: Workspace) -> dict[str, Any]:
    """Whether the local TorchServe is up and serves the registry's production version."""
    # deferred: the config and serving modules are read only when status asks the server
    from hap.config import HapConfig
    from serving.server import LocalTorchServe

    cfg = HapConfig.from_env()
    if cfg.serving.mode == "kserve":
        k = cfg.serving.kserve
        return {"checked": False, "why": f"serving.mode=kserve: kubectl -n {k.namespace} get isvc {k.name}"}
    server = LocalTorchServe(ws.serving, cfg=cfg.serving)
    out: dict[str, Any] = {"checked": True, "url": server.inference_url, "running": server.pid() is not None}
    if out["running"]:
        try:
            out["healthy"] = server.is_running()
            out["default"] = server.default_version() if out["healthy"] else None
        except Exception as exc:  # noqa: BLE001 - status reports what it finds, it does not fail on it
            out["healthy"], out["error"] = False, str(exc)[:300]
    return out


def run_summary(record: dict[str, Any]) -> tuple[str, str]:
    """(state, one line) of a day's run: ``failed``/``interrupted``/``running``/``refused`` (the gate
    said FAIL: serving unchanged)/``stopped`` (promotion kept it from deploying: a backfill, or
    ``skip_deploy``)/``success``. The ``report`` step is left out: it describes the run, it is not
    part of its result."""
    steps = {n: s for n, s in record.get("steps", {}).items() if n != "report" and isinstance(s, dict)}
    for name in runlog.STEPS:
        s = steps.get(name)
        if s and s.get("state") == "failed":
            first = str(s.get("error") or "").splitlines()[0][:160] if s.get("error") else ""
            return "failed", f"failed at {name}: {first}"
    for name in runlog.STEPS:
        s = steps.get(name)
        if s and s.get("state") == "running":
            if runlog.interrupted(s):
                return "interrupted", f"{name} was interrupted (its process {s.get('pid')} is gone): rerun the day"
            return "running", f"running {name} since {s.get('started')}"
    gate = str(steps.get("gate", {}).get("outcome") or "")
    if gate.startswith("FAIL"):
        return "refused", f"gate FAIL — {first_reason(gate[7:])}; serving unchanged"
    promote = str(steps.get("promote", {}).get("outcome") or "")
    if promote.startswith("stop"):
        return "stopped", f"not deployed: {promote[7:][:160]}"
    if steps.get("deploy", {}).get("state") == "success":
        return "success", str(steps["deploy"].get("outcome") or "deployed")
    last = [n for n in runlog.STEPS if n in steps]
    return ("success", f"done through {last[-1]}") if last else ("unknown", "no step recorded")


def runs(ws: Workspace, n: int) -> list[dict[str, Any]]:
    out = []
    for ds in runlog.days(ws)[:n]:
        record = runlog.read(ws, ds)
        state, summary = run_summary(record)
        steps = {name: {k: record["steps"][name].get(k) for k in ("state", "seconds", "outcome", "error", "started")}
                 for name in runlog.STEPS if name in record["steps"]}  # fmt: skip
        out.append({"ds": ds, "state": state, "summary": summary, "run_id": record.get("run_id"), "steps": steps,
                    "report": report_link(ws, ds)})  # fmt: skip
    return out


def first_reason(reasons: str, width: int = 160) -> str:
    """The first of a gate's ``"; "``-joined reasons, whole (or cut at a word with "…" past ``width``),
    and how many more there are: a summary cell never ends mid-figure."""
    parts = [p for p in reasons.split("; ") if p] or ["no reason recorded"]
    first = parts[0] if len(parts[0]) <= width else parts[0][:width].rsplit(" ", 1)[0] + "…"
    return first + (f" (+{len(parts) - 1} more)" if len(parts) > 1 else "")


def gate_verdict(record: dict[str, Any]) -> str | None:
    """``PASS``/``FAIL`` of a day's last recorded gate step; None when no gate step finished."""
    gate = record.get("steps", {}).get("gate")
    outcome = str(gate.get("outcome") or "") if isinstance(gate, dict) and gate.get("state") == "success" else ""
    return outcome[:4] if outcome[:4] in ("PASS", "FAIL") else None


def refused_since_accepted(ws: Workspace, before: str | None = None) -> list[dict[str, Any]]:
    """The days the gate refused since the newest day it accepted (newest first; only days before
    ``before`` when given). Days whose run stopped before the gate (a quarantine, a failure) neither
    accept nor refuse: they are passed over."""
    out = []
    for ds in runlog.days(ws):
        if before is not None and ds >= before:
            continue
        record = runlog.read(ws, ds)
        verdict = gate_verdict(record)
        if verdict == "PASS":
            break
        if verdict == "FAIL":
            out.append({"ds": ds, "reason": first_reason(str(record["steps"]["gate"].get("outcome") or "")[7:])})
    return out


def first_failure(verdict: dict[str, Any]) -> str:
    """The first failed expectation of a verdict, as the validation report words it."""
    if verdict.get("status") == "error":
        return f"validator error (not judged): {verdict.get('error')}"
    for table, t in (verdict.get("tables") or {}).items():
        for f in (t.get("failed") or []) if isinstance(t, dict) else []:
            return f"{table}: {f.get('message') or f.get('expectation')}" if isinstance(f, dict) else f"{table}: {f}"
    return "no failed expectation recorded"


def quarantined(ws: Workspace, n: int = 20) -> list[dict[str, Any]]:
    """Days whose latest verdict is not ``passed`` (kept in place, never trained on), newest first."""
    out = []
    for path in sorted((ws.root / "validation").glob("ds=*/verdict.json"), reverse=True):
        verdict = read_json_object(path)
        if verdict is None or verdict.get("status", "passed" if verdict.get("success") else "quarantined") == "passed":
            continue
        out.append({"ds": verdict.get("ds", path.parent.name[3:]), "status": verdict.get("status", "quarantined"),
                    "first_failure": first_failure(verdict)[:300], "report": verdict.get("report")})  # fmt: skip
    return out[:n]


def _time(value: Any) -> dt.datetime | None:
    try:
        t = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


def _after(entry: dict[str, Any], key: str, at: dt.datetime) -> bool:
    """Whether the step entry's ``key`` time is later than ``at``."""
    t = _time(entry.get(key))
    return t is not None and t > at


def read_alerts(ws: Workspace) -> list[dict[str, Any]]:
    """Every alert on file, oldest first; a line that is not a JSON object with a time is skipped."""
    path = ws.root / "alerts" / "alerts.jsonl"
    out = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            alert = json.loads(line)
        except ValueError:
            continue
        if isinstance(alert, dict) and _time(alert.get("at")) is not None:
            out.append(alert)
    return out


def open_alerts(ws: Workspace) -> list[dict[str, Any]]:
    """Alerts no later success has answered, newest first.

    A failed step's alert closes when that step later succeeds for the same day or a newer one (the
    quarantine itself stays listed under quarantined days); a partition that never landed, when the
    day's validation starts after it; a late run, when that run records a step after it."""
    seen = []  # (ds, step, entry) of every recorded step, earlier runs of a day included
    for ds in runlog.days(ws):
        record = runlog.read(ws, ds)
        for steps in (record["steps"], (record.get("previous") or {}).get("steps", {})):
            seen += [(ds, name, e) for name, e in steps.items() if isinstance(e, dict)]
    open_ = []
    for alert in read_alerts(ws):
        at, ds, task = _time(alert["at"]), str(alert.get("ds") or ""), alert.get("task_id")
        if alert.get("kind") == "task_failed" and ds:
            if task == "wait_for_partition":
                answered = any(d == ds and n == "validate" and _after(e, "started", at) for d, n, e in seen)
            else:
                answered = any(d >= ds and n == task and e.get("state") == "success" and _after(e, "ended", at)
                               for d, n, e in seen)  # fmt: skip
        elif alert.get("kind") == "gate_refused" and ds:  # answered by a later accepted day
            answered = any(d >= ds and n == "gate" and str(e.get("outcome") or "").startswith("PASS")
                           and _after(e, "ended", at) for d, n, e in seen)  # fmt: skip
        elif alert.get("kind") == "deadline_missed":
            answered = any(e.get("run_id") == alert.get("run_id") and _after(e, "ended", at) for _, _, e in seen)
        else:
            answered = False
        if not answered:
            open_.append(alert)
    return list(reversed(open_))


def collect(ws: Workspace, n_runs: int = 7, live: bool = True) -> dict[str, Any]:
    """Everything ``hap status`` shows, as one JSON-ready dict; ``attention`` lists what needs on-call."""
    check = live_check(ws) if live else None
    status = {
        "workspace": str(ws.root),
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "serving": serving(ws, check),
        "runs": runs(ws, n_runs),
        "quarantined": quarantined(ws),
        "alerts": open_alerts(ws),
    }
    n_alerts = len(status["alerts"])
    status["alerts"] = status["alerts"][:20]  # the newest; the count below is of all
    attention = []
    prod = status["serving"]
    if prod is None:
        attention.append("no production version: nothing has been deployed")
    elif check and check.get("checked"):
        if not check["running"] or not check.get("healthy"):
            attention.append(f"TorchServe is not serving at {check['url']}: `hap serve start` (runbook: roll back)")
        elif check.get("default") != prod["version"]:
            attention.append(f"TorchServe's default is {check.get('default')}, the registry says {prod['version']}")
    if status["runs"] and status["runs"][0]["state"] in ("failed", "interrupted"):
        attention.append(f"the latest run (ds={status['runs'][0]['ds']}) {status['runs'][0]['summary']}")
    refused = refused_since_accepted(ws)
    if refused:
        newest = refused[0]
        attention.append(
            f"{len(refused)} day(s) refused by the gate since the last accepted one (newest ds={newest['ds']}: "
            f"{newest['reason']}); serving unchanged: {RUNBOOK_REFUSED}"
        )
    if n_alerts:
        attention.append(f"{n_alerts} open alert(s)" + (" (the newest 20 shown)" if n_alerts > 20 else ""))
    status["attention"] = attention
    return status


def exit_code(status: dict[str, Any]) -> int:
    return EXIT_ATTENTION if status["attention"] else EXIT_OK


def _ago(iso: str | None) -> str:
    if not iso:
        return "unknown"
    try:
        then = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    minutes = int((dt.datetime.now(dt.UTC) - then).total_seconds() // 60)
    span = f"{minutes} min" if minutes < 120 else f"{minutes // 60} h" if minutes < 48 * 60 else f"{minutes // 1440} d"
    return f"{then.strftime('%Y-%m-%d %H:%M UTC')} ({span} ago)"


def _cell(name: str, s: dict[str, Any] | None) -> str:
    if not s:
        return "-"
    seconds = f" {s['seconds']:.0f}s" if s.get("seconds") is not None else ""
    if s.get("state") == "failed":
        return "FAILED" + seconds
    if s.get("state") == "running":
        return "running"
    outcome = s.get("outcome") or ""
    if name == "gate" and outcome.startswith("FAIL"):
        return "FAIL" + seconds
    if name == "promote" and outcome.startswith("stop"):
        return "stop" + seconds
    return "ok" + seconds


def lineage_lines(lineage: dict[str, Any]) -> list[str]:
    """The chain from data to a version, a few lines of text."""
    if not lineage or "code" not in lineage:
        return ["lineage: not recorded (version registered before lineage was kept)"]
    code = lineage["code"]
    rev = code.get("commit", "unknown")[:12] + (" (uncommitted changes)" if code.get("dirty") else "")
    policy = (lineage.get("gate_policy") or {}).get("sha256", "—")
    libs = lineage.get("libraries", {})
    lines = [
        f"code {rev} · config {lineage.get('config_sha256')} · gate policy {policy}",
        "libraries " + ", ".join(f"{k} {v}" for k, v in libs.items()),
    ]
    trained = set(lineage.get("trained_days") or [])
    for day in lineage.get("data", []):
        used = "trained on" if day["ds"] in trained else "left out"
        fp = " ".join(f"{t} {(day.get(t) or {}).get('sha256', 'absent')}" for t in ("requests", "candidates"))
        lines.append(f"data ds={day['ds']} {day.get('validation') or 'not validated'}, {used}: {fp}")
    return lines


def render(status: dict[str, Any]) -> str:
    """The text view of ``collect``'s dict."""
    out = [f"HAP status · workspace {status['workspace']} · {status['generated_at']}", ""]
    prod = status["serving"]
    if prod is None:
        out.append("SERVING   nothing: no version has been deployed")
    else:
        out.append(
            f"SERVING   {prod['version']} (trained on ds={prod['ds']}, K={prod['k']}) since {_ago(prod['since'])}"
        )
        out.append(f"  why     {prod['reason']}")
        out.append(f"  by      {prod['by']}")
        out.append(f"  before  {prod['previous'] or '—'} (what `hap rollback` returns to)")
        live = prod.get("live")
        if live and live.get("checked"):
            state = (f"healthy, default {live.get('default')}" if live.get("healthy") else
                     f"NOT HEALTHY {live.get('error', '')}") if live["running"] else "NOT RUNNING"  # fmt: skip
            out.append(f"  live    TorchServe {live['url']}: {state}")
        elif live:
            out.append(f"  live    not checked ({live['why']})")
        out += [f"  {line}" for line in lineage_lines(prod["lineage"])]
        out.append(f"  report  {prod['report'] or 'none built yet (hap report --ds ' + str(prod['ds']) + ')'}")
    out += ["", f"LAST RUNS (newest first; {len(status['runs'])} shown)"]
    if not status["runs"]:
        out.append("  none recorded")
    else:
        header = f"  {'ds':<11} " + " ".join(f"{n:<10}" for n in runlog.STEPS) + " result"
        out.append(header)
        for run in status["runs"]:
            cells = " ".join(f"{_cell(n, run['steps'].get(n)):<10}" for n in runlog.STEPS)
            summary = run["summary"] if len(run["summary"]) <= 110 else run["summary"][:107] + "..."
            out.append(f"  {run['ds']:<11} {cells} {run['state'].upper()}: {summary}")
        latest = status["runs"][0]
        out.append(f"  latest report: {latest['report'] or 'not built'}")
    out += ["", "QUARANTINED DAYS (kept in place, never trained on)"]
    out += [f"  {q['ds']}  {q['status']}: {q['first_failure']}" for q in status["quarantined"]] or ["  none"]
    out += ["", "OPEN ALERTS"]
    out += [
        f"  {a.get('at', '')[:19]}  {a.get('kind')} {a.get('task_id') or ''} ds={a.get('ds') or '—'}: {a.get('hint', '')}"
        for a in status["alerts"]
    ] or ["  none"]
    out.append("")
    if status["attention"]:
        out += ["NEEDS ATTENTION (exit 1):"] + [f"  - {a}" for a in status["attention"]]
    else:
        out.append("OK: serving, latest run fine, no open alerts (exit 0)")
    # records may hold anything a log line held: nothing reaches the terminal as a control sequence
    return "".join(c if c.isprintable() or c == "\n" else "?" for c in "\n".join(out))
