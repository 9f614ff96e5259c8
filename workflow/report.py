"""The daily report: one static HTML page per run, for the on-call engineer who opens it first.

Built by the daily DAG's last task (whatever the others did) and by ``hap report``, from the
workspace's records only. Sections: the run at a glance (steps, serving, open alerts), lineage from
data to the serving version, per-slice AUC over the last days, the light model against the trivial
scores it must beat (each numeric item feature alone, the earlier days' item click rate), the gate's rules with their figures,
the system metric against FLOPs across K, validation statistics against their bands, the
gradient-conflict cosines during training, and the deploy/rollback timeline. Plots are PNGs embedded
in the page, so the one file can be copied, attached or archived as it is; it needs no network.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from hap import HARD_SOURCES, SLICES
from hap.workspace import Workspace, read_json_object, window_days
from registry.store import Registry
from workflow import runlog, status

log = logging.getLogger(__name__)

# The figures and tables a report holds (ids in the page: ``fig-<name>``, ``table-<name>``).
FIGURES = ("auc", "routing", "validation", "gradients", "timeline")
TABLES = ("steps", "lineage", "auc", "baselines", "gate", "routing", "validation", "verdicts", "gradients", "timeline")


def _events(path: Path) -> list[dict[str, Any]]:
    """The registry's events that have a kind and a time; anything else on a line is skipped."""
    out = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            e = json.loads(line)
            if isinstance(e, dict) and isinstance(e.get("event"), str):
                e["_at"] = dt.datetime.fromisoformat(str(e["at"]).replace("Z", "+00:00"))
                out.append(e)
        except (ValueError, KeyError):
            continue
    return out


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "∞" if v > 0 else "−∞"
        return f"{v:.{digits}g}" if abs(v) >= 1e4 else f"{v:.{digits}f}"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(x, digits) for x in v) + "]"
    return str(v)


