"""The `--kv-cache` spec (issue 17), torch-free: the compiler's options, the manifest and the runtime read it.

    full                 the growing cache (default)
    window:M             the M most recent slots
    sink:M[,sinks=4]     StreamingLLM: the first `sinks` slots (attention sinks) and the M - sinks most recent
    h2o:M                heavy hitters only: the M slots with the highest accumulated attention
    lococo:M[,...]       LoCoCo: round(M x keep) slots verbatim (the `local` most recent and heavy hitters), the
                         rest learned convolutional mixtures (passes/kvcache/lococo.py); options steps, keep
                         and local (defaults: M/16 mixtures, M/16 heavy hitters, the rest recent; lococo_defaults),
                         kernel, chunk, seq_len, lr, seed, lam, device, tune (norms: the model's norm weights
                         train with the compressors, the reference's "inference mode"; none: the model stays
                         frozen) and norm_lr

Every fixed cache also takes buffer=B (default 16, the reference's): a cache of M slots takes new tokens until
it would hold more than M + B, then is cut back to exactly M before the next chunk attends to it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InputError
from .train_device import check_train_device

KINDS = ("full", "window", "sink", "h2o", "lococo")
BUFFER = 16
LOCOCO_KEYS = {"steps": int, "keep": float, "kernel": int, "chunk": int, "seq_len": int, "lr": float, "buffer": int,
               "seed": int, "local": int, "device": str, "lam": float, "tune": str, "norm_lr": float}
TUNE = ("norms", "none")    # lococo's tune=: what trains beside the compressors (passes/kvcache/train_lococo.py)
HELP = "full, window:M, sink:M[,sinks=4], h2o:M, lococo:M[,steps=N]"


def lococo_defaults(m: int, keep: float | None) -> tuple[float, int]:
    """LoCoCo's default keep rate and `local` for M slots (docs/runtime/kv-cache.md, "Choosing keep and local"):
    M/16 slots (at least one) are learned mixtures, M/16 heavy hitters, the rest the most recent tokens (M = 128:
    keep 0.9375, local 112). The reference's defaults are keep 0.5 and local 0; on SmolLM2-135M this split measured
    better, and better than sink + window. A keep given without local keeps M/16 heavy hitters among its slots."""
    part = max(1, m // 16)
    keep = 1 - part / m if keep is None else keep
    return keep, max(0, round(m * keep) - part)


@dataclass(frozen=True)
class KVCacheSpec:
    kind: str = "full"
    slots: int = 0                      # M
    sinks: int = 4                      # sink: attention sinks kept
    buffer: int = BUFFER                # slots past M before a cut
    options: dict = field(default_factory=dict)     # lococo training/compressor options

    @property
    def fixed(self) -> bool:
        return self.kind != "full"

    def __str__(self) -> str:
        return self.kind if self.kind == "full" else f"{self.kind}:{self.slots}"

    def to_json(self) -> dict:
        return {"kind": self.kind, "slots": self.slots, "sinks": self.sinks, "buffer": self.buffer,
                "options": dict(self.options)}

    @classmethod
    def from_json(cls, rec: dict | None) -> "KVCacheSpec":
        rec = rec or {}
        return cls(str(rec.get("kind", "full")), int(rec.get("slots", 0)), int(rec.get("sinks", 4)),
                   int(rec.get("buffer", BUFFER)), dict(rec.get("options") or {}))


def _convert(kind: str, key: str, val: str, typ: type):
    try:
        return typ(val)
    except ValueError:
        raise InputError(f"--kv-cache {kind}: {key} must be {typ.__name__}, got '{val}'") from None


def parse_kv_cache(text: str | None) -> KVCacheSpec:
    """`--kv-cache` value -> KVCacheSpec; one clear InputError for anything else."""
    text = (text or "full").strip()
    kind, _, rest = text.partition(":")
    if kind not in KINDS:
        raise InputError(f"--kv-cache: unknown cache '{kind}' (choose from {HELP})")
    if kind == "full":
        if rest:
            raise InputError("--kv-cache full takes no arguments")
        return KVCacheSpec()
    head, *items = [p.strip() for p in rest.split(",")] if rest else [""]
    if not head.isdigit() or int(head) < 2:
        raise InputError(f"--kv-cache {kind}: give the number of cache slots M >= 2, e.g. {kind}:128")
    m = int(head)
    opts: dict = {}
    allowed = {"sinks": int, "buffer": int} if kind == "sink" else (
        dict(LOCOCO_KEYS) if kind == "lococo" else {"buffer": int})
    for item in items:
        key, eq, val = item.partition("=")
        if not eq or key.strip() not in allowed:
            raise InputError(f"--kv-cache {kind}: unknown option '{item}' (options: {', '.join(sorted(allowed))})")
        opts[key.strip()] = _convert(kind, key.strip(), val.strip(), allowed[key.strip()])
    sinks = opts.pop("sinks", 4)
    buffer = opts.pop("buffer", BUFFER)
    if kind == "sink" and not 0 < sinks < m:
        raise InputError(f"--kv-cache sink:{m}: sinks must be in 1..{m - 1}, got {sinks}")
    if buffer < 1:
        raise InputError(f"--kv-cache {kind}: buffer must be >= 1, got {buffer}")
    if kind == "lococo":
        keep, local = lococo_defaults(m, opts.get("keep"))
        if not 0 < keep <= 1:
            raise InputError(f"--kv-cache lococo: keep must be in (0, 1], got {keep}")
        opts.setdefault("keep", keep)
        opts.setdefault("local", local)
        for k in ("steps", "kernel", "chunk", "seq_len"):
            if k in opts and opts[k] < 1:
                raise InputError(f"--kv-cache lococo: {k} must be >= 1, got {opts[k]}")
        if not 0 <= opts.get("local", 0) <= round(m * keep):
            raise InputError(f"--kv-cache lococo:{m}: local must be in 0..{round(m * keep)} (the kept slots), "
                             f"got {opts['local']}")
        check_train_device("--kv-cache lococo", opts.get("device", "auto"))
        if opts.get("tune", "norms") not in TUNE:
            raise InputError(f"--kv-cache lococo: tune must be one of {', '.join(TUNE)}, got '{opts['tune']}'")
        if opts.get("norm_lr", 1.0) <= 0 or opts.get("lr", 1.0) <= 0:
            raise InputError("--kv-cache lococo: lr and norm_lr must be > 0")
        if opts.get("kernel", 1) % 2 == 0:
            raise InputError(f"--kv-cache lococo: kernel must be odd (same padding), got {opts['kernel']}")
    return KVCacheSpec(kind, m, sinks, buffer, opts)
