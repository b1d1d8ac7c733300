"""The library API: what the CLI, the tests, the scripts and apps call (docs/api.md).

    import accelc
    art = accelc.compile("smollm2-135m", target="cpu", weights="int8", out="out/int8")
    model = accelc.load(art)
    print(model.generate("What is the capital of France?", max_new_tokens=32))
    for piece in model.stream("Tell me a story."):
        print(piece, end="", flush=True)

`compile` loads the model source, runs the target's pipeline and writes the artifact atomically (nothing
half-written on any failure); `load` opens an artifact with the runtime alone (no torch, no transformers).
Bad input raises accelc.compiler.errors.AccelcError subclasses with one-line messages, checked before
the model loads wherever possible.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from .errors import InputError


def _is_json(v) -> bool:
    try:
        json.dumps(v)
        return True
    except TypeError:
        return False


def compile(model: str = "smollm2-135m", target: str = "cpu", out: str | Path | None = None, *,
            weights: str = "fp32", prune: str | None = None, quantize: str | None = None,
            drafter: str | None = None, formats: str | Sequence[str] | None = None, calib: str | None = None,
            cache_len: int = 1024, prefill_chunk: int = 64, validate: bool = True, force: bool = False,
            kv_cache: str = "full", convert: str | None = None, on_event: Callable | None = None,
            status: Callable[[str], None] | None = None) -> Path:
    """Compile `model` (a packaged name, a transformers folder or a .gguf file) for `target` into the
    artifact directory `out`; -> its path. The options are `accelc compile`'s (docs/usage.md).
    on_event: the pass manager's progress callback; status: a callable for one-line progress messages."""
    from ..models.sources import load_model, resolve
    from ..targets import CompileOptions, get_target
    from .artifact import check_output_dir, publish, staging, write_manifest
    from .manager import PassManager

    say = status or (lambda msg: None)
    if out is None:
        raise InputError("compile needs an output directory (out=...)")
    out = Path(out).expanduser().resolve()
    # everything that can be checked before the (slow) model load is checked first
    check_output_dir(out, force)
    tgt = get_target(target)
    if calib:
        from ..models.corpus import read_text_file
        read_text_file(calib)
    options = CompileOptions(weights=weights, prune=prune, quantize=quantize, drafter=drafter, calib=calib,
                             cache_len=cache_len, prefill_chunk=prefill_chunk, validate=validate, formats=formats,
                             kv_cache=kv_cache, convert=convert)
    passes = tgt.pipeline(options)
    options = tgt.resolve(options)
    kind, _ = resolve(model)
    if kind == "artifact":
        raise InputError(f"{model} is already an artifact; compile takes a model source")
    if drafter and drafter.partition(":")[0] not in ("fused", "eagle"):
        dkind, _ = resolve(drafter)               # a draft model path: checked before the slow load
        if dkind == "artifact":
            raise InputError(f"--drafter {drafter} is an accelc artifact; give the draft model's source")

    with staging(out) as stage:                   # created first: an unwritable parent fails before the load
        say(f"loading {model} ...")
        bundle = load_model(model)
        say(f"target {tgt.name}: " + " -> ".join(p.name for p in passes))
        bundle.workdir = stage
        log = PassManager(passes, on_event=on_event).run(bundle)
        bundle.tokenizer.save_pretrained(stage / "tokenizer")
        write_manifest(stage, {
            "source": bundle.source,
            "target": {"name": tgt.name, "static_shapes": tgt.static_shapes, "devices": list(tgt.devices)},
            "options": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(options).items()
                        if k != "extra"},
            "model": bundle.adapter.describe(),
            "graphs": bundle.records.get("graphs", {}),
            "records": {k: v for k, v in bundle.records.items() if k not in ("pass_log", "graphs") and _is_json(v)},
            "passes": [r.to_json() for r in log],
        })
        publish(stage, out, force)
    return out


@dataclass
class Model:
    """An opened artifact: generate, stream, chat. `artifact` is the runtime's Artifact (backend, device...)."""

    artifact: object

    def _ids(self, prompt: str, raw: bool, max_new_tokens: int, truncate: bool) -> list[int]:
        from ..runtime.generate import encode_prompt, fit_context
        a = self.artifact
        return fit_context(encode_prompt(a.tokenizer, prompt, raw=raw), max_new_tokens, a.context, truncate,
                           what=a.context_name)

    def generate(self, prompt: str, max_new_tokens: int = 128, *, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, stop: Sequence[str] = (), raw: bool = False,
                 truncate: bool = False, result: bool = False):
        """The generated text (or, with result=True, the GenerationResult with tokens and timings)."""
        from ..runtime.generate import generate
        from ..runtime.sampling import SamplingConfig
        ids = self._ids(prompt, raw, max_new_tokens, truncate)
        sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        r = generate(self.artifact, ids, max_new_tokens, sampling, stop)
        return r if result else r.text

    def stream(self, prompt: str, max_new_tokens: int = 128, *, temperature: float = 0.0, top_k: int = 0,
               top_p: float = 1.0, seed: int | None = None, stop: Sequence[str] = (), raw: bool = False,
               truncate: bool = False) -> Iterator[str]:
        """Text pieces as they are generated."""
        from ..runtime.generate import generate_iter
        from ..runtime.sampling import SamplingConfig
        ids = self._ids(prompt, raw, max_new_tokens, truncate)
        sampling = SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        yield from generate_iter(self.artifact, ids, max_new_tokens, sampling, stop)

    def chat(self, system: str | None = None, max_new_tokens: int = 256):
        """A multi-turn ChatSession (runtime/chat.py): .say(text, on_text=...) keeps history and KV cache."""
        from ..runtime.chat import ChatSession
        return ChatSession(self.artifact, max_new_tokens, system=system, context=self.artifact.context)


def load(path: str | Path, backend: str | None = None, device: str | None = None, threads: int | None = None,
         verify: bool = False, report: bool = False, precision: str | None = None) -> Model:
    """Open an artifact (checked and verified: docs/artifact.md "Trust"); verify=True rehashes every file;
    precision="f32" pins float32 arithmetic on the native backend."""
    from ..runtime.artifact import open_artifact
    return Model(open_artifact(path, backend=backend, device=device, threads=threads, report=report, precision=precision,
                               verify_all=verify))
