"""LoRA adapters in the peft format: ``--model ADAPTER_DIR`` loads the base plus the adapter.

An adapter folder holds ``adapter_config.json`` (``base_model_name_or_path``, ``r``,
``lora_alpha``, ``target_modules``, optional ``use_rslora``) and ``adapter_model.safetensors``
with peft's tensor names (``base_model.model.<module>.lora_A.weight`` (r, in) and ``lora_B``
(out, r)). Loading merges ``W += scale * B @ A`` once (Hu et al. 2021; scale = alpha / r, or
alpha / sqrt(r) with rsLoRA), so inference runs at the base model's speed.
Two more of peft's parts load, as an adapted diffusion model needs them: ``modules_to_save``
(whole tensors such as the RMSNorm weights, ``base_model.model.<module>.weight``) and
``trainable_token_indices`` (trained rows of the embedding, e.g. a new ``<|mask|>``, as
``base_model.model.<embedding>.token_adapter.trainable_tokens_delta`` (n, C)).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from engine.errors import ModelLoadError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def is_adapter(folder: Path) -> bool:
    return folder.is_dir() and (folder / ADAPTER_CONFIG).exists() and \
        not (folder / "config.json").exists()


def adapter_config(folder: Path) -> dict:
    try:
        cfg = json.loads((folder / ADAPTER_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ModelLoadError(f"{folder / ADAPTER_CONFIG} is unreadable ({err}); re-create the "
                             "adapter") from err
    if cfg.get("peft_type", "LORA") != "LORA" or not cfg.get("base_model_name_or_path"):
        raise ModelLoadError(f"{folder} is not a LoRA adapter with a base_model_name_or_path; "
                             "pass a model folder or a peft LoRA adapter")
    return cfg


def lora_scale(cfg: dict) -> float:
    r = int(cfg["r"])
    alpha = float(cfg.get("lora_alpha", r))
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def merge_adapter(model: torch.nn.Module, folder: Path) -> int:
    """Merge the adapter in ``folder`` into ``model``'s weights; returns the merged layers."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    cfg = adapter_config(folder)
    if not (folder / ADAPTER_WEIGHTS).exists():
        raise ModelLoadError(f"{folder} has no {ADAPTER_WEIGHTS} (pickle adapters are refused); "
                             "save the adapter with safetensors")
    try:
        tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    except (SafetensorError, OSError) as err:
        raise ModelLoadError(f"{folder / ADAPTER_WEIGHTS} is corrupt ({err})") from err
    modules = dict(model.named_modules())
    scale, merged = lora_scale(cfg), 0
    for key, a in tensors.items():
        if key.endswith(TOKEN_ROWS) or (key.endswith(".weight") and ".lora_" not in key):
            merged += replace_part(model, modules, key, a, cfg, folder)
            continue
        if not key.endswith(".lora_A.weight"):
            continue
        name = key[len(PEFT_PREFIX):-len(".lora_A.weight")] if key.startswith(PEFT_PREFIX) \
            else key[:-len(".lora_A.weight")]
        b = tensors.get(key.replace(".lora_A.", ".lora_B."))
        layer = modules.get(name)
        if b is None or layer is None or not hasattr(layer, "weight"):
            raise ModelLoadError(f"{folder}: adapter tensor {key} matches no layer of the base "
                                 "model; the adapter was made for another model")
        with torch.no_grad():
            delta = scale * (b.float() @ a.float())  # (out, in)
            if delta.shape != layer.weight.shape:
                raise ModelLoadError(f"{folder}: {name} is {tuple(layer.weight.shape)} but the "
                                     f"adapter's update is {tuple(delta.shape)}")
            layer.weight += delta.to(layer.weight.dtype)
        merged += 1
    if merged == 0:
        raise ModelLoadError(f"{folder} holds no LoRA tensors (lora_A/lora_B)")
    return merged


TOKEN_ROWS = ".token_adapter.trainable_tokens_delta"


def replace_part(model, modules: dict, key: str, value: torch.Tensor, cfg: dict,
                 folder: Path) -> int:
    """Copy a whole saved module weight, or the trained rows of an embedding, into ``model``."""
    name = key[len(PEFT_PREFIX):] if key.startswith(PEFT_PREFIX) else key
    if name.endswith(TOKEN_ROWS):
        module_name = name[:-len(TOKEN_ROWS)]
        rows = (cfg.get("trainable_token_indices") or {}).get(module_name.rsplit(".", 1)[-1])
        layer = modules.get(module_name)
        if layer is None or rows is None or len(rows) != value.shape[0]:
            raise ModelLoadError(f"{folder}: trained token rows {key} match no embedding and "
                                 "trainable_token_indices of the base model")
        with torch.no_grad():
            layer.weight[torch.tensor(rows)] = value.to(layer.weight.dtype)
        return 1
    module_name = name[:-len(".weight")]
    layer = modules.get(module_name)
    if layer is None or getattr(layer, "weight", None) is None \
            or layer.weight.shape != value.shape:
        raise ModelLoadError(f"{folder}: saved tensor {key} matches no layer of the base model "
                             "of that shape; the adapter was made for another model")
    with torch.no_grad():
        layer.weight.copy_(value.to(layer.weight.dtype))
    return 1