def _table(name: str, header: list[str], rows: list[list[Any]], classes: list[str] | None = None) -> str:
    if not rows:
        return f'<p class="empty" id="table-{name}">no data recorded for this section</p>'
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>")
    return f'<table id="table-{name}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _figure(name: str, fig: Any, caption: str, tight: bool = True) -> str:
    """The matplotlib figure as an embedded PNG (closed afterwards). ``tight=False`` for a grid laid
    out by hand: a tight bounding box costs a second rendering pass."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, **({"bbox_inches": "tight"} if tight else {}))
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode()
    return (f'<figure id="fig-{name}"><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")  # fmt: skip


def _no_figure(name: str, why: str) -> str:
    return f'<p class="empty" id="fig-{name}">no plot: {html.escape(why)}</p>'


class _Data:
    """The records a report reads, loaded once."""

    def __init__(self, ws: Workspace, ds: str, n_days: int) -> None:
        self.ws, self.ds = ws, ds
        self.days = window_days(ds, n_days)
        self.evaluations = {d: read_json_object(ws.run_dir(d) / "evaluation.json") for d in self.days}
        self.verdicts = {d: read_json_object(ws.validation_dir(d) / "verdict.json") for d in self.days}
        self.steps = runlog.read(ws, ds)
        steps = self.steps["steps"]

        def of_this_run(name: str, path: Path) -> dict[str, Any] | None:
            """A step's file, unless the day's record shows that step did not succeed in this run
            (a file left by an earlier attempt must not read as today's result)."""
            if steps and (steps.get(name) or {}).get("state") != "success":
                return None
            return read_json_object(path)

        self.decision = of_this_run("gate", ws.run_dir(ds) / "decision.json")
        self.promotion = of_this_run("promote", ws.run_dir(ds) / "promotion.json")
        self.lineage = of_this_run("train", ws.run_dir(ds) / "lineage.json")
        self.history = of_this_run("train", ws.run_dir(ds) / "light" / "history.json")
        if steps and (steps.get("train") or {}).get("state") != "success":
            self.evaluations[ds] = None
        self.events = _events(ws.registry / "events.jsonl")
        self.registry = Registry(ws)
        package = str((steps.get("package") or {}).get("outcome") or "")
        self.version = (self.promotion or {}).get("version") or (
            package[8:] if package.startswith("version ") else None
        )


# ---- sections ----


def _summary(d: _Data, st: dict[str, Any]) -> str:
    state, line = status.run_summary(d.steps)
    prod = st["serving"]
    serving = (f"{prod['version']} (trained on ds={prod['ds']}, K={prod['k']}) since {prod['since']}: {prod['reason']}"
               if prod else "nothing deployed")  # fmt: skip
    rows = [
        ["this run", f"{state.upper()}: {line}"],
        ["serving now", serving],
        ["set by", prod["by"] if prod else "—"],
        ["rollback target", (prod or {}).get("previous") or "—"],
        ["open alerts", str(len(st["alerts"]))],
        ["quarantined days", ", ".join(q["ds"] for q in st["quarantined"]) or "none"],
    ]
    links = [("validation report", (d.verdicts.get(d.ds) or {}).get("report")),
             ("Great Expectations Data Docs", (d.verdicts.get(d.ds) or {}).get("data_docs")),
             ("gate report", (d.ws.run_dir(d.ds) / "decision.md").as_uri() if d.decision else None),
             ("registry index", (d.ws.registry / "index.md").as_uri() if (d.ws.registry / "index.md").exists() else None)]  # fmt: skip
    safe = [(n, str(u)) for n, u in links if u and str(u).startswith(("file:", "http:", "https:"))]
    link_html = " · ".join(f'<a href="{html.escape(u)}">{html.escape(n)}</a>' for n, u in safe)
    alerts = "".join(
        f"<li>{html.escape(a.get('at', '')[:19])} {html.escape(str(a.get('kind')))} "
        f"{html.escape(str(a.get('task_id') or ''))} ds={html.escape(str(a.get('ds') or '—'))}: "
        f"{html.escape(str(a.get('hint', '')))}</li>"
        for a in st["alerts"][:10]
    )
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return (f'<section id="summary"><h2>At a glance</h2><table class="kv">{body}</table>'
            f"<p>{link_html}</p>{'<h3>Open alerts</h3><ul>' + alerts + '</ul>' if alerts else ''}</section>")  # fmt: skip


def _steps(d: _Data) -> str:
    rows, classes = [], []
    for name in runlog.STEPS:
        s = d.steps["steps"].get(name)
        if not s:
            rows.append([name, "not run (skipped or not reached)", None, "", ""])
            classes.append("muted")
            continue
        state = "building this page" if name == "report" and s.get("state") == "running" else s.get("state")
        seconds = f"{s['seconds']:.1f}" if isinstance(s.get("seconds"), int | float) else None
        rows.append([name, state, seconds, s.get("outcome") or "", str(s.get("error") or "")[:400]])
        classes.append("bad" if s.get("state") == "failed" else "")
    note = f"run {html.escape(str(d.steps.get('run_id')))}"
    return (f'<section id="steps"><h2>Steps of ds={d.ds}</h2><p>{note}</p>'
            + _table("steps", ["step", "state", "seconds", "outcome", "error"], rows, classes) + "</section>")  # fmt: skip


def _lineage(d: _Data, st: dict[str, Any]) -> str:
    rows = []
    version = read_json_object(d.registry.version_dir(d.version) / "manifest.json") if d.version else None
    lineage = (version or {}).get("lineage") or d.lineage
    if lineage and "code" in lineage:
        rows.append(
            [
                "this run's code",
                lineage["code"].get("commit"),
                "uncommitted changes" if lineage["code"].get("dirty") else lineage["code"].get("source"),
            ]
        )
        rows.append(["effective config", lineage.get("config_sha256"), "sha256 of the config JSON"])
        policy = lineage.get("gate_policy") or (d.decision or {}).get("policy") or {}
        rows.append(["gate policy", policy.get("sha256"), policy.get("path")])
        for lib, v in (lineage.get("libraries") or {}).items():
            rows.append(["library", lib, v])
        trained = set(lineage.get("trained_days") or [])
        for day in lineage.get("data", []):
            tables = [t for t in ("requests", "candidates", "eval_candidates") if day.get(t)]
            if not tables:
                rows.append([f"data ds={day['ds']}", "no partitions", "nothing had landed for this day of the window"])
            for t in tables:
                fp = day.get(t) or {}
                used = "trained on" if day["ds"] in trained else "left out"
                rows.append([f"data {t} ds={day['ds']}", fp.get("sha256", "absent"),
                             f"{day.get('validation') or 'not validated'}, {used}, {fp.get('files', 0)} file(s), {fp.get('bytes', 0)} bytes"])  # fmt: skip
    chain = []
    prod = st["serving"]
    seen, current = set(), prod["version"] if prod else None
    while current and current not in seen and len(chain) < 10:  # serving version → its parents
        seen.add(current)
        m = read_json_object(d.registry.version_dir(current) / "manifest.json") or {}
        code = ((m.get("lineage") or {}).get("code") or {}).get("commit", "not recorded")
        chain.append(f"{current} (ds={m.get('ds')}, window {', '.join(m.get('window_days') or [])}, code {code[:12]})")
        current = m.get("parent")
    chain_html = " ← ".join(html.escape(c) for c in chain) or "no version serving"
    this = f"this day's version: {version['version']}" if version else "this day registered no version"
    return (f'<section id="lineage"><h2>Lineage: from data to the serving version</h2>'
            f"<p>{html.escape(this)}. Serving chain (newest first): {chain_html}</p>"
            + _table("lineage", ["what", "identity", "detail"], rows) + "</section>")  # fmt: skip


def _auc(d: _Data) -> str:
    import matplotlib.pyplot as plt

    series: dict[str, dict[str, list[float]]] = {}
    rows = []
    for day in d.days:
        ev = d.evaluations.get(day)
        if not ev:
            continue
        cand, prod = ev.get("candidate") or {}, ev.get("production") or {}
        for s in SLICES:
            for who, metrics, key in (("candidate light", cand, f"light.auc.{s}"),
                                      ("production light", prod, f"light.auc.{s}"),
                                      ("candidate expressive", cand, f"expressive.auc.{s}")):  # fmt: skip
                value = metrics.get(key)
                if value is not None:
                    series.setdefault(s, {}).setdefault(who, []).append((day, value))
            rows.append([day, s, cand.get(f"light.auc.{s}"), prod.get(f"light.auc.{s}"), cand.get(f"expressive.auc.{s}"),
                         ev.get("production_version") or "—"])  # fmt: skip
    table = _table(
        "auc",
        ["ds", "slice", "candidate light", "production light", "candidate expressive", "production version"],
        rows,
    )
    if not series:
        return f'<section id="auc"><h2>Held-out AUC by difficulty slice</h2>{_no_figure("auc", "no evaluation in the last days")}{table}</section>'
    fig, axes = plt.subplots(1, len(SLICES), figsize=(3.2 * len(SLICES), 2.8), sharey=False)
    for ax, s in zip(axes, SLICES, strict=True):
        for who, points in series.get(s, {}).items():
            ax.plot([p[0][5:] for p in points], [p[1] for p in points], marker="o", label=who)
        ax.set_title(s + (" (hard)" if s in HARD_SOURCES else ""))
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("AUC")
    handles = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels(), strict=True)}
    fig.legend(
        handles.values(), handles.keys(), fontsize=7, loc="upper center", ncol=len(handles), bbox_to_anchor=(0.5, 1.08)
    )
    caption = f"AUC per slice over {d.days[0]}..{d.days[-1]}: each day's candidate and the production model on the same held-out day"
    return f'<section id="auc"><h2>Held-out AUC by difficulty slice</h2>{_figure("auc", fig, caption)}{table}</section>'


