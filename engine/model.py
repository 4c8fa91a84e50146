"""The Dream / DiffuCoder transformer in one file.

Dream (Ye et al. 2025) and DiffuCoder (Gong et al. 2025) are Qwen2 decoders whose attention is
bidirectional: RMSNorm, RoPE, q/k/v with bias, o without, SwiGLU MLP, grouped-query attention.
The model does not shift: the hidden state at position i-1 predicts token i, and the sampler
shifts the logits (see ``engine.sampler``). ``causal=True`` runs the same weights as a causal LM,
which is how the embedded model is pretrained before its diffusion adaptation.
Tensor names match Hugging Face's ``Qwen2ForCausalLM`` / ``DreamModel`` exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class DreamConfig:
    """Architecture and special-token ids of a Dream-format checkpoint (HF ``config.json``)."""

    vocab_size: int = 8192
    """Rows of the embedding and LM head."""
    hidden_size: int = 256
    """Model width."""
    intermediate_size: int = 704
    """SwiGLU inner width."""
    num_hidden_layers: int = 8
    """Transformer blocks."""
    num_attention_heads: int = 4
    """Query heads."""
    num_key_value_heads: int = 2
    """Key/value heads (grouped-query attention)."""
    max_position_embeddings: int = 2048
    """Longest sequence the model was trained for."""
    rope_theta: float = 10000.0
    """RoPE base frequency."""
    rms_norm_eps: float = 1e-6
    """RMSNorm epsilon."""
    tie_word_embeddings: bool = False
    """Whether the LM head shares the embedding matrix (Dream's and Qwen2's default: no)."""
    mask_token_id: int = 1
    """Id of ``<|mask|>``."""
    pad_token_id: int = 2
    """Id of the padding token the model writes into unused canvas slots."""
    eos_token_id: int = 0
    """Id of ``<|endoftext|>``."""
    bos_token_id: int | None = None
    """Id of the beginning-of-text token, if the model uses one."""
    torch_dtype: str = "bfloat16"
    """Dtype the weights are stored in."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be a multiple of num_attention_heads")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, raw: dict) -> "DreamConfig":
        """Read an HF config dict, ignoring keys this model does not use."""
        act = raw.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act {act!r} is not implemented (only silu, as in Dream)")
        if raw.get("rope_scaling"):
            raise ValueError(f"rope_scaling {raw['rope_scaling']!r} is not implemented (only "
                             "plain RoPE, as in Dream-7B and DiffuCoder-7B)")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known and v is not None}
        if "torch_dtype" not in values and isinstance(raw.get("dtype"), str):
            values["torch_dtype"] = raw["dtype"]
        for key in ("eos_token_id", "pad_token_id", "bos_token_id"):
            if isinstance(values.get(key), list):
                values[key] = values[key][0]
        return cls(**values)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(model_type="Dream", architectures=["DreamModel"], hidden_act="silu",
                   use_cache=False, rope_scaling=None, attention_dropout=0.0)
        return out


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Qwen2 normalises in fp32, casts back, then scales.
        return self.weight * F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float,
                 dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for ``positions`` (B, L), in Qwen2's half-rotation layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=positions.device,
                                             dtype=torch.float32) / head_dim))
    freqs = positions.float()[..., None] * inv_freq  # (B, L, D/2)
    emb = torch.cat([freqs, freqs], dim=-1)  # (B, L, D)
    return emb.cos().to(dtype)[:, None], emb.sin().to(dtype)[:, None]  # (B, 1, L, D)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: DreamConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = (cfg.num_attention_heads,
                                                  cfg.num_key_value_heads, cfg.head_dim)
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=True)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=True)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=True)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                attn_mask: torch.Tensor | None, causal: bool,
                kv: "LayerKV | None" = None) -> torch.Tensor:
        B, L, _ = x.shape
        q = self.q_proj(x).view(B, L, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, L, D)
        k = self.k_proj(x).view(B, L, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, L, D)
        v = self.v_proj(x).view(B, L, self.n_kv, self.head_dim).transpose(1, 2)  # (B, Hkv, L, D)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if kv is not None:
            k, v = kv.exchange(k, v)  # (B, Hkv, L_all, D): cached keys outside the window
        groups = self.n_heads // self.n_kv
        if causal and attn_mask is None:
            k = k.repeat_interleave(groups, dim=1)  # (B, H, L, D)
            v = v.repeat_interleave(groups, dim=1)  # (B, H, L, D)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            # bidirectional: the query heads sharing a KV head are stacked along the query
            # axis, so keys and values are read once instead of copied per group
            # (query head h uses KV head h // groups, as with repeat_interleave)
            q = q.reshape(B, self.n_kv, groups * L, self.head_dim)  # (B, Hkv, G*L, D)
            if attn_mask is not None:
                attn_mask = attn_mask.repeat(1, 1, groups, 1)  # (B, 1, G*L, L_all)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            y = y.reshape(B, self.n_heads, L, self.head_dim)
        return self.o_proj(y.transpose(1, 2).reshape(B, L, -1))  # (B, L, C)


