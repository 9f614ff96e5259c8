"""The day's validation report: one self-contained HTML page (no scripts, no network) that on-call
opens first — the verdict, every failure with its values and ids, each aggregate against its band —
linking to GX's own page of each suite's results.

GX's Data Docs *index* builds its table with scripts from public CDNs, so it is empty on a machine
without internet access; GX's per-suite result pages are plain HTML and render anywhere.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:75rem;color:#222}
h1{font-size:1.4rem} h2{font-size:1.1rem;margin-top:1.6rem}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:left}
th{background:#f3f3f3} .passed{color:#126b12;font-weight:bold} .quarantined,.fail{color:#a31515;font-weight:bold}
.num{text-align:right;font-variant-numeric:tabular-nums} code{background:#f6f6f6;padding:0 .2rem}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "open" if v >= 1e18 else f"{v:.4g}"
    return html.escape(str(v))


def render(verdict: dict[str, Any], suite_pages: dict[str, Path]) -> str:
    ds, status = verdict["ds"], verdict["status"]
    e = html.escape
    out = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>Validation ds={e(ds)}: {e(status)}</title>",
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>Validation of ds={e(ds)}: <span class={e(status)}>{e(status.upper())}</span></h1>",
    ]
    if status == "quarantined":
        out.append("<p>The partition is kept where it is and is not trained on. Fix the data and run "
                   f"<code>hap validate --ds {e(ds)}</code> again to clear it.</p>")  # fmt: skip
    out.append("<h2>Suites</h2><table><tr><th>suite</th><th>checks</th><th>failed</th><th>GX results</th></tr>")
    for name, t in verdict["tables"].items():
        page = suite_pages.get(name)
        link = f"<a href='{e(page.as_uri())}'>{e(name)} results</a>" if page else "—"
        cls = " class=fail" if t["failed"] else ""
        out.append(
            f"<tr><td>{e(name)}</td><td class=num>{t['evaluated']}</td><td class=num{cls}>{len(t['failed'])}</td>"
            f"<td>{link}</td></tr>"
        )
    out.append("</table>")
    failures = [(name, f) for name, t in verdict["tables"].items() for f in t["failed"]]
    if failures:
        out.append("<h2>Failures</h2><ul>")
        out += [f"<li><b>{e(name)}</b>: {e(f.get('message') or f['expectation'])}</li>" for name, f in failures]
        out.append("</ul>")
    bands = verdict.get("day_over_day") or {}
    if bands:
        out.append(f"<h2>Day over day</h2><p>Baseline: {e(verdict.get('baseline', ''))}</p>")
        out.append("<table><tr><th>aggregate</th><th>observed</th><th>band</th><th>median</th><th>why</th></tr>")
        for name, b in bands.items():
            inside = b["min"] <= b["observed"] <= b["max"]
            cls = "" if inside else " class=fail"
            median = "—" if b["median"] is None else _fmt(b["median"])
            out.append(
                f"<tr><td>{e(name)}</td><td class=num{cls}>{_fmt(b['observed'])}</td>"
                f"<td class=num>[{_fmt(b['min'])}, {_fmt(b['max'])}]</td><td class=num>{median}</td>"
                f"<td>{e(b['why'])}</td></tr>"
            )
        out.append("</table>")
    detail = verdict.get("detail") or {}
    if detail:
        out.append("<h2>Who drives the aggregates</h2><table>")
        out += [f"<tr><td>{e(k)}</td><td>{e(str(v))}</td></tr>" for k, v in detail.items()]
        out.append("</table>")
    partitions = verdict.get("partition") or {}
    out.append(
        "<h2>Partitions</h2><ul>" + "".join(f"<li>{e(t)}: <code>{e(p)}</code></li>" for t, p in partitions.items())
    )
    out.append("</ul></body></html>")
    return "\n".join(out)
