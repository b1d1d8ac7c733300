"""`--convert encdec[:decoder_layers=N,attention=merged,steps=S,...]`: the conversion's options, checked before the
model loads (no torch here)."""
from __future__ import annotations

from dataclasses import dataclass, fields

from ...compiler.errors import InputError
from ..spec_options import check_train_device, convert

ATTENTION = ("merged", "cross")
PICKS = ("ends", "spread", "last", "first", "greedy")
ENCODERS = ("auto", "blend", "bidirectional", "causal")
TRAIN = ("all", "decoder")
EXAMPLE = "encdec:decoder_layers=10,steps=2000"


@dataclass(frozen=True)
class EncDecConfig:
    decoder_layers: int = 0        # 0: balanced (every layer in the decoder too); N: a decoder of N layers
    attention: str = "merged"      # merged: the decoder attends over [encoder memory ; its own cache], same weights
    pick: str = "ends"             # which source layers make an N-layer decoder: ends (the first round(N/5) and
                                   # the last ones), spread (evenly, first and last included), last, first,
                                   # greedy (measured: greedy removal by the distillation loss, pick.py)
    search_windows: int = 8        # pick=greedy: calibration windows the search scores
    encoder: str = "auto"          # blend: each encoder head mixes causal and bidirectional attention with a learned
                                   # gate in [0, 1] started at `gate` (0: the source exactly), trained at gate_lr;
                                   # bidirectional; causal: the construction check (the converted model is then the
                                   # source exactly); auto: blend with train=all, bidirectional with train=decoder
    gate: float = 0.0
    gate_lr: float = 1e-2
    train: str = "all"             # what adapts: all (encoder and decoder) or decoder (the encoder stays the source's
                                   # layers; with encoder=causal its memory is then the source's own keys/values)
    steps: int = 100000            # adaptation steps; whichever of steps / seconds ends first; 0: no adaptation
    seconds: float = 2400.0        # adaptation time budget (SmolLM2-135M on 2 cores: 40 minutes)
    batch: int = 4                 # sequences per step
    seq_len: int = 384             # tokens per sequence: prefix (encoder) + target (decoder)
    splits: int = 1                # split points per window and step (the source's forward is shared by them)
    min_prefix: int = 32           # the prefix length is drawn uniformly from [min_prefix, seq_len - min_target]
    min_target: int = 64
    lr: float = 5e-5
    kd: float = 0.5                # loss = kd * KL(source || student) + (1 - kd) * cross-entropy on the text
    seed: int = 0
    precision: str = "auto"        # bf16 autocast where the CPU has bf16 instructions (AVX-512 BF16, AMX) or on a
                                   # GPU, else f32 (emulated bf16 is several times slower: docs/passes/encdec.md)
    device: str = "auto"           # where the adaptation trains: auto (a CUDA GPU when torch sees one), cpu, cuda
    eval_windows: int = 16         # held-out windows (evaluation split) scored before and after adaptation
    calib: str | None = None       # calibration text file (from --calib; default: the Brown calibration split)

    def __post_init__(self):
        bad = lambda msg: InputError(f"--convert encdec: {msg} (e.g. {EXAMPLE})")     # noqa: E731
        if self.attention not in ATTENTION:
            raise bad(f"attention must be one of {', '.join(ATTENTION)}, got '{self.attention}'")
        if self.attention == "cross":
            raise InputError("--convert encdec: attention=cross (T5Gemma's separate cross-attention) is not built "
                             "yet; use attention=merged (the default)")
        if self.pick not in PICKS:
            raise bad(f"pick must be one of {', '.join(PICKS)}, got '{self.pick}'")
        if self.encoder not in ENCODERS:
            raise bad(f"encoder must be one of {', '.join(ENCODERS)}, got '{self.encoder}'")
        if self.encoder == "auto":
            object.__setattr__(self, "encoder", "blend" if self.train == "all" else "bidirectional")
        if self.precision not in ("auto", "bf16", "f32"):
            raise bad(f"precision must be auto, bf16 or f32, got '{self.precision}'")
        check_train_device("--convert encdec", self.device)
        if self.train not in TRAIN:
            raise bad(f"train must be one of {', '.join(TRAIN)}, got '{self.train}'")
        if not 0 <= self.gate <= 1 or not self.gate_lr > 0:
            raise bad(f"gate must be between 0 and 1 and gate_lr > 0, got {self.gate} and {self.gate_lr}")
        if self.encoder == "blend" and self.train != "all":
            raise bad("encoder=blend learns its gates: it needs train=all")
        for key in ("decoder_layers", "steps", "eval_windows"):
            if getattr(self, key) < 0:
                raise bad(f"{key} must be >= 0, got {getattr(self, key)}")
        for key in ("batch", "seq_len", "min_prefix", "min_target", "splits", "search_windows"):
            if getattr(self, key) < 1:
                raise bad(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.min_prefix + self.min_target > self.seq_len or self.min_prefix < 2:
            raise bad(f"need 2 <= min_prefix and min_prefix + min_target <= seq_len (got {self.min_prefix} + "
                      f"{self.min_target} > {self.seq_len})" if self.min_prefix >= 2 else "min_prefix must be >= 2")
        if not self.seconds > 0 or not self.lr > 0 or not 0 <= self.kd <= 1:
            raise bad("seconds and lr must be > 0 and kd between 0 and 1")

    def training_options(self) -> dict:
        """What changes the adapted weights (the resume file's key)."""
        keys = ("decoder_layers", "attention", "pick", "encoder", "train", "steps", "batch", "splits", "seq_len",
                "min_prefix", "min_target", "lr", "kd", "seed") + (("gate", "gate_lr") if self.encoder == "blend" else ()) \
            + (("search_windows",) if self.pick == "greedy" else ())
        opts = {k: getattr(self, k) for k in keys}
        if self.calib:                   # another calibration text trains other weights (the default adds no key)
            opts["calib"] = _digest(self.calib)
        return opts


def _digest(path: str) -> str:
    """The calibration file's content hash (its path when it cannot be read: the pass reports that later)."""
    import hashlib
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()[:24]
    except OSError:
        return path


def parse_convert(spec: str) -> EncDecConfig:
    """'encdec:decoder_layers=10,steps=2000' -> EncDecConfig; one clear line for anything else."""
    name, _, arg = (spec or "").strip().partition(":")
    if name != "encdec":
        raise InputError(f"unknown conversion '{name}' in --convert {spec} (known: encdec; e.g. {EXAMPLE})")
    types = {f.name: f.type for f in fields(EncDecConfig) if f.name != "calib"}
    kw = {}
    for item in filter(None, (s.strip() for s in arg.split(","))):
        key, eq, val = item.partition("=")
        key = key.strip()
        if not eq or key not in types:
            raise InputError(f"--convert encdec: bad option '{item}' (options: {', '.join(types)}; e.g. {EXAMPLE})")
        typ = {"int": int, "float": float}.get(str(types[key]), str)
        kw[key] = convert("--convert", "encdec", key, val.strip(), typ)
    return EncDecConfig(**kw)
