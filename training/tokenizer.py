"""Byte-level BPE tokenizer for the embedded model, and corpus -> token-id shards.

The pre-tokenizer is Qwen2's exact split regex followed by byte-level mapping, so llama.cpp can
run it as its ``qwen2`` pre-tokenizer (the GGUF back end depends on that). Special tokens come
first: ``<|endoftext|>`` = 0, ``<|mask|>`` = 1, ``<|dlm_pad|>`` = 2, then ChatML's
``<|im_start|>`` / ``<|im_end|>`` so instruct-style prompts have their markers.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from engine.tokenizer import qwen2_pre_tokenizer
from training.corpus import iter_texts

SPECIAL_TOKENS = ["<|endoftext|>", "<|mask|>", "<|dlm_pad|>", "<|im_start|>", "<|im_end|>"]


def new_bpe(vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(byte_fallback=False, fuse_unk=False))
    tok.pre_tokenizer = qwen2_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    return tok, trainer


def sample_texts(train_jsonl: Path, megabytes: int, seed: int = 0) -> list[str]:
    texts = list(iter_texts(train_jsonl))
    random.Random(seed).shuffle(texts)
    out, size = [], 0
    for t in texts:
        out.append(t)
        size += len(t)
        if size > megabytes * 1_000_000:
            break
    return out


def train_tokenizer(train_jsonl: Path, vocab_size: int, megabytes: int = 60):
    tok, trainer = new_bpe(vocab_size)
    tok.train_from_iterator(sample_texts(train_jsonl, megabytes), trainer=trainer)
    return tok


def bytes_per_token(tok, texts: list[str]) -> float:
    enc = tok.encode_batch(texts)
    return sum(len(t.encode()) for t in texts) / max(1, sum(len(e.ids) for e in enc))


def save_tokenizer_folder(tok, out_dir: Path, max_length: int) -> None:
    """Write tokenizer.json plus the HF config files the engine reads."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_length,
        "eos_token": "<|endoftext|>", "pad_token": "<|dlm_pad|>", "mask_token": "<|mask|>",
        "bos_token": None, "unk_token": None, "clean_up_tokenization_spaces": False,
    }, indent=2))


def encode_to_shard(tok, jsonl: Path, out: Path, eos_id: int = 0, batch: int = 256) -> int:
    """Token ids of every file, each followed by <|endoftext|>, as one uint16 array."""
    assert tok.get_vocab_size() < 2**16
    tok.encode_special_tokens = True  # a source file's literal "<|mask|>" stays text
    chunks, batch_texts = [], []

    def flush() -> None:
        for enc in tok.encode_batch(batch_texts):
            chunks.append(np.asarray(enc.ids + [eos_id], dtype=np.uint16))
        batch_texts.clear()

    for text in iter_texts(jsonl):
        batch_texts.append(text)
        if len(batch_texts) == batch:
            flush()
    flush()
    arr = np.concatenate(chunks)
    arr.tofile(out)
    return int(arr.size)
