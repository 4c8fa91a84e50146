"""Write a Dream-format model folder as a GGUF that llama.cpp runs as architecture ``dream``.

Uses the ``gguf`` package's writer directly (no transformers, no remote code): Qwen2 tensor
names map to llama.cpp's (literal table below), the tokenizer is written as ``gpt2`` BPE with the
``qwen2`` pre-tokenizer, ``dream.attention.causal = false`` and ``tokenizer.ggml.mask_token_id``
are set, and ``diffusion.shift_logits = true`` is written explicitly (llama.cpp's own Dream
converter omits it). Quantized types are produced by llama.cpp's ``llama_model_quantize`` from
an f16 GGUF.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from engine.errors import BackendError, ConfigError
from engine.loading import base_folder, load_model

QUANTS = ("f32", "f16", "q8_0", "q4_k_m")
GENERATION_KEY = "unmask.generation_config"
"""GGUF metadata key holding the folder's generation_config.json (JSON text), so that a model
decodes with its own defaults on the llama.cpp back end too."""
LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.v_proj.bias": "attn_v.bias",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
TOP_NAMES = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}


def gguf_name(hf_name: str) -> str:
    if hf_name in TOP_NAMES:
        return TOP_NAMES[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{LAYER_NAMES[rest]}"


def bpe_vocab(folder: Path, vocab_size: int) -> tuple[list[str], list[int], list[str]]:
    """(tokens by id, token types, merges) from tokenizer.json or vocab.json + merges.txt."""
    specials: dict[int, str] = {}
    if (folder / "tokenizer.json").exists():
        raw = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
        vocab = dict(raw["model"]["vocab"])
        merges = [m if isinstance(m, str) else " ".join(m) for m in raw["model"]["merges"]]
        for added in raw.get("added_tokens", []):
            vocab[added["content"]] = added["id"]
            if added.get("special"):
                specials[added["id"]] = added["content"]
    else:
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        merges = [l for l in (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
                  if l and not l.startswith("#version")]
        if (folder / "added_tokens.json").exists():
            for content, idx in json.loads((folder / "added_tokens.json").read_text()).items():
                vocab[content] = idx
                specials[idx] = content
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in by_id:
            tokens.append(by_id[i])
            types.append(3 if i in specials else 1)  # CONTROL / NORMAL
        else:
            tokens.append(f"[PAD{i}]")
            types.append(5)  # UNUSED: rows of a padded embedding
    return tokens, types, merges


def tokenizer_pre(folder: Path) -> str:
    """llama.cpp's pre-tokenizer name: the one a converted GGUF base recorded, else Qwen2's."""
    cfg = folder / "tokenizer_config.json"
    raw = json.loads(cfg.read_text()) if cfg.exists() else {}
    return raw.get("gguf_tokenizer_pre", "qwen2")


def write_gguf(folder: Path, out: Path, quant: str = "f16") -> Path:
    """Export ``folder`` to ``out`` in f32/f16, or quantize through llama.cpp (q8_0, q4_k_m)."""
    import gguf

    if quant not in QUANTS:
        raise ConfigError(f"unknown --quant {quant!r}; use one of {', '.join(QUANTS)}")
    if quant in ("q8_0", "q4_k_m"):
        tmp = out.with_name(out.name + ".f16.tmp")
        write_gguf(folder, tmp, "f16")
        try:
            quantize(tmp, out, quant)
        finally:
            tmp.unlink(missing_ok=True)
        return out
    loaded = load_model(folder, "cpu", "float32")
    cfg = loaded.config
    out.parent.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(str(out), "dream")
    w.add_name(folder.name)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_causal_attention(False)
    w.add_bool("diffusion.shift_logits", True)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if quant == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    tok_folder = base_folder(folder)  # an adapter's tokenizer is its base's
    tokens, types, merges = bpe_vocab(tok_folder, cfg.vocab_size)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(tokenizer_pre(tok_folder))
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_eos_token_id(cfg.eos_token_id)
    w.add_pad_token_id(cfg.pad_token_id)
    if cfg.bos_token_id is not None:
        w.add_bos_token_id(cfg.bos_token_id)
    w.add_add_bos_token(False)
    w.add_mask_token_id(cfg.mask_token_id)
    defaults = generation_defaults_json(folder)
    if defaults:
        w.add_string(GENERATION_KEY, defaults)
    state = loaded.model.state_dict()
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    for name, tensor in state.items():
        data = tensor.detach().to(torch.float32).numpy()
        if quant == "f16" and data.ndim == 2:
            data = data.astype(np.float16)
        w.add_tensor(gguf_name(name), data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def generation_defaults_json(folder: Path) -> str:
    path = folder / "generation_config.json"
    return path.read_text() if path.exists() else ""


def quantize(src: Path, dst: Path, quant: str) -> None:
    import ctypes

    from engine.llama_lib import llama, quiet_llama_log

    L = llama()
    ftype = {"q8_0": L.LLAMA_FTYPE_MOSTLY_Q8_0, "q4_k_m": L.LLAMA_FTYPE_MOSTLY_Q4_K_M}[quant]
    params = L.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 2
    quiet_llama_log()
    rc = L.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise BackendError(f"llama.cpp could not quantize {src} to {quant} (code {rc})")
