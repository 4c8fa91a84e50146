"""A tiny random llama GGUF written as llama.cpp's ``convert_hf_to_gguf.py`` writes one: F32
tensors, q/k rows permuted for llama.cpp's interleaved RoPE, and a GPT-2-style byte-level BPE
whose merges join a newline with the next line's indentation (as SmolLM2's vocabulary does)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SHAPE = dict(layers=2, hidden=64, ffn=96, heads=4, kv_heads=2, ctx=256, theta=100000.0)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def byte_symbols() -> list[str]:
    """GPT-2's bytes_to_unicode table, in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


MERGES = [("Ġ", "Ġ"), ("ĠĠ", "ĠĠ"), ("Ċ", "ĠĠ"), ("ĊĠĠ", "Ġ"), ("Ċ", "ĠĠĠĠ"),
          ("r", "e"), ("re", "t"), ("ret", "u"), ("retu", "r"), ("retur", "n"), ("Ġ", "x")]


def hf_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """``convert_hf_to_gguf``'s LlamaModel.permute (half-rotation -> interleaved rows)."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def write_tiny_llama_gguf(path: Path, seed: int = 0, pre: str = "smollm") -> Path:
    import gguf

    rng = np.random.default_rng(seed)
    tokens = SPECIALS + byte_symbols() + ["".join(m) for m in MERGES]
    types = [3] * len(SPECIALS) + [1] * (len(tokens) - len(SPECIALS))
    s = SHAPE
    head_dim = s["hidden"] // s["heads"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(s["layers"])
    w.add_context_length(s["ctx"])
    w.add_embedding_length(s["hidden"])
    w.add_feed_forward_length(s["ffn"])
    w.add_head_count(s["heads"])
    w.add_head_count_kv(s["kv_heads"])
    w.add_rope_freq_base(s["theta"])
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges([" ".join(m) for m in MERGES])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    def rand(*shape, scale=0.08):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    w.add_tensor("token_embd.weight", rand(len(tokens), s["hidden"], scale=0.5))
    w.add_tensor("output_norm.weight", 1 + rand(s["hidden"], scale=0.1))
    for i in range(s["layers"]):
        kv = s["kv_heads"] * head_dim
        w.add_tensor(f"blk.{i}.attn_norm.weight", 1 + rand(s["hidden"], scale=0.1))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", 1 + rand(s["hidden"], scale=0.1))
        w.add_tensor(f"blk.{i}.attn_q.weight", hf_permute(rand(s["hidden"], s["hidden"]),
                                                          s["heads"]))
        w.add_tensor(f"blk.{i}.attn_k.weight", hf_permute(rand(kv, s["hidden"]), s["kv_heads"]))
        w.add_tensor(f"blk.{i}.attn_v.weight", rand(kv, s["hidden"]))
        w.add_tensor(f"blk.{i}.attn_output.weight", rand(s["hidden"], s["hidden"]))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", rand(s["ffn"], s["hidden"]))
        w.add_tensor(f"blk.{i}.ffn_up.weight", rand(s["ffn"], s["hidden"]))
        w.add_tensor(f"blk.{i}.ffn_down.weight", rand(s["hidden"], s["ffn"]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