def _baselines(d: _Data) -> str:
    """The run's light model beside each baseline score on the same held-out candidates, and its
    margin over the best single feature per slice with the paired interval."""
    ev = d.evaluations.get(d.ds) or {}
    summary = ev.get("baselines") or {}
    light = ev.get("candidate") or {}
    aucs = summary.get("aucs") or {}
    rows = [["light model (candidate)", *(light.get(f"light.auc.{s}") for s in SLICES)]]
    rows += [[name, *(t.get(f"auc.{s}") for s in SLICES)] for name, t in sorted(aucs.items())]
    best = summary.get("best_feature")
    classes = [""] + ["muted" if name != best else "" for name in sorted(aucs)]
    if best:
        margin, ci = summary.get("margin") or {}, summary.get("margin_ci95") or {}
        rows.append([f"margin over {best}", *(margin.get(f"auc.{s}") for s in SLICES)])
        rows.append(["margin 95% CI", *(ci.get(f"auc.{s}") for s in SLICES)])
        below = [s for s in SLICES if (ci.get(f"auc.{s}") or [0, 0])[1] < 0]
        classes += ["bad" if below else "", "bad" if below else ""]
        verdict = (f"the light model is below {best} alone beyond noise on: {', '.join(below)}" if below
                   else f"the light model is not below its best single feature ({best}) on any slice")  # fmt: skip
    else:
        verdict = "no baseline scores recorded for this run" if not aucs else "no numeric item feature to compare"
    table = _table("baselines", ["score", *(f"AUC {s}" for s in SLICES)], rows if aucs else [], classes)
    return f'<section id="baselines"><h2>Against its own features</h2><p>{html.escape(verdict)}</p>{table}</section>'


