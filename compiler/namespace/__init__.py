"""The `accelc` package itself: the library API (compiler/api.py) at the top of the namespace.

    import accelc
    accelc.compile("smollm2-135m", target="cpu", out="out/fp32")
    accelc.load("out/fp32").generate("Hello")

(Installed as `accelc` by pyproject.toml's package-dir; the subpackages accelc.compiler, accelc.runtime ...
map to the repository's top-level folders.)"""
from accelc.compiler.api import Model, compile, load  # noqa: F401

__all__ = ["compile", "load", "Model"]
