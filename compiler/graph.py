"""The exported-graph contract: the one place that spells graph input and output names, the graph roles
and the cache kinds (docs/architecture.md, "The exported graph contract"). Torch-free: the runtime, the
manifest checks, the export passes and the CLI all read it.

A graph record (manifest["graphs"][name]) carries `role` (what the graph computes, ROLES) and `cache`
(how its KV cache is laid out, CACHE_KINDS), besides its input/output shapes, layer range and files.
Manifests written before roles were recorded name the graph by its role ("decoder", "prefill", "decode").

Where new things go: a new graph role (an encoder) is a row of ROLES and, when the runtime runs it as a
state of its own, a row of DECODER_STATES or of the speculative path's role set; a new cache kind
(a fixed-size compressed cache) is a name in CACHE_KINDS, with its extra inputs/outputs spelled here.
"""
from __future__ import annotations

from dataclasses import dataclass

from .errors import ArtifactError

# first input, position and mask inputs, outputs (B batch, T new tokens, P cached, H kv heads, D head dim)
INPUT_IDS = "input_ids"          # int64 [B, T]
HIDDEN_IN = "hidden_in"          # float32 [B, T, C]: a graph that starts mid-model
POSITION_IDS = "position_ids"    # int64 [B, T]
ATTENTION_MASK = "attention_mask"  # int64 [B, P+T]
LOGITS = "logits"                # float32 [B, T, V]
HIDDEN_OUT = "hidden_out"        # float32 [B, T, C]: a graph that ends mid-model
BEAM_IDX = "beam_idx"            # int32 [B]: added by OpenVINO's stateful rewrite (runtime/backends/ov_stateful.py)
# input / output kinds -> the graph's leading input / output names (before position_ids / the new KV)
FIRST_INPUTS = {"ids": (INPUT_IDS,), "hidden": (HIDDEN_IN,),
                "ids+hidden": (INPUT_IDS, HIDDEN_IN)}   # EAGLE drafter: token t+1 and the target's state at t
OUTPUTS = {"logits": (LOGITS,), "hidden": (HIDDEN_OUT,),
           "both": (LOGITS, HIDDEN_OUT)}                # logits and the state before the final norm
PAST_KEY, PAST_VALUE, NEW_KEY, NEW_VALUE = "past_key.", "past_value.", "new_key.", "new_value."
# fixed-size caches (H2O, LoCoCo): per layer, the attention each cache slot received in this call, summed over the
# call's queries and the query heads of its KV group: float32 [B, H, P+T]
ATTN_SCORES = "attn_scores."
# the compression graph of a fixed cache (role "compress"): slot_mask int64 [1, S] (1: a filled slot; filled slots
# come first), then per layer past_key / past_value [1, S, H, D] and attn_scores [1, H, S]; out per layer
# new_key / new_value [1, M, H, D], the cut cache
SLOT_MASK = "slot_mask"
# an encoder-decoder artifact (passes/encdec/): the encoder graph (role "encoder") takes input_ids, position_ids and
# attention_mask [B, T] (no cache) and outputs new_key.{j} / new_value.{j} [B, T, H, D] for every decoder layer j:
# the memory the decoder's queries attend to (merged attention), written into the decoder's cache before it runs.
# Decoder graph records of such an artifact carry "memory": "encoder".
MEMORY_ENCODER = "encoder"


def attn_scores(i: int) -> str:
    return f"{ATTN_SCORES}{i}"


def past_key(i: int) -> str:
    return f"{PAST_KEY}{i}"


def past_value(i: int) -> str:
    return f"{PAST_VALUE}{i}"


def new_key(i: int) -> str:
    return f"{NEW_KEY}{i}"


def new_value(i: int) -> str:
    return f"{NEW_VALUE}{i}"


def is_past(name: str) -> bool:
    return isinstance(name, str) and name.startswith((PAST_KEY, PAST_VALUE))


def is_new(name: str) -> bool:
    return isinstance(name, str) and name.startswith((NEW_KEY, NEW_VALUE))


def past_layers(names) -> list[int]:
    """The absolute layer indices of a graph's past_key.{i} inputs, sorted."""
    return sorted(int(n[len(PAST_KEY):]) for n in names if isinstance(n, str) and n.startswith(PAST_KEY)
                  and n[len(PAST_KEY):].isdigit())


def input_names(layers: int, first: int = 0, input: str = "ids") -> list[str]:
    """Inputs in order: the first input, position_ids, attention_mask, then past_key/past_value per layer."""
    names = [*FIRST_INPUTS[input], POSITION_IDS, ATTENTION_MASK]
    for i in range(first, first + layers):
        names += [past_key(i), past_value(i)]
    return names


def output_names(layers: int, first: int = 0, output: str = "logits", scores: bool = False) -> list[str]:
    """Outputs in order: logits (or hidden_out, or both), then new_key/new_value per layer, then (with `scores`)
    attn_scores per layer."""
    names = list(OUTPUTS[output])
    for i in range(first, first + layers):
        names += [new_key(i), new_value(i)]
    if scores:
        names += [attn_scores(i) for i in range(first, first + layers)]
    return names


def output_kind(record: dict) -> str:
    """The OUTPUTS kind of a graph record ("logits", "hidden" or "both") from its recorded output names."""
    outs = record.get("outputs") or {}
    if HIDDEN_OUT in outs:
        return "both" if LOGITS in outs else "hidden"
    return "logits"


def encoder_input_names() -> list[str]:
    return [INPUT_IDS, POSITION_IDS, ATTENTION_MASK]


def encoder_output_names(layers: int) -> list[str]:
    return [n for j in range(layers) for n in (new_key(j), new_value(j))]