def _gate(d: _Data) -> str:
    if not d.decision:
        return (
            f'<section id="gate"><h2>Gate</h2><p>the run did not reach the gate</p>{_table("gate", [], [])}</section>'
        )
    rows, classes = [], []
    for c in d.decision.get("checks", []):
        rows.append([c["metric"], c.get("role", "decides"), c["status"], c.get("candidate"), c.get("production"),
                     c.get("delta"), c.get("delta_ci95"), c.get("first"), c.get("first_delta"), c.get("first_delta_ci95"),
                     c.get("floor"), c.get("max_drop"), c.get("max_drop_vs_first"), c.get("ceiling"), c.get("examples"),
                     c.get("why")])  # fmt: skip
        classes.append("bad" if c["status"] == "fail" else "muted" if c["status"] != "pass" else "")
    verdict = "PASS" if d.decision.get("passed") else "FAIL"
    promo = (
        f" Promotion: {'deploy' if d.promotion['deploy'] else 'stop'}: {d.promotion['reason']}." if d.promotion else ""
    )
    header = ["rule (metric)", "role", "status", "candidate", "production", "delta", "delta 95% CI", "first accepted",
              "delta vs first", "delta vs first 95% CI", "floor", "max drop", "max drop vs first", "ceiling", "examples",
              "why"]  # fmt: skip
    anchor = d.decision.get("anchor_version")
    basis = (f" Production ({d.decision.get('production_version') or 'none'}) and the first accepted version "
             f"({anchor or 'none yet'}) are replayed on this run's held-out requests: every delta is paired.")  # fmt: skip
    why = f'<p class="muted">{html.escape(d.decision["reasoning"])}</p>' if d.decision.get("reasoning") else ""
    return (f'<section id="gate"><h2>Gate: {verdict}</h2><p>{html.escape(d.decision.get("reason", ""))}.'
            f"{html.escape(promo)}{html.escape(basis)}</p>" + _table("gate", header, rows, classes) + why + "</section>")  # fmt: skip


