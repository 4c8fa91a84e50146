"""Qwen2-style byte-level BPE tokenizer for Dream-format model folders, built without remote code.

Two folder styles load: ``tokenizer.json`` (HF fast tokenizer), or ``vocab.json`` + ``merges.txt``
with ``tokenizer_class`` "DreamTokenizer" / "Qwen2Tokenizer" (DiffuCoder and Dream ship this one
with an ``auto_map`` to ``tokenization_dream.py``; that code is never run: the same BPE is built
here with Qwen2's split regex, NFC normalisation and byte-level decoding, plus the added tokens
from ``added_tokens.json`` / ``tokenizer_config.json``).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from engine.errors import ModelLoadError

QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def qwen2_pre_tokenizer():
    """Qwen2's split regex then byte-level mapping: llama.cpp's ``qwen2`` pre-tokenizer."""
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])


def _added_tokens(folder: Path) -> dict[str, int]:
    added: dict[str, int] = {}
    if (folder / "added_tokens.json").exists():
        added.update(json.loads((folder / "added_tokens.json").read_text()))
    cfg = folder / "tokenizer_config.json"
    if cfg.exists():
        for idx, spec in json.loads(cfg.read_text()).get("added_tokens_decoder", {}).items():
            added.setdefault(spec["content"], int(idx))
    return added


def _bpe_from_vocab_merges(folder: Path):
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = []
    for line in (folder / "merges.txt").read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#version"):
            a, b = line.split(" ")
            merges.append((a, b))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = qwen2_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    added = sorted(_added_tokens(folder).items(), key=lambda kv: kv[1])
    tok.add_special_tokens([AddedToken(content, special=True, normalized=False)
                            for content, _ in added])
    for content, idx in added:
        if tok.token_to_id(content) != idx:
            raise ModelLoadError(f"{folder}: added token {content!r} got id "
                                 f"{tok.token_to_id(content)}, expected {idx}; the vocab.json / "
                                 "added_tokens.json pair is inconsistent")
    return tok


class DreamTokenizer:
    """encode/decode plus the special ids and chat template a Dream-format folder defines."""

    def __init__(self, backend, config: dict) -> None:
        self.backend = backend
        self.config = config
        self._lock = threading.Lock()
        self.chat_template: str | None = config.get("chat_template")

    @classmethod
    def from_folder(cls, folder: Path) -> "DreamTokenizer":
        cfg_path = folder / "tokenizer_config.json"
        config = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        if (folder / "chat_template.jinja").exists() and "chat_template" not in config:
            config["chat_template"] = (folder / "chat_template.jinja").read_text()
        try:
            if (folder / "tokenizer.json").exists():
                from tokenizers import Tokenizer

                backend = Tokenizer.from_file(str(folder / "tokenizer.json"))
            elif (folder / "vocab.json").exists() and (folder / "merges.txt").exists():
                backend = _bpe_from_vocab_merges(folder)
            else:
                raise ModelLoadError(f"{folder} has no tokenizer.json nor vocab.json + merges.txt; "
                                     "copy the tokenizer files from the original model folder")
        except (OSError, ValueError, Exception) as err:  # tokenizers raises plain Exception
            if isinstance(err, ModelLoadError):
                raise
            raise ModelLoadError(f"cannot read the tokenizer in {folder}: {err}; "
                                 "re-download the tokenizer files") from err
        return cls(backend, config)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def token_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def encode(self, text: str, specials: bool = False) -> list[int]:
        """Token ids of ``text``. User text never turns into control tokens: a file that
        contains the string "<|mask|>" must not become a hole. ``specials=True`` parses them
        (only for templates the engine builds)."""
        with self._lock:  # the flag lives on the shared backend
            self.backend.encode_special_tokens = not specials
            return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        vocab = self.vocab_size
        return self.backend.decode([i for i in ids if 0 <= i < vocab], skip_special_tokens=False)

    def token_texts(self, ids: list[int]) -> list[str]:
        """Per-token text for rendering a canvas (each token decoded alone)."""
        return [self.backend.decode([i], skip_special_tokens=False) for i in ids]

    def encode_chat(self, user: str, system: str = "You are a helpful assistant.") -> list[int]:
        return encode_chat(self, user, system)


def encode_chat(tok, user: str, system: str) -> list[int]:
    """The chat template's ids with its control tokens parsed and the user's text not."""
    head, tail = chatml("\x00", system).split("\x00")
    return tok.encode(head, specials=True) + tok.encode(user) + tok.encode(tail, specials=True)


def chatml(user: str, system: str = "You are a helpful assistant.") -> str:
    """ChatML as DiffuCoder's README builds it (note the newline before the user's im_end)."""
    return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}\n<|im_end|>\n"
            "<|im_start|>assistant\n")
