"""A second reading of a transformers folder's weights, compared with what transformers loaded.

Each tensor of each `*.safetensors` file is read with the safetensors library itself and compared with the
loaded model's parameter of the same name (bf16/fp16 checkpoints are compared after the same cast to fp32
that loading does). A differing value is one InputError naming the tensor; names transformers renames on
load (none for the supported families' current checkpoints) are counted as not compared, and every
parameter of the model must be covered by some file (a tied head by its embedding).
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..compiler.errors import InputError

log = logging.getLogger(__name__)


def check_folder_load(path: Path, model) -> dict:
    import torch
    from safetensors import safe_open
    params = model.state_dict()
    tied = getattr(model.config, "tie_word_embeddings", False)
    covered, compared, renamed = set(), 0, []
    for f in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as st:
            for name in st.keys():
                have = params.get(name)
                if have is None:
                    renamed.append(name)
                    continue
                want = st.get_tensor(name).to(have.dtype)
                if want.shape != have.shape or not torch.equal(want, have):
                    diff = (want.float() - have.float()).abs().max().item() if want.shape == have.shape else None
                    raise InputError(f"transformers loaded {name} from {f.name} differently from the file "
                                     f"(shape {list(have.shape)} vs {list(want.shape)}, max |diff| {diff}); not compiled")
                covered.add(name)
                compared += 1
    missing = [k for k in params if k not in covered and not (tied and k == "lm_head.weight")]
    if missing and not renamed:
        raise InputError(f"{path} holds no weights for {missing[0]} ({len(missing)} parameters missing)")
    if renamed:
        log.info("safetensors check: %d file tensors have names the model does not (renamed on load)", len(renamed))
    return {"tensors_checked": compared, "not_compared": len(renamed)}
