"""The pass base class, modelled on onnx-ir's pass infrastructure.

A pass is a small class with a frozen config dataclass. `Pass.__call__` runs
requires -> call -> ensures and turns any failure into an error naming the pass: PassError (exit 2) for
user errors (AccelcError) and unmet pre/postconditions, PassBugError (exit 1) for any other exception.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .bundle import ModelBundle
from .errors import AccelcError, PassBugError, PassError, PreconditionError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassConfig:
    """Base of every pass's configuration. Subclasses validate in __post_init__."""


@dataclass
class PassResult:
    """What a pass did: whether it changed the bundle, and what it measured."""

    changed: bool
    metrics: dict[str, Any] = field(default_factory=dict)


class Pass:
    """Base class. Subclasses set `name`, `config_class`, and implement `call`."""

    name: ClassVar[str] = "pass"
    config_class: ClassVar[type[PassConfig]] = PassConfig

    def __init__(self, config: PassConfig | None = None):
        if config is None:
            config = self.config_class()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    # -- to override -------------------------------------------------------------------------
    def requires(self, bundle: ModelBundle) -> None:
        """Raise PreconditionError if the pass cannot run on this bundle."""

    def call(self, bundle: ModelBundle) -> PassResult:
        raise NotImplementedError

    def ensures(self, bundle: ModelBundle, result: PassResult) -> None:
        """Raise PreconditionError if the pass left the bundle in a state it promised not to."""

    # -- framework ---------------------------------------------------------------------------
    def config_dict(self) -> dict[str, Any]:
        return {k: _jsonable(v) for k, v in dataclasses.asdict(self.config).items()}

    def __call__(self, bundle: ModelBundle) -> PassResult:
        try:
            self.requires(bundle)
        except PreconditionError as e:
            raise PassError(self.name, f"precondition not met: {e}") from e
        try:
            result = self.call(bundle)
        except (AccelcError, PreconditionError) as e:
            if isinstance(e, PassError):
                raise
            raise PassError(self.name, str(e), exit_code=getattr(e, "exit_code", 2)) from e
        except Exception as e:  # a bug or a library failure, not bad input: exit 1, keep the cause, name the pass
            log.debug("pass %s raised", self.name, exc_info=True)
            raise PassBugError(self.name, f"{type(e).__name__}: {e}") from e
        if not isinstance(result, PassResult):
            raise PassError(self.name, f"call() returned {type(result).__name__}, not PassResult")
        try:
            self.ensures(bundle, result)
        except PreconditionError as e:
            raise PassError(self.name, f"postcondition not met: {e}") from e
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


def _jsonable(v: Any) -> Any:
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)