class MLP(nn.Module):
    def __init__(self, cfg: DreamConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: DreamConfig) -> None:
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, attn_mask, causal, kv=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, attn_mask, causal, kv)
        return x + self.mlp(self.post_attention_layernorm(x))


class LayerKV:
    """One layer's keys and values for the whole sequence, for Fast-dLLM's dual cache
    (Wu et al. 2025): a full pass stores them (``window`` None); a windowed pass computes only
    the window's positions and attends to the stored keys elsewhere, which are therefore as
    old as the last full pass (the approximation the cache trades for speed)."""

    def __init__(self, window: tuple[int, int] | None) -> None:
        self.window = window
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self._owned = False
        """Whether k/v are this cache's own copy, written in place by windowed passes. A full
        pass's tensors are not: engine.reuse keeps them for the next request."""

    def exchange(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.window is None:
            self.k, self.v, self._owned = k, v, False
            return k, v
        a, b = self.window
        # kept whole: the next windowed pass reads the same positions outside its window
        if self._owned and self.k.shape[2] >= b:
            self.k[:, :, a:b] = k
            self.v[:, :, a:b] = v
        else:  # the first windowed pass copies once (or grows a reused start)
            self.k = torch.cat([self.k[:, :, :a], k, self.k[:, :, b:]], dim=2)
            self.v = torch.cat([self.v[:, :, :a], v, self.v[:, :, b:]], dim=2)
            self._owned = True
        return self.k, self.v


class Backbone(nn.Module):
    def __init__(self, cfg: DreamConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class DreamModel(nn.Module):
    """Dream/DiffuCoder: ``forward(ids) -> logits`` where logits[:, i] predicts token i+1."""

    def __init__(self, cfg: DreamConfig) -> None:
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      position_ids: torch.Tensor | None = None, causal: bool = False,
                      cache: list[LayerKV] | None = None) -> torch.Tensor:
        """Final normed hidden states (B, L, C). ``attention_mask`` is bool (B, 1, L, L).

        ``cache``: one ``LayerKV`` per layer. With their window unset the pass fills them; with
        a window (a, b) ``input_ids`` are only positions a..b-1 and the rest comes from the
        cache (positions default to a..b-1, and ``attention_mask``, if given, is
        (B, 1, b-a, L_all): the window's queries over every key)."""
        B, L = input_ids.shape
        window = cache[0].window if cache else None
        if position_ids is None:
            start = window[0] if window else 0
            position_ids = torch.arange(start, start + L, device=input_ids.device).expand(B, L)
        x = self.model.embed_tokens(input_ids)  # (B, L, C)
        cos, sin = rope_cos_sin(position_ids, self.config.head_dim, self.config.rope_theta,
                                x.dtype)
        for i, layer in enumerate(self.model.layers):
            x = layer(x, cos, sin, attention_mask, causal, cache[i] if cache else None)
        return self.model.norm(x)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, causal: bool = False,
                select: tuple[torch.Tensor, torch.Tensor] | None = None,
                cache: list[LayerKV] | None = None) -> torch.Tensor:
        """Logits (B, L, V); with ``select=(rows, cols)`` only those positions, (M, V)."""
        hidden = self.hidden_states(input_ids, attention_mask, position_ids, causal, cache)
        if select is not None:
            hidden = hidden[select]  # (M, C)
        return self.lm_head(hidden)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())