def _routing(d: _Data) -> str:
    import matplotlib.pyplot as plt

    routing = (d.evaluations.get(d.ds) or {}).get("routing") or {}
    curve = routing.get("curve") or []
    rows = [[p["k"], p["flops_per_request"] / 1e6, p["value"], p["lift"], p.get("lift_ci95"),
             "chosen" if p["k"] == routing.get("k") else ""] for p in curve]  # fmt: skip
    table = _table("routing", ["K", "MFLOPs/request", "system metric", "lift vs light", "lift 95% CI", ""], rows)
    if not curve:
        return f'<section id="routing"><h2>System metric against FLOPs across K</h2>{_no_figure("routing", "no routing curve (no evaluation)")}{table}</section>'
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    x = [p["flops_per_request"] / 1e6 for p in curve]
    y = [p["value"] for p in curve]
    err = [[p["value"] - (p["value"] - p["lift"] + p["lift_ci95"][0]) for p in curve],
           [(p["value"] - p["lift"] + p["lift_ci95"][1]) - p["value"] for p in curve]]  # fmt: skip
    ax.errorbar(x, y, yerr=[[max(0, e) for e in err[0]], [max(0, e) for e in err[1]]], marker="o", capsize=3)
    for p, xi, yi in zip(curve, x, y, strict=True):
        ax.annotate(f"K={p['k']}", (xi, yi), textcoords="offset points", xytext=(3, 4), fontsize=7)
    chosen = [(xi, yi) for p, xi, yi in zip(curve, x, y, strict=True) if p["k"] == routing.get("k")]
    if chosen:
        ax.scatter(
            *zip(*chosen, strict=True), s=160, marker="*", color="tab:red", zorder=3, label=f"chosen K={routing['k']}"
        )
    if routing.get("uniform_expressive_flops"):
        ax.axvline(routing["uniform_expressive_flops"] / 1e6, color="grey", ls="--", label="uniform expressive")
    ax.set_xlabel("MFLOPs per request")
    ax.set_ylabel(f"system metric ({routing.get('view')}) @M={routing.get('m')}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    caption = f"ds={d.ds}: two-stage system metric against compute as K grows (K=0: light alone; bars: 95% interval of the lift)"
    return (f'<section id="routing"><h2>System metric against FLOPs across K</h2><p>{html.escape(routing.get("reason", ""))}</p>'
            f"{_figure('routing', fig, caption)}{table}</section>")  # fmt: skip


def _band(b: Any) -> dict[str, float] | None:
    """A day-over-day band with finite numbers, else ``None`` (a NaN statistic is not drawn)."""
    try:
        band = {k: float(b[k]) for k in ("observed", "min", "max")}
    except (TypeError, KeyError, ValueError):
        return None
    return band if math.isfinite(band["observed"]) else None


def _inside(b: dict[str, float]) -> bool:
    return b["min"] <= b["observed"] <= b["max"]


def _validation(d: _Data) -> str:
    import matplotlib.pyplot as plt

    today = d.verdicts.get(d.ds) or {}
    bands = today.get("day_over_day") if isinstance(today.get("day_over_day"), dict) else {}
    rows, classes = [], []
    for stat, raw in bands.items():
        b = _band(raw)
        inside = b is not None and _inside(b)
        why = raw.get("why") if isinstance(raw, dict) else None
        rows.append([stat, *((b["observed"], b["min"], b["max"]) if b else ("not a number", None, None)),
                     "yes" if inside else "NO", why])  # fmt: skip
        classes.append("" if inside else "bad")
    verdicts = [[day, v.get("status") or ("passed" if v.get("success") else "quarantined"),
                 "" if v.get("status", "passed") == "passed" and v.get("success", True) else status.first_failure(v)]
                for day in d.days if (v := d.verdicts.get(day))]  # fmt: skip
    table = _table(
        "validation", ["statistic", "observed", "band min", "band max", "in band", "band from"], rows, classes
    )
    table += _table("verdicts", ["ds", "verdict", "first failed expectation"], verdicts)
    series = {}
    for stat in bands:
        pts = [(day[5:], _band(((d.verdicts.get(day) or {}).get("day_over_day") or {}).get(stat))) for day in d.days]
        pts = [(x, b) for x, b in pts if b is not None]
        if pts:
            series[stat] = pts
    if not series:
        return f'<section id="validation"><h2>Validation statistics against their bands</h2>{_no_figure("validation", "the day has no day-over-day bands (no verdict, or no trailing days)")}{table}</section>'
    cols, n_rows = 4, math.ceil(len(series) / 4)
    fig, axes = plt.subplots(n_rows, cols, figsize=(13, 2.1 * n_rows), squeeze=False)
    for ax, (stat, pts) in zip(axes.flat, series.items(), strict=False):
        x = [p[0] for p in pts]
        lo = [p[1]["min"] if math.isfinite(p[1]["min"]) else p[1]["observed"] for p in pts]
        hi = [p[1]["max"] if math.isfinite(p[1]["max"]) else p[1]["observed"] for p in pts]
        ax.fill_between(x, lo, hi, alpha=0.2, step="mid")
        ax.plot(x, [p[1]["observed"] for p in pts], marker="o")
        bad = [(p[0], p[1]["observed"]) for p in pts if not _inside(p[1])]
        if bad:
            ax.scatter(*zip(*bad, strict=True), color="tab:red", zorder=3)
        ax.set_ylim(*_band_limits([p[1] for p in pts]))
        ax.set_title(stat, fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in list(axes.flat)[len(series) :]:
        ax.axis("off")
    fig.subplots_adjust(left=0.04, right=0.99, top=0.95, bottom=0.06, hspace=0.55, wspace=0.3)
    caption = "Each day's statistic (line) against its band (shaded, from the trailing days); red: outside its band"
    return f'<section id="validation"><h2>Validation statistics against their bands</h2>{_figure("validation", fig, caption, tight=False)}{table}</section>'


def _band_limits(bands: list[dict[str, float]]) -> tuple[float, float]:
    """Y limits that show the observed values and as much of the bands as stays readable (a band
    with no trailing days, or capped far away, would flatten the line)."""
    observed = [b["observed"] for b in bands]
    lo, hi = min(observed), max(observed)
    span = max(hi - lo, abs(hi) * 0.5, 1e-6)
    finite = [v for b in bands for v in (b["min"], b["max"]) if math.isfinite(v)]
    lo = max(min([lo, *finite]), lo - 2 * span)
    hi = min(max([hi, *finite]), hi + 2 * span)
    if hi - lo < 1e-9:
        lo, hi = lo - span, hi + span
    return lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)


def _gradients(d: _Data) -> str:
    import matplotlib.pyplot as plt

    monitor = (d.history or {}).get("grad_monitor") or []
    epochs = (d.history or {}).get("epochs") or []
    if not monitor:
        return f'<section id="gradients"><h2>Gradient conflict during training</h2>{_no_figure("gradients", "no gradient monitor recorded for this day (not trained, or monitor_every=0)")}</section>'
    pairs = sorted({k for m in monitor for k in m.get("cosine", {})})
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(12, 3.2))
    for pair in pairs:
        pts = [(m["step"], m["cosine"][pair]) for m in monitor if pair in m.get("cosine", {})]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], label=pair.replace("|", " vs "), lw=1)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xlabel("training step")
    ax.set_ylabel("cosine of the sources' gradients")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    ax2.plot([e["epoch"] for e in epochs], [e.get("loss") for e in epochs], marker="o", label="train loss")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("loss")
    if any("valid_auc" in e for e in epochs):
        twin = ax2.twinx()
        twin.plot([e["epoch"] for e in epochs], [e.get("valid_auc") for e in epochs], color="tab:green", marker="s")
        twin.set_ylabel("validation AUC", color="tab:green")
    caption = (f"Light model, ds={d.ds}: pairwise cosines of the negative sources' contrastive gradients on the shared "
               f"parameters (below 0: the sources pull apart, what GHCL harmonizes), and loss / validation AUC per epoch")  # fmt: skip
    last = monitor[-1].get("cosine", {})
    rows = [[pair, last.get(pair), min(m["cosine"].get(pair, 1) for m in monitor)] for pair in pairs]
    return (f'<section id="gradients"><h2>Gradient conflict during training</h2>{_figure("gradients", fig, caption)}'
            + _table("gradients", ["source pair", "last cosine", "lowest cosine"], rows) + "</section>")  # fmt: skip


