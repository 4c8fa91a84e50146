"""The quantized CPU back end: Dream GGUFs through llama-cpp-python's low-level API.

Same sampler as the torch back end (``engine.sampler``), another ``Denoiser``: one llama.cpp
decode per step returns raw logits for every position (Dream contexts have no KV cache and no
causal mask; ``Llama.eval`` does not work for them, so the low-level calls are used). Traps
handled (llama.cpp's diffusion example and its ``llama_decode`` batch checks): a canvas longer
than ``n_ubatch`` would abort the process, so it is checked first; files are validated with
gguf-py's reader before llama.cpp sees them, so a corrupt or non-diffusion GGUF is a clear
error, never an abort; logit shifting defaults to on when ``diffusion.shift_logits`` is absent.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from engine.errors import BackendError, ModelLoadError
from engine.gguf_export import GENERATION_KEY, write_gguf
from engine.llama_lib import llama as _llama, quiet_llama_log
from engine.loading import cache_dir

log = logging.getLogger(__name__)
DIFFUSION_ARCHS = {"dream"}


def physical_cores() -> int:
    try:
        pairs = set()
        phys = core = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("physical id"):
                phys = line.split(":")[1].strip()
            elif line.startswith("core id"):
                core = line.split(":")[1].strip()
                pairs.add((phys, core))
        if pairs:
            return len(pairs)
    except OSError:
        pass
    return max(1, (os.cpu_count() or 2) // 2)


def read_gguf_header(path: Path) -> dict:
    """Validate a GGUF with gguf-py and return the fields we need; raises ModelLoadError."""
    try:
        from gguf import GGUFReader
    except ImportError as err:
        raise BackendError("reading GGUF files needs the gguf package; pip install "
                           "'unmask[llamacpp]'") from err
    try:
        reader = GGUFReader(str(path))
    except Exception as err:  # noqa: BLE001 - any parse failure means a corrupt file
        raise ModelLoadError(f"{path} is not a valid GGUF file ({type(err).__name__}: {err}); "
                             "re-export it with `unmask export gguf`") from err

    def field(name, default=None):
        f = reader.fields.get(name)
        if f is None:
            return default
        value = f.contents()
        return value

    arch = field("general.architecture")
    if arch not in DIFFUSION_ARCHS:
        raise ModelLoadError(f"{path} holds a {arch!r} model, not a Dream diffusion model; "
                             "export one with `unmask export gguf`")
    mask = field("tokenizer.ggml.mask_token_id")
    if mask is None:
        raise ModelLoadError(f"{path} has no tokenizer.ggml.mask_token_id; re-export it with "
                             "`unmask export gguf`")
    raw_defaults = field(GENERATION_KEY)
    try:
        defaults = json.loads(raw_defaults) if raw_defaults else {}
    except json.JSONDecodeError:
        defaults = {}
    return {"arch": arch, "mask": int(mask), "defaults": defaults, "eos": int(field("tokenizer.ggml.eos_token_id", 0)),
            "pad": int(field("tokenizer.ggml.padding_token_id", 0)),
            "context": int(field(f"{arch}.context_length", 2048)),
            "shift": field("diffusion.shift_logits", True) is not False,
            "name": field("general.name", path.stem)}


class GGUFTokenizer:
    """The tokenizer stored in a GGUF, through llama.cpp (used when no HF folder is at hand)."""

    def __init__(self, model) -> None:
        self.L = _llama()
        self.vocab = self.L.llama_model_get_vocab(model)
        self.chat_template = None
        self._n = self.L.llama_vocab_n_tokens(self.vocab)
        self._ids = {self._piece(i): i for i in range(self._n) if self._is_control(i)}

    def _is_control(self, i: int) -> bool:
        return bool(self.L.llama_vocab_is_control(self.vocab, i))

    def _piece(self, i: int) -> str:
        buf = ctypes.create_string_buffer(256)
        n = self.L.llama_token_to_piece(self.vocab, i, buf, 256, 0, True)
        return buf.raw[:max(n, 0)].decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        return self._n

    def token_id(self, token: str) -> int | None:
        return self._ids.get(token)

    def encode(self, text: str, specials: bool = False) -> list[int]:
        """Token ids; control tokens are parsed only with ``specials`` (engine templates)."""
        data = text.encode("utf-8")
        buf = (self.L.llama_token * (len(data) + 16))()
        n = self.L.llama_tokenize(self.vocab, data, len(data), buf, len(buf), False, specials)
        if n < 0:
            raise BackendError("llama.cpp could not tokenize the prompt")
        return list(buf[:n])

    def decode(self, ids: list[int]) -> str:
        out = b""
        for i in ids:
            buf = ctypes.create_string_buffer(256)
            n = self.L.llama_token_to_piece(self.vocab, int(i), buf, 256, 0, True)
            out += buf.raw[:max(n, 0)]
        return out.decode("utf-8", errors="replace")

    def token_texts(self, ids: list[int]) -> list[str]:
        return [self.decode([i]) for i in ids]

    def encode_chat(self, user: str, system: str = "You are a helpful assistant.") -> list[int]:
        from engine.tokenizer import encode_chat

        return encode_chat(self, user, system)


class LlamaCppDenoiser:
    """``sampler.Denoiser`` over a llama.cpp Dream context."""

    def __init__(self, path: Path, n_ctx: int, threads: int | None = None,
                 flash_attn: bool = False) -> None:
        L = self.L = _llama()
        self.header = read_gguf_header(path)
        quiet_llama_log()
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = 0
        # no CPU weight repacking: with llama-cpp-python 0.3.36 on this workplace's Xeon (AMX,
        # avx512) a forward over repacked Q8_0 / Q4_1 weights segfaults; unpacked ones run fine
        if hasattr(mp, "use_extra_bufts"):
            mp.use_extra_bufts = False
        self.model = L.llama_model_load_from_file(str(path).encode(), mp)
        if not self.model:
            raise ModelLoadError(f"llama.cpp could not load {path}; the file may be corrupt or "
                                 "from a newer llama.cpp")
        if not L.llama_model_is_diffusion(self.model):
            raise ModelLoadError(f"{path} is not a diffusion model for llama.cpp")
        self.n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(self.model))
        self.n_ctx = n_ctx
        cp = L.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = n_ctx  # a canvas longer than n_ubatch aborts
        cp.n_threads = cp.n_threads_batch = threads or physical_cores()
        cp.flash_attn_type = 1 if flash_attn else 0
        self.ctx = L.llama_init_from_model(self.model, cp)
        if not self.ctx:
            raise BackendError(f"llama.cpp could not create a context of {n_ctx} tokens")
        self.batch = L.llama_batch_init(n_ctx, 0, 1)

    def logits(self, x: torch.Tensor, attention_mask=None, position_ids=None) -> torch.Tensor:
        rows = [self._row_logits(row.tolist()) for row in x]
        return torch.from_numpy(np.stack(rows))  # (B, L, V)

    def _row_logits(self, tokens: list[int]) -> np.ndarray:
        T = len(tokens)
        if T > self.n_ctx:
            raise BackendError(f"the canvas is {T} tokens but the llama.cpp context holds "
                               f"{self.n_ctx}; lower --max-new-tokens or the prompt")
        b = self.batch
        for i, t in enumerate(tokens):
            b.token[i], b.pos[i], b.n_seq_id[i], b.logits[i] = t, i, 1, 1
            b.seq_id[i][0] = 0
        b.n_tokens = T
        rc = self.L.llama_decode(self.ctx, b)
        if rc != 0:
            raise BackendError(f"llama.cpp decode failed (code {rc})")
        out = np.ctypeslib.as_array(self.L.llama_get_logits(self.ctx), shape=(T, self.n_vocab))
        out = out.copy()
        if not self.header["shift"]:
            # our sampler shifts (Dream); a model that predicts in place is shifted back here
            out = np.concatenate([out[1:], out[-1:]])
        return out

    def close(self) -> None:
        if getattr(self, "batch", None) is not None:
            self.L.llama_batch_free(self.batch)
            self.batch = None
        if getattr(self, "ctx", None):
            self.L.llama_free(self.ctx)
            self.ctx = None
        if getattr(self, "model", None):
            self.L.llama_model_free(self.model)
            self.model = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


def cached_gguf(folder: Path, quant: str) -> Path:
    """The folder's GGUF in the user cache, built once, keyed by source hashes and quant."""
    h = hashlib.sha256(quant.encode())
    for f in sorted(folder.iterdir()):
        if f.suffix in (".safetensors", ".json", ".txt"):
            h.update(f.name.encode())
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
    out = cache_dir() / "gguf" / f"{folder.name}-{h.hexdigest()[:16]}-{quant}.gguf"
    if not out.exists():
        tmp = out.with_name(out.name + ".tmp")
        write_gguf(folder, tmp, quant)
        os.replace(tmp, out)
    return out


def load_llamacpp(path: Path, quant: str = "f16", threads: int | None = None,
                  n_ctx: int = 1024):
    """(tokenizer, denoiser, header, dtype label) for a .gguf file or a model folder (its GGUF
    built and cached); ``engine.api.Engine.load`` assembles the engine from them. The header
    carries the special ids, the context and the model's generation_config."""
    from engine.tokenizer import DreamTokenizer

    if path.is_dir():
        from engine.loading import base_folder

        # an adapter folder reads its base's tokenizer, as the torch back end does
        gguf_path = cached_gguf(path, quant)
        tokenizer = DreamTokenizer.from_folder(base_folder(path))
    else:
        gguf_path, tokenizer = path, None
    header = read_gguf_header(gguf_path)
    header["context"] = n_ctx = min(n_ctx, header["context"])
    den = LlamaCppDenoiser(gguf_path, n_ctx, threads)
    if tokenizer is None:
        tokenizer = GGUFTokenizer(den.model)
    return tokenizer, den, header, gguf_path.stem.rsplit("-", 1)[-1] if path.is_dir() else "gguf"
