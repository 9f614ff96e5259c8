"""Expected failures of the application layer: a message for the user, no traceback."""


class StepRefused(RuntimeError):
    """A step that must not run on this day's state (e.g. packaging a run that failed its gate)."""