def compress_input_names(layers: int) -> list[str]:
    names = [SLOT_MASK]
    for i in range(layers):
        names += [past_key(i), past_value(i), attn_scores(i)]
    return names


def compress_output_names(layers: int) -> list[str]:
    return [n for i in range(layers) for n in (new_key(i), new_value(i))]


def count_layers(names, where: str) -> int:
    """Number of layers of a whole-model graph from its input names; checks the contract's names are all there."""
    n = len(past_layers(names))
    missing = sorted(set(input_names(n)) - set(names))
    if n == 0 or missing:
        raise ArtifactError(f"{where} does not follow the decoder graph contract (missing inputs: "
                            f"{', '.join(missing[:4]) or PAST_KEY + '*'})")
    return n


def record_dim(rec: dict, name: str, axis: int) -> int | None:
    """An input's static dimension from a graph record (None when symbolic or absent)."""
    shape = (rec.get("inputs") or {}).get(name)
    if isinstance(shape, dict):
        shape = shape.get("shape")
    if isinstance(shape, (list, tuple)) and len(shape) > axis and isinstance(shape[axis], int):
        return shape[axis]
    return None


def cache_dims(rec: dict) -> tuple | None:
    """The record's first cache input shape [B, P, H, D], or None."""
    layers = past_layers((rec.get("inputs") or {}).keys())
    shape = (rec.get("inputs") or {}).get(past_key(layers[0])) if layers else None
    if isinstance(shape, dict):
        shape = shape.get("shape")
    return tuple(shape) if isinstance(shape, (list, tuple)) and len(shape) == 4 else None


@dataclass(frozen=True)
class Role:
    input: str        # "ids" | "hidden"
    output: str       # "logits" | "hidden"
    whole: bool       # all the model's layers (a decoder the runtime can run token by token)
    meaning: str


ROLES = {
    "decoder": Role("ids", "logits", True, "the whole model, dynamic shapes (or static, one graph)"),
    "prefill": Role("ids", "logits", True, "the whole model, static: a fixed chunk of new tokens"),
    "decode": Role("ids", "logits", True, "the whole model, static: one new token"),
    "trunk": Role("ids", "hidden", False, "fused drafter: layers [0, exit) shared by drafter and verifier"),
    "draft_head": Role("hidden", "logits", False, "fused drafter: exit layer, norm and (reduced) head"),
    "verify_tail": Role("hidden", "logits", False, "fused drafter: layers [exit, N), norm and head"),
    "eagle_target": Role("ids", "both", True, "EAGLE drafter: the whole model, logits and its last hidden state"),
    "eagle_draft": Role("ids+hidden", "both", False, "EAGLE drafter: fc(token, state) -> one layer, norm, head"),
    "eagle_target_step": Role("ids", "both", True, "EAGLE drafter, static artifacts: eagle_target at one token per "
                                                   "call (rounds without drafts cost a plain step)"),
    "compress": Role("cache", "cache", False, "fixed KV cache: S filled slots -> M (LoCoCo's compressors)"),
    "encoder": Role("ids", "cache", False, "encoder-decoder: the prompt, bidirectionally -> the decoder's memory "
                                           "(its cache before the first decoder call)"),
}
# ways a runtime decodes with an artifact's whole-model graphs: the roles it needs -> static shapes or not
# (None: the graph record's own `static` flag). Checked in order; the first whose roles are all present wins.
DECODER_STATES = ((("prefill", "decode"), True), (("decoder",), None))
DRAFTER_ROLES = ("trunk", "draft_head", "verify_tail")
EAGLE_ROLES = ("eagle_target", "eagle_draft")
EAGLE_STEP = "eagle_target_step"     # static artifacts only: the EAGLE target at one token per call (optional role)
# full: every past position's keys/values, [B, P, H, D] per layer; fixed: at most M + buffer slots (the record's
# "kv_cache" spec, compiler/kv_spec.py), the graph also outputs attn_scores per layer and the runtime cuts the cache
CACHE_KINDS = ("full", "fixed")


def memory_of(rec: dict) -> str | None:
    """"encoder" when a decoder graph's cache starts with an encoder's memory, else None."""
    mem = rec.get("memory")
    if mem not in (None, MEMORY_ENCODER):
        raise ArtifactError(f"a decoder graph with memory {mem!r}, which this runtime does not know; update accelc")
    return mem


def role_of(name: str, rec: dict) -> str:
    """A graph record's role (its name, for manifests written before roles were recorded)."""
    role = rec.get("role") or name
    return role


def cache_kind(name: str, rec: dict) -> str:
    kind = rec.get("cache", "full")
    if kind not in CACHE_KINDS:
        raise ArtifactError(f"graph {name!r} has a {kind!r} KV cache, which this runtime does not know "
                            f"(known: {', '.join(CACHE_KINDS)}); update accelc")
    return kind


def by_role(graphs: dict[str, dict]) -> dict[str, dict]:
    """role -> graph record."""
    return {role_of(n, r): r for n, r in graphs.items() if isinstance(r, dict)}


def decoder_roles(graphs: dict[str, dict]) -> tuple[bool, dict[str, dict]]:
    """-> (static, {role: graph record}) of the whole-model graphs a runtime decodes with (DECODER_STATES)."""
    roles = by_role(graphs)
    for needed, static in DECODER_STATES:
        if all(r in roles for r in needed):
            picked = {r: roles[r] for r in needed}
            for r, rec in picked.items():
                cache_kind(r, rec)
            return (bool(roles[needed[0]].get("static")) if static is None else static), picked
    names = ", ".join(graphs) or "none"
    wanted = " or ".join("+".join(n) for n, _ in DECODER_STATES)
    raise ArtifactError(f"the artifact has no decoder graph (graphs: {names}; expected roles {wanted})")
