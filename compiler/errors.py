"""User-facing errors. The CLI prints their message on one line and exits 2."""


class AccelcError(Exception):
    """An error caused by the user's input or environment, reported without a traceback."""

    exit_code = 2


class InputError(AccelcError):
    """A missing, corrupt or unsupported input (model, text file, artifact, option)."""


class UnsupportedArchitectureError(InputError):
    """The model's architecture is not one the adapters know."""


class ArtifactError(AccelcError):
    """An artifact that is missing files, fails its hashes or has an unknown format."""


class PassError(AccelcError):
    """A pass failed; the message names it and the passes that ran before it."""

    def __init__(self, pass_name: str, message: str, before: list[str] | None = None):
        self.pass_name = pass_name
        self.before = list(before or [])
        done = ", ".join(self.before) if self.before else "none"
        super().__init__(f"pass '{pass_name}' failed: {message} (passes completed before it: {done})")


class PreconditionError(Exception):
    """Raised by Pass.requires when a pass cannot run on the bundle as it is."""
