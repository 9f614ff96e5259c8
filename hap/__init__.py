"""HAP pre-ranking: the shared core (data contract, simulator, config, registry, gate, CLI)."""

SOURCES: tuple[str, ...] = ("expose", "rank", "prerank", "global")
"""Negative sources, hardest first. The index of a source in this tuple is its integer id."""

HARD_SOURCES: tuple[str, ...] = ("expose", "rank")
"""Sources the expressive model trains on (DAMR)."""