def _kind(e: dict[str, Any]) -> str:
    if e["event"] == "set_production":
        reason = e.get("reason") or ""
        return (
            "rollback"
            if reason.startswith("rollback")
            else "shadow promoted"
            if reason.startswith("shadow")
            else "deploy"
        )
    return e["event"].replace("_", " ")


def _timeline(d: _Data) -> str:
    import matplotlib.pyplot as plt

    events = d.events[-60:]
    rows = [[str(e.get("at", ""))[:19], _kind(e), e.get("version") or e.get("shadow"), e.get("previous") or e.get("serving"),
             e.get("reason") or e.get("error") or e.get("outcome") or "", e.get("by", "")] for e in events]  # fmt: skip
    table = _table("timeline", ["at (UTC)", "event", "version", "before", "why", "by"], list(reversed(rows)))
    if not events:
        return f'<section id="timeline"><h2>Deploys and rollbacks</h2>{_no_figure("timeline", "nothing deployed yet")}{table}</section>'
    versions = sorted({str(r[2]) for r in rows})
    style = {"deploy": ("o", "tab:blue"), "rollback": ("v", "tab:red"), "deploy failed": ("x", "black"),
             "shadow start": ("s", "tab:purple"), "shadow end": ("s", "grey"), "shadow promoted": ("^", "tab:green")}  # fmt: skip
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(versions) + 1.6))
    times = [e["_at"] for e in events]
    prod = [
        (t, str(r[2])) for t, r in zip(times, rows, strict=True) if r[1] in ("deploy", "rollback", "shadow promoted")
    ]
    if prod:
        ax.step([p[0] for p in prod], [versions.index(p[1]) for p in prod], where="post", color="lightgrey", zorder=1)
    for kind, (marker, color) in style.items():
        pts = [(t, versions.index(str(r[2]))) for t, r in zip(times, rows, strict=True) if r[1] == kind]
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], marker=marker, color=color, label=kind, zorder=2)
    ax.set_yticks(range(len(versions)), versions)
    ax.set_ylim(-0.7, len(versions) - 0.3)
    if max(times) - min(times) < dt.timedelta(hours=2):  # a short history: an hour either side, not years
        ax.set_xlim(min(times) - dt.timedelta(hours=1), max(times) + dt.timedelta(hours=1))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    caption = "Which version served when: deploys, rollbacks, failed deploys and shadows (grey line: production)"
    return f'<section id="timeline"><h2>Deploys and rollbacks</h2>{_figure("timeline", fig, caption)}{table}</section>'


