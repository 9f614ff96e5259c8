"""Day-over-day bands: which earlier days a day is compared with, and the band of every aggregate.

The policy (also in the runbook, *Inspect a failed validation*):

1. **Which days count.** Earlier days whose rows are sound — every row-level, per-request and
   schema check passed — including days quarantined *only* by these bands. So one bad day cannot
   make every later normal day fail (no cascade), and a lasting change (traffic doubled after a
   launch) becomes the new normal once it is most of the baseline. A day never validated is read
   from its partition, so the verdict does not depend on the order days are validated in.
2. **Which of them.** Traffic has a weekly cycle: the same weekday in the last ``weeks`` weeks when
   one exists; else the trailing ``trailing_days``, with every band widened by ``warmup_widen``;
   with fewer than ``min_history`` such days the bands are open (warm-up).
3. **The band.** ``[median·lo, median·hi]`` (plus an absolute slack for shares near zero). Absolute
   caps (``ValidationConfig.max_*``) hold from the first day, warm-up or not; the concentration
   shares are judged only on days with at least ``min_requests_for_shares`` requests.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from expectations.derived import SHARE_STATS
from expectations.suites import VOLUME_STATS
from hap.config import DayOverDay, ValidationConfig

OPEN = (0.0, 1e18)


@dataclass(frozen=True)
class Baseline:
    basis: str  # "same weekday" | "trailing" | "warm-up"
    days: tuple[str, ...]
    widen: float
    history: tuple[dict[str, float], ...]

    def describe(self) -> str:
        if self.basis == "warm-up":
            return "warm-up (too few earlier days): open band"
        return f"median of {len(self.days)} {self.basis} day(s) {', '.join(self.days)}"


def candidate_days(ds: str, dod: DayOverDay) -> tuple[list[str], list[str]]:
    """Same-weekday days of the last ``weeks`` weeks and the trailing days, newest first."""
    day = dt.date.fromisoformat(ds)
    same = [(day - dt.timedelta(weeks=w)).isoformat() for w in range(1, dod.weeks + 1)]
    trailing = [(day - dt.timedelta(days=d)).isoformat() for d in range(1, dod.trailing_days + 1)]
    return same, trailing


def choose(ds: str, dod: DayOverDay, stats_of: Callable[[str], dict[str, float] | None]) -> Baseline:
    """The baseline for ``ds``; ``stats_of(day)`` gives a sound earlier day's aggregates or None."""
    same, trailing = candidate_days(ds, dod)
    found = {d: s for d in dict.fromkeys(same + trailing) if (s := stats_of(d)) is not None}
    same_days = [d for d in same if d in found]
    if same_days:
        return Baseline("same weekday", tuple(same_days), 1.0, tuple(found[d] for d in same_days))
    trail_days = [d for d in trailing if d in found]
    if len(trail_days) >= dod.min_history:
        return Baseline("trailing", tuple(trail_days), dod.warmup_widen, tuple(found[d] for d in trail_days))
    return Baseline("warm-up", (), 1.0, ())


def bands(stats: dict[str, float], base: Baseline, cfg: ValidationConfig) -> dict[str, dict[str, Any]]:
    """Per aggregate: observed value, ``min``/``max`` of its band, the median it came from and why."""
    dod = cfg.day_over_day
    caps = {
        "leakage_share": cfg.max_leakage_share,
        "top_user_positive_share": cfg.max_top_user_positive_share,
        "top_user_request_share": cfg.max_top_user_request_share,
        "top_item_expose_share": cfg.max_top_item_expose_share,
        "carryover_share": cfg.max_carryover_share,
        "request_id_reuse_share": cfg.max_request_id_reuse_share,
    }
    out = {}
    for name, observed in stats.items():
        if name in VOLUME_STATS:
            rule = (dod.volume_band, 0.0)
        elif name == "positive_rate":
            rule = (dod.positive_rate_band, 0.0)
        elif name == "leakage_share":
            rule = (dod.leakage_band, dod.leakage_slack)
        elif name in SHARE_STATS:
            rule = (dod.concentration_band, dod.concentration_slack)
        elif name.startswith("mode_share_"):
            rule = ((0.0, 1.0), dod.mode_share_slack)
        else:  # carry-over and id reuse: a cap only
            rule = None
        lo, hi, why = OPEN[0], OPEN[1], "no band"
        history = [h[name] for h in base.history if name in h]
        median = statistics.median(history) if history else None
        if rule is not None and median is not None:
            (b_lo, b_hi), slack = rule
            w = base.widen
            lo = max(0.0, median * b_lo / w - slack * w)
            hi = median * b_hi * w + slack * w
            why = base.describe() + (f", widened x{w:g}" if w != 1.0 else "")
        cap = caps.get(name)
        if name in SHARE_STATS and stats.get("request_rows", 0) < cfg.min_requests_for_shares:
            lo, hi, cap, why = OPEN[0], OPEN[1], None, f"not judged below {cfg.min_requests_for_shares} requests"
        if cap is not None and cap < hi:
            hi, why = cap, (why + "; " if why != "no band" else "") + f"capped at {cap:g}"
        out[name] = {"observed": observed, "min": lo, "max": hi, "median": median, "why": why}
    return out
