"""Write a trained model as a Hugging Face Dream-format folder (what ``engine.loading`` reads).

config.json (model_type "Dream"), bf16 ``model.safetensors``, the tokenizer files and a
``generation_config.json`` with the sampler defaults we measured to work for this model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from engine.model import DreamModel

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                   "added_tokens.json", "special_tokens_map.json", "chat_template.jinja")


def save_model_folder(model: DreamModel, tokenizer_dir: Path, out: Path,
                      dtype: torch.dtype = torch.bfloat16, generation: dict | None = None,
                      shards: int = 1) -> Path:
    """Save ``model`` as a Dream folder; ``shards`` > 1 writes an index + several files."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    state = {k: v.detach().to(dtype).contiguous().clone() for k, v in model.state_dict().items()}
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    config = cfg.to_dict()
    config["torch_dtype"] = str(dtype).replace("torch.", "")
    (out / "config.json").write_text(json.dumps(config, indent=2))
    keys = sorted(state)
    if shards <= 1:
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    else:
        per = -(-len(keys) // shards)
        weight_map = {}
        for i in range(shards):
            name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: state[k] for k in keys[i * per:(i + 1) * per]}
            save_file(part, str(out / name), metadata={"format": "pt"})
            weight_map.update({k: name for k in part})
        (out / "model.safetensors.index.json").write_text(json.dumps(
            {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
             "weight_map": weight_map}, indent=2))
    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).exists():
            shutil.copy(tokenizer_dir / name, out / name)
    gen = {"mask_token_id": cfg.mask_token_id, "pad_token_id": cfg.pad_token_id,
           "eos_token_id": cfg.eos_token_id, "alg": "entropy", "temperature": 0.0,
           "steps": 32, "max_new_tokens": 64, **(generation or {})}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2))
    return out
