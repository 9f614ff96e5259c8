"""HAP pre-ranking: the core every layer builds on (data contract, config, workspace) and the facts
they all share. Imports nothing of ours but the serving runtime (``hap_runtime``)."""

SOURCES: tuple[str, ...] = ("expose", "rank", "prerank", "global")
"""Negative sources, hardest first. The index of a source in this tuple is its integer id."""

HARD_SOURCES: tuple[str, ...] = ("expose", "rank")
"""Sources the expressive model trains on (DAMR)."""

SLICES: tuple[str, ...] = ("overall", *SOURCES)
"""Difficulty slices an AUC is reported on: all negatives, then positives vs each source's negatives."""
