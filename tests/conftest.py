"""Shared fixtures: tiny random Dream checkpoints built in the test, in both tokenizer styles."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)
os.environ.setdefault("UNMASK_CONFIG_DIR", "/nonexistent-unmask-config")

TEXT = '''def add(a, b):
    """Return the sum of a and b."""
    return a + b


def is_even(n):
    return n % 2 == 0


class Stack:
    def __init__(self):
        self.items = []

    def push(self, item):
        self.items.append(item)
''' * 4


def train_tiny_tokenizer(vocab_size: int = 320):
    from training.tokenizer import new_bpe

    tok, trainer = new_bpe(vocab_size)
    tok.train_from_iterator([TEXT], trainer=trainer)
    return tok


def make_tiny_folder(out: Path, style: str = "tokenizer.json", seed: int = 0, shards: int = 1,
                     tie: bool = False, dtype: torch.dtype = torch.float32, **overrides) -> Path:
    """A random Dream checkpoint: GQA 4/2, q/k/v bias, untied head unless ``tie``."""
    from engine.model import DreamConfig, DreamModel
    from training.export import save_model_folder
    from training.tokenizer import save_tokenizer_folder

    tok = train_tiny_tokenizer()
    tok_dir = out / "_tok"
    save_tokenizer_folder(tok, tok_dir, 256)
    if style == "vocab+merges":
        import json

        tok.model.save(str(tok_dir))  # vocab.json + merges.txt
        (tok_dir / "tokenizer.json").unlink()
        specials = {t: tok.token_to_id(t) for t in ("<|endoftext|>", "<|mask|>", "<|dlm_pad|>",
                                                     "<|im_start|>", "<|im_end|>")}
        (tok_dir / "added_tokens.json").write_text(json.dumps(specials))
        (tok_dir / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": "DreamTokenizer",
            "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]}}))
    torch.manual_seed(seed)
    cfg = DreamConfig(**{**dict(
        vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=tie), **overrides})
    model = DreamModel(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5 if p.dim() < 2 else 0.2)
    folder = save_model_folder(model, tok_dir, out / "model", dtype=dtype, shards=shards)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_folder(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_model):
    from engine.api import Engine

    return Engine.load(str(tiny_model), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model, tmp_path_factory) -> Path:
    """A LoRA adapter with random weights on the tiny model: the tiny model is its parent."""
    from engine.loading import load_model
    from training.lora import add_lora, save_adapter

    model = load_model(tiny_model, "cpu", "float32").model
    add_lora(model, r=4, alpha=8)
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.normal_(0, 0.3)
    return save_adapter(model, tmp_path_factory.mktemp("adapter") / "a", str(tiny_model), 4, 8)
