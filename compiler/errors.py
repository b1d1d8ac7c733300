"""User-facing errors. The CLI prints their message on one line and exits 2; anything else (PassBugError
included) is an internal error: exit 1, traceback with -v."""


class AccelcError(Exception):
    """An error caused by the user's input or environment, reported without a traceback."""

    exit_code = 2


class InputError(AccelcError):
    """A missing, corrupt or unsupported input (model, text file, artifact, option)."""


class UnsupportedArchitectureError(InputError):
    """The model's architecture is not one the adapters know."""


class ArtifactError(AccelcError):
    """An artifact that is missing files, fails its hashes or has an unknown format."""


def _pass_message(pass_name: str, message: str, before: list[str]) -> str:
    done = ", ".join(before) if before else "none"
    return f"pass '{pass_name}' failed: {message} (passes completed before it: {done})"


class ValidationError(AccelcError):
    """The compiled graphs disagree with the source model past the tolerance. Nothing in the input was
    wrong, so it exits 1 like a bug; it is still one line (the cause is numerical, not in a traceback)."""

    exit_code = 1


class PassError(AccelcError):
    """A pass refused its input (an AccelcError or an unmet precondition inside it): exit 2, or the exit
    code of the AccelcError it wraps (ValidationError: 1). The message names the pass and the passes that
    ran before it."""

    def __init__(self, pass_name: str, message: str, before: list[str] | None = None, exit_code: int = 2):
        self.pass_name = pass_name
        self.before = list(before or [])
        self.exit_code = exit_code
        super().__init__(_pass_message(pass_name, message, self.before))


class PassBugError(Exception):
    """A pass raised something that is not an AccelcError: a bug in accelc or a library failure, not bad
    input. Not an AccelcError, so the CLI reports it as an internal error (exit 1; -v shows the traceback,
    the original exception chained as the cause). Same message format as PassError."""

    exit_code = 1

    def __init__(self, pass_name: str, message: str, before: list[str] | None = None):
        self.pass_name = pass_name
        self.before = list(before or [])
        super().__init__(_pass_message(pass_name, message, self.before))


class PreconditionError(Exception):
    """Raised by Pass.requires when a pass cannot run on the bundle as it is."""
