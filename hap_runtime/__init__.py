"""The serving runtime every model archive carries: feature spec and encoding, the two models, the
request codec, the two-stage scorer and the TorchServe handler.

It imports only torch and the standard library, never the rest of the project, so an archive
fully determines the code that serves it (``serving.archive`` copies this package into the
``.mar``). Training and offline evaluation use the same modules from the installed project.
"""
