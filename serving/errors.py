"""Serving's expected failures, importable without torch (the CLI reports them without a traceback)."""


class ServingError(RuntimeError):
    """TorchServe refused or failed a management call, or is not where it should be."""


class AuthError(ServingError):
    """The API keys could not be read or renewed."""


class DeployFailed(RuntimeError):
    """A deploy, rollback or shadow step did not happen; the serving model is unchanged."""
