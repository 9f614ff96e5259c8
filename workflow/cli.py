"""``hap``: the product's one command line. Each subcommand calls the same library functions as
the Airflow tasks and KFP components."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

from hap import SLICES
from hap.workspace import Workspace
from serving.errors import DeployFailed, ServingError
from workflow.airflow_local import NoTaskRan
from workflow.errors import StepRefused


def _ws(args: argparse.Namespace) -> Workspace:
    return Workspace.from_env(getattr(args, "home", None))


def cmd_simulate(args: argparse.Namespace) -> int:
    # deferred: each command loads only what it needs (torch, GX, kfp and Airflow take seconds)
    from hap.config import HapConfig
    from samples.simulator import CascadeSimulator

    cfg = HapConfig.load(args.config)
    t0 = time.perf_counter()
    days = CascadeSimulator(cfg.sim, composition=cfg.composition).write_days(
        args.out, args.start, args.days, args.requests
    )
    print(f"simulated {len(days)} day(s) {days[0]}..{days[-1]} into {args.out} in {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_ingest(args: argparse.Namespace) -> int:
    """Real impression logs (generic schema or MIND) into the contract; bad input: one line, exit 1."""

    # deferred: each command loads only what it needs (torch, GX, kfp and Airflow take seconds)
    from hap.config import HapConfig
    from samples.ingest import IngestError, day_summary, ingest

    cfg = HapConfig.load(args.config) if args.config else HapConfig.from_env()
    out = Path(args.out) if args.out else _ws(args).data
    t0 = time.perf_counter()
    try:
        news = Path(args.news) if args.news else None
        days = ingest(Path(args.input), args.format, out, cfg, news=news, seed=args.seed)
    except IngestError as exc:
        print(f"hap ingest: {exc}", file=sys.stderr)
        return 1
    for ds in days:
        counts = day_summary(out, ds)
        print(f"  {ds}: {counts.pop('requests')} requests; " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    span = f" {days[0]}..{days[-1]}" if days else ""
    print(f"ingested {len(days)} day(s){span} from {args.input} into {out} in {time.perf_counter() - t0:.1f}s")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    """Exit 0: passed; 1: the data failed (quarantined); 2: the validator failed (nothing judged)."""
    # deferred: each command loads only what it needs (torch, GX, kfp and Airflow take seconds)
    from expectations.validate import (
        EXIT_ERROR,
        EXIT_PASSED,
        EXIT_QUARANTINED,
        ValidatorError,
        describe,
        table,
        validate_day,
    )

    try:
        verdict = validate_day(_ws(args).root, args.ds)
    except ValidatorError as exc:
        print(f"hap validate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(table(verdict))
    if not verdict["success"]:
        print(describe(verdict))
    return EXIT_PASSED if verdict["success"] else EXIT_QUARANTINED


def cmd_step(args: argparse.Namespace) -> int:
    # deferred: each command loads only what it needs (torch, GX, kfp and Airflow take seconds)
    from workflow import flow

    ws = _ws(args)
    if args.command == "train":
        print(flow.train(args.ds, ws, retrain=args.retrain))
    elif args.command == "gate":
        decision = flow.gate(args.ds, ws)
        print(("PASS" if decision["passed"] else "FAIL") + " — " + decision["reason"])
        return 0 if decision["passed"] else 1
    elif args.command == "package":
        print(flow.package(args.ds, ws))
    elif args.command == "deploy":
        print(json.dumps(flow.deploy(args.ds, args.version, ws, shadow=args.shadow), indent=2))
    return 0


def cmd_run_day(args: argparse.Namespace) -> int:
    # deferred: each command loads only what it needs (torch, GX, kfp and Airflow take seconds)
    from hap.contract import partition_ready
    from workflow.airflow_local import run_day, run_day_subprocess
    from workflow.status import day_outcome, steps_line

    try:
        conf = json.loads(args.conf) if args.conf else None
    except ValueError as exc:
        raise StepRefused(f"--conf is not JSON ({exc}): {args.conf!r}") from exc
    if conf is not None and not isinstance(conf, dict):
        raise StepRefused(f"--conf must be a JSON object of DAG params, got {args.conf!r}")
    ws = _ws(args)
    if not args.wait and not partition_ready(ws.data, args.ds):
        raise StepRefused(
            f"no data for ds={args.ds} under {ws.data} (both requests and candidates partitions are needed); "
            "pass --wait to let the DAG's sensor wait for it"
        )
    if args.json or args.verbose:  # in this process: Airflow's, GX's and KFP's output on this terminal
        states = run_day(args.ds, ws, conf=conf)
        print(json.dumps(states) if args.json else "\n".join(f"{k}: {v}" for k, v in states.items()))
    else:  # quiet: the frameworks' output goes to the day's log file, this terminal gets the summary
        log_file = ws.airflow / "logs" / f"dag_test_{args.ds}.log"
        print(f"running DAG hap_daily for ds={args.ds} (Airflow, GX and KFP output: {log_file}; -v shows it here)")
        try:
            states = run_day_subprocess(args.ds, ws, log_file, conf=conf, wait=args.wait)
        except RuntimeError as exc:  # the run gave no result (Airflow broke): its log says why
            raise StepRefused(str(exc)) from exc
        print(steps_line(states))
    outcome = day_outcome(ws, args.ds, states)
    print(outcome.line(), file=sys.stderr if args.json else sys.stdout)
    return outcome.exit_code


def cmd_serve(args: argparse.Namespace) -> int:
    # deferred: each command loads only what it needs (torch, GX, kfp and Airflow take seconds)
    from serving.deploy import ensure_serving
    from workflow.flow import server_for

    ws = _ws(args)
    server = server_for(ws)
    if args.action == "start":
        was_running = server.pid() is not None
        version = ensure_serving(ws, server)
        state = "already running" if was_running else "started"
        print(f"TorchServe {state} at {server.inference_url} (pid {server.pid()}, key keeper pid "
              f"{server.keeper_pid()}), serving {version or 'no model yet'}")  # fmt: skip
    elif args.action == "stop":
        server.stop()
        print("TorchServe stopped")
    else:
        status = server.status()
        if args.json:
            print(json.dumps(status, indent=1))
        elif not status["running"]:
            print(f"TorchServe is not running (home {server.home})")
        else:
            print(f"TorchServe running at {status['url']} (pid {status['pid']}), healthy={status['healthy']}, "
                  f"default={status.get('default')}, key keeper pid={status.get('keeper_pid')}")  # fmt: skip
            for version, d in status.get("versions", {}).items():
                workers = ", ".join(f"pid {w['pid']} {w['status']} {w['memory_mb']} MB" for w in d["workers"])
                print(f"  version {version}: {workers or 'no workers'}")
            print(f"  keys expire: {status.get('keys_expire')}; memory MB: {status.get('memory_mb')}")
            if status.get("error"):
                print(f"  error: {status['error']}")
        return 0 if status["running"] and status.get("healthy") else 1
    return 0


def cmd_shadow(args: argparse.Namespace) -> int:
    # deferred: each command loads only what it needs (torch, GX, kfp and Airflow take seconds)
    from serving.deploy import promote_shadow, shadow_report, stop_shadow
    from workflow.flow import load_config, server_for

    ws = _ws(args)
    server = server_for(ws)
    if args.action == "status":
        print(json.dumps(shadow_report(server), indent=1))
    elif args.action == "promote":
        pointer = promote_shadow(ws, load_config(), server, args.reason or "promoted by hand")
        print(f"serving {pointer['version']} (was {pointer['previous']}); reason recorded")
    else:
        print(f"stopped shadowing {stop_shadow(ws, server, args.reason or 'stopped by hand')}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    # deferred: each command loads only what it needs (torch, GX, kfp and Airflow take seconds)
    from workflow.flow import rollback

    pointer = rollback(args.reason, _ws(args))
    print(f"serving {pointer['version']} again (rolled back from {pointer['previous']}); reason recorded")
    return 0


def cmd_request(args: argparse.Namespace) -> int:
    # deferred: each command loads only what it needs (torch, GX, kfp and Airflow take seconds)
    from serving.deploy import columnar, sample_request
    from workflow.flow import server_for

    ws = _ws(args)
    body = sample_request(ws.data, args.ds, args.candidates, seed=args.seed)
    if args.columns:
        body = columnar(body)
    if args.save:
        Path(args.save).write_text(json.dumps(body))
        print(f"request written to {args.save}")
        return 0
    resp = server_for(ws).predict(body)
    print(json.dumps(resp.json(), indent=1))
    return 0 if resp.status_code == 200 else 1


def cmd_status(args: argparse.Namespace) -> int:
    """Exit 0: serving and nothing open; 1: something needs on-call (listed under NEEDS ATTENTION)."""
    # deferred: each command loads only what it needs (torch, GX, kfp and Airflow take seconds)
    from workflow.status import EXIT_ERROR, collect, exit_code, render

    try:
        status = collect(_ws(args), n_runs=args.runs, live=not args.no_live)
    except Exception as exc:  # noqa: BLE001 - "cannot tell" must not read as "needs attention"
        if args.json:
            print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
        print(f"hap status: could not read the workspace's state: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(json.dumps(status, indent=1, default=str) if args.json else render(status))
    return exit_code(status)


def cmd_report(args: argparse.Namespace) -> int:
    # deferred: each command loads only what it needs (torch, GX, kfp and Airflow take seconds)
    from workflow.flow import report

    print(report(args.ds, _ws(args), n_days=args.days))
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    """Run the daily DAG for each day of a range, oldest first; exit 1 if any day's run failed."""
    # deferred: each command loads only what it needs (torch, GX, kfp and Airflow take seconds)
    from hap.contract import partition_ready
    from hap.progress import progress
    from workflow.airflow_local import run_day_subprocess
    from workflow.status import EXIT_FAILED, EXIT_REFUSED, day_outcome, steps_line

    start, end = dt.date.fromisoformat(args.start), dt.date.fromisoformat(args.end)
    if end < start:
        raise StepRefused(f"--to {args.end} is before --from {args.start}")
    days = [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
    ws, failed, refused = _ws(args), [], []
    conf = {"window_days": args.window_days} if args.window_days else None
    with progress(total=len(days), desc="backfill", unit="day") as bar:
        for ds in days:
            log_file = ws.airflow / "logs" / f"dag_test_{ds}.log"
            ran = partition_ready(ws.data, ds)
            states = {"dag_run": "not run", "why": f"no data for ds={ds} under {ws.data}"}
            if ran:
                try:
                    states = run_day_subprocess(ds, ws, log_file, conf=conf)
                except RuntimeError as exc:  # the run gave no result (Airflow broke): say so, go on
                    states = {"dag_run": "not run", "why": str(exc).splitlines()[0][:300]}
            outcome = day_outcome(ws, ds, states) if ran else None
            if states["dag_run"] != "success":
                failed.append(ds)
            elif outcome.state == "refused":
                refused.append(ds)
            print(
                f"{ds}: DAG run {states['dag_run']}; {steps_line(states)}"
                + (f"; Airflow log {log_file}" if ran else "")
            )
            if outcome is not None:  # the gate's verdict with its first reason, and what serves now
                print(f"  {outcome.line()}")
            bar.update(1, last=f"{ds} {states['dag_run']}")
    print(f"backfilled {len(days)} day(s) {days[0]}..{days[-1]}: {len(days) - len(failed)} succeeded"
          + (f", refused by the gate (serving unchanged): {', '.join(refused)}" if refused else "")
          + (f", failed: {', '.join(failed)} (hap status; runbook: rerun one day)" if failed else ""))  # fmt: skip
    return EXIT_FAILED if failed else EXIT_REFUSED if refused else 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Simulate → validate → train → gate → package → deploy → a request answered."""
    # deferred: each command loads only what it needs (torch, GX, kfp and Airflow take seconds)
    from registry.store import Registry
    from samples.simulator import CascadeSimulator
    from serving.deploy import sample_request
    from workflow.airflow_local import run_day_subprocess
    from workflow.flow import load_config, server_for
    from workflow.status import steps_line

    ws = _ws(args)
    t_start = time.perf_counter()
    start = (dt.date.fromisoformat(args.end) - dt.timedelta(days=args.days - 1)).isoformat()
    print(f"== HAP demo: workspace {ws.root}")
    t0 = time.perf_counter()
    cfg = load_config()  # $HAP_CONFIG or the embedded defaults: the same composition validation checks
    days = CascadeSimulator(cfg.sim, composition=cfg.composition).write_days(ws.data, start, args.days, args.requests)
    print(f"[1/5] simulated {args.days} day(s) {days[0]}..{days[-1]}, {args.requests} requests/day "
          f"({time.perf_counter() - t0:.1f}s) -> {ws.data}")  # fmt: skip

    log_file = ws.airflow / "logs" / f"dag_test_{args.end}.log"
    print(f"[2/5] running DAG hap_daily for ds={args.end} with dag.test() (Airflow log: {log_file})")
    t0 = time.perf_counter()
    states = run_day_subprocess(args.end, ws, log_file)
    print(f"      DAG run {states['dag_run']} in {time.perf_counter() - t0:.1f}s; {steps_line(states)}")

    verdict_path = ws.validation_dir(args.end) / "verdict.json"
    if verdict_path.exists():
        from expectations.validate import describe

        verdict = json.loads(verdict_path.read_text())
        print(
            "[3/5] validation: "
            + describe(verdict)
            + (f" (report: {verdict['report']})" if verdict.get("report") else "")
        )
    run_dir = ws.run_dir(args.end)
    if (run_dir / "evaluation.json").exists():
        ev = json.loads((run_dir / "evaluation.json").read_text())["candidate"]
        print("      held-out AUC by difficulty slice (positives vs that source's negatives):")
        print("      model       " + "".join(f"{s:>9}" for s in SLICES))
        print("      light       " + "".join(f"{ev[f'light.auc.{s}']:>9.4f}" for s in SLICES))
        hard = [ev.get(f"light.hard.auc.{s}") for s in SLICES]  # light on the expressive model's scope
        print("      light, hard " + "".join(f"{v:>9.4f}" if v is not None else f"{'—':>9}" for v in hard))
        expr = [ev.get(f"expressive.auc.{s}") for s in SLICES]  # hard sources only: others are "—"
        print("      expressive  " + "".join(f"{v:>9.4f}" if v is not None else f"{'—':>9}" for v in expr))
        what = "expected-click share" if ev["system.view"] == "serving" else "logged recall"
        print(f"      two-stage {what}@{ev['system.m']} of N={ev['system.n']} at chosen K={ev['system.k']}: "
              f"{ev['system.value']:.4f} (light alone {ev['system.light_value']:.4f}, "
              f"{ev['system.flops_share']:.2f}x the uniform expressive model's FLOPs)")  # fmt: skip
    if (run_dir / "decision.json").exists():
        d = json.loads((run_dir / "decision.json").read_text())
        print(f"[4/5] gate: {'PASS' if d['passed'] else 'FAIL'} — {d['reason']} (report: {run_dir / 'decision.md'})")
    report = ws.report_dir(args.end) / "index.html"
    if report.exists():
        print(f"      daily report: {report.as_uri()}")
    prod = Registry(ws).production()
    if states.get("deploy") != "success" or not prod:
        print("deploy did not run; the serving model is unchanged. See the log above.")
        return 1
    server = server_for(ws)
    print(f"      deployed version {prod['version']} to TorchServe at {server.inference_url}")

    body = sample_request(ws.data, args.end, args.candidates, seed=1)
    t0 = time.perf_counter()
    resp = server.predict(body)
    ms = (time.perf_counter() - t0) * 1000
    answer = resp.json()
    print(f"[5/5] sample request ({len(body['candidates'])} candidates) -> HTTP {resp.status_code} in {ms:.0f} ms, "
          f"version {answer.get('model_version')}, K={answer.get('k')}, top-M={answer.get('m')}:")  # fmt: skip
    for item in answer.get("items", [])[:10]:
        print(f"      #{item['rank']:<3} item {item['item_id']:<7} score {item['score']:+.4f}  ({item['stage']})")
    print(f"== done in {time.perf_counter() - t_start:.0f}s. Send your own request:")
    print(f"   hap request --ds {args.end} --save /tmp/req.json")
    print(f"   curl -s -H \"Authorization: Bearer $(python -c \"import json;print(json.load(open('{ws.serving}/key_file.json'))['inference']['key'])\")\" "
          f"-H 'Content-Type: application/json' --data @/tmp/req.json {server.inference_url}/predictions/hap")  # fmt: skip
    print("   on-call view: hap status   (what serves, the last runs, quarantines, open alerts)")
    print("   stop the server: hap serve stop")
    return 0 if resp.status_code == 200 else 1


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hap", description=__doc__)
    p.add_argument("--home", help="workspace root (default $HAP_HOME or ./.hap)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="write simulated cascade logs in the data contract")
    s.add_argument("--start", required=True)
    s.add_argument("--days", type=int, default=1)
    s.add_argument("--requests", type=int, default=3000)
    s.add_argument("--out", required=True)
    s.add_argument("--config", help="YAML config (sim section)")
    s.set_defaults(func=cmd_simulate)

    s = sub.add_parser("ingest", help="bring real impression logs (generic schema or MIND) into the data contract")
    s.add_argument("--format", required=True, choices=["generic", "mind"])
    s.add_argument("--input", required=True, help="generic: .parquet file/dir or .csv; mind: behaviors.tsv")
    s.add_argument("--news", help="mind: news.tsv (default: beside behaviors.tsv)")
    s.add_argument("--out", help="data root (default: the workspace's data dir)")
    s.add_argument("--seed", type=int, default=0, help="seeds the sampled negatives")
    s.add_argument("--config", help="YAML config (default $HAP_CONFIG; real logs: configs/real_logs.yaml)")
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("validate", help="validate one day with Great Expectations")
    s.add_argument("--ds", required=True)
    s.set_defaults(func=cmd_validate)

    for name in ("train", "gate", "package", "deploy"):
        s = sub.add_parser(name, help=f"run the {name} step for one day")
        s.add_argument("--ds", required=True)
        if name == "train":
            s.add_argument("--retrain", action="store_true", help="train even if the inputs are unchanged")
        if name == "deploy":
            s.add_argument("--version", required=True)
            s.add_argument("--shadow", action="store_true", help="score live traffic beside production; promote later")
        s.set_defaults(func=cmd_step)

    s = sub.add_parser("run-day", help="run the daily DAG for one ds (any date with data) with dag.test()")
    s.add_argument("--ds", required=True)
    s.add_argument("--wait", action="store_true", help="run even if the day's data has not landed (the sensor waits)")
    s.add_argument("--conf", help="DAG params as JSON, e.g. '{\"skip_deploy\": true}'")
    s.add_argument(
        "--json",
        action="store_true",
        help="the task states as one JSON line, the last of stdout (in this process, like -v)",
    )
    s.add_argument(
        "-v", "--verbose", action="store_true", help="the frameworks' output here, not in the day's log file"
    )
    s.set_defaults(func=cmd_run_day)

    s = sub.add_parser("serve", help="start/stop/status of the local TorchServe")
    s.add_argument("action", choices=["start", "stop", "status"])
    s.add_argument("--json", action="store_true", help="status as JSON")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("shadow", help="the shadow version: status, promote to production, or stop")
    s.add_argument("action", choices=["status", "promote", "stop"])
    s.add_argument("--reason", default="", help="recorded in the registry's events")
    s.set_defaults(func=cmd_shadow)

    s = sub.add_parser("rollback", help="make the previous production version the default again")
    s.add_argument("--reason", required=True, help="why (recorded with the production pointer)")
    s.set_defaults(func=cmd_rollback)

    s = sub.add_parser("request", help="send a sample request built from a day's logs")
    s.add_argument("--ds", required=True)
    s.add_argument("--candidates", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--save", help="write the request JSON here instead of sending it")
    s.add_argument("--columns", action="store_true", help="the compact layout: one list per item feature")
    s.set_defaults(func=cmd_request)

    s = sub.add_parser("status", help="what is serving, the last runs, quarantined days and open alerts")
    s.add_argument("--json", action="store_true", help="the same as JSON, for scripts")
    s.add_argument("--runs", type=_positive, default=7, help="how many of the latest daily runs to show")
    s.add_argument("--no-live", action="store_true", help="do not ask the local TorchServe (files only)")
    s.set_defaults(func=cmd_status)

    s = sub.add_parser("report", help="(re)build a day's HTML report from the workspace's records")
    s.add_argument("--ds", required=True)
    s.add_argument("--days", type=int, default=14, help="how many days the trends cover")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("backfill", help="run the daily DAG (dag.test()) for each day of a range, oldest first")
    s.add_argument("--from", dest="start", required=True)
    s.add_argument("--to", dest="end", required=True)
    s.add_argument("--window-days", type=int, help="training window for these runs (default: config)")
    s.set_defaults(func=cmd_backfill)

    s = sub.add_parser("demo", help="the whole flow end to end on embedded defaults")
    s.add_argument("--end", default=(dt.date.today() - dt.timedelta(days=1)).isoformat())
    s.add_argument("--days", type=int, default=3)
    s.add_argument("--requests", type=int, default=3000)
    s.add_argument("--candidates", type=int, default=1000)
    s.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    import logging
    import os

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (StepRefused, DeployFailed, ServingError, NoTaskRan) as exc:  # expected failures: a message, no traceback
        print(f"hap {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