def _section(name: str, fn: Any, args: tuple) -> str:
    """One section; a record it cannot read costs that section, never the page."""
    import matplotlib.pyplot as plt

    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - the rest of the page is what on-call needs now
        plt.close("all")
        log.exception("report section %s failed", name)
        return (f'<section id="{name}"><h2>{name}</h2><p class="error">this section could not be drawn from the '
                f"records: {html.escape(type(exc).__name__)}: {html.escape(str(exc)[:300])}</p></section>")  # fmt: skip


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;max-width:1400px;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left}
tr.bad td{background:#fde2e2}.error{color:#a00}tr.muted td{color:#888}.kv th{background:#f4f4f4}figure{margin:.5em 0}
img{max-width:100%}.empty{color:#888;font-style:italic}nav a{margin-right:1em}
"""
# A real browser marks how many embedded plots it could decode (tests read this with headless chromium).
CHECK = """<script>addEventListener('load',()=>{const i=[...document.images];
document.getElementById('render-check').textContent=`plots rendered: ${i.filter(x=>x.complete&&x.naturalWidth>0).length}/${i.length}`;});</script>"""


def build(ds: str, ws: Workspace | None = None, n_days: int = 14) -> Path:
    """Write ``reports/ds=<ds>/index.html`` from the workspace's records; returns its path."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    ws = ws or Workspace.from_env()
    d = _Data(ws, ds, n_days)
    st = status.collect(ws, live=False)
    parts = [("summary", _summary, (d, st)), ("steps", _steps, (d,)), ("lineage", _lineage, (d, st)), ("auc", _auc, (d,)),
             ("baselines", _baselines, (d,)), ("gate", _gate, (d,)), ("routing", _routing, (d,)), ("validation", _validation, (d,)),
             ("gradients", _gradients, (d,)), ("timeline", _timeline, (d,))]  # fmt: skip
    sections = [_section(name, fn, args) for name, fn, args in parts]
    nav = " ".join(f'<a href="#{s}">{s}</a>' for s in ("summary", "steps", "lineage", "auc", "baselines", "gate", "routing",
                                                       "validation", "gradients", "timeline"))  # fmt: skip
    generated = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    page = (f"<!doctype html><html lang=en><head><meta charset=utf-8><title>HAP daily report ds={ds}</title>"
            f"<style>{STYLE}</style></head><body><h1>HAP daily report · ds={ds}</h1>"
            f"<p>generated {generated} from {html.escape(str(ws.root))} · <span id=render-check>plots not rendered</span></p>"
            f"<nav>{nav}</nav>{''.join(sections)}{CHECK}</body></html>")  # fmt: skip
    out = ws.report_dir(ds) / "index.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name("index.html.tmp")
    tmp.write_text(page)
    tmp.replace(out)
    return out
