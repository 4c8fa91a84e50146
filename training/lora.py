"""LoRA for fine-tuning (Hu et al. 2021): frozen base weights plus a trained low-rank update,
saved in the peft adapter format that ``engine.lora`` merges at load time."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRALinear(nn.Module):
    """``base(x) + scale * B(A(x))`` with ``B`` zero-initialised (training starts at the base)."""

    def __init__(self, base: nn.Linear, r: int, alpha: float) -> None:
        super().__init__()
        self.base, self.scale = base, alpha / r
        self.lora_A = nn.Linear(base.in_features, r, bias=False)
        self.lora_B = nn.Linear(r, base.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * self.lora_B(self.lora_A(x))


def add_lora(model: nn.Module, r: int, alpha: float) -> list[str]:
    """Freeze ``model`` and wrap its attention and MLP projections; returns the wrapped names."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if child_name in TARGETS and isinstance(child, nn.Linear):
                setattr(module, child_name, LoRALinear(child, r, alpha))
                wrapped.append(f"{name}.{child_name}" if name else child_name)
    return wrapped


def save_adapter(model: nn.Module, out: Path, base: str, r: int, alpha: float,
                 extra_tensors: dict | None = None, extra_config: dict | None = None,
                 dtype: torch.dtype = torch.float32) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (peft's names);
    ``extra_tensors`` / ``extra_config``: peft's ``modules_to_save`` and trainable token rows."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            for part in ("lora_A", "lora_B"):
                tensors[f"base_model.model.{name}.{part}.weight"] = \
                    getattr(module, part).weight.detach().to(dtype).contiguous()
    tensors.update(extra_tensors or {})
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "base_model_name_or_path": base, "r": r, "lora_alpha": alpha,
        "target_modules": list(TARGETS), "lora_dropout": 0.0, "bias": "none",
        "task_type": "CAUSAL_LM", **(extra_config or {})}, indent=2))
    return out
