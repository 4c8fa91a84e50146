"""The engine's public face: load a model once, then stream infills and generations.

``Engine.infill_stream(prefix, suffix)`` and ``Engine.generate_stream(prompt)`` yield one
``Frame`` per denoising step and finally a ``Completion``; the TUI, language server and web demo
render those and never sample themselves. Stopping iteration cancels between two steps.

Infill length: a fixed canvas that does not fit the hole costs a lot of accuracy (DreamOn, CAL;
shared/reference/anchors.md G). The embedded model is trained to right-pad a middle with
``<|dlm_pad|>``, so the ``adaptive`` strategy runs one probe forward pass over a full canvas,
reads the expected number of non-pad slots from it, and denoises a canvas sized to that
(``fixed`` keeps the upstream behaviour). The decoder is behind ``sampler.denoise``; a block-wise
cached decoder can replace it without touching these callers.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

import torch

from engine.errors import ConfigError
from engine.loading import LoadedModel, load_model, resolve_model
from engine.sampler import SamplerSettings, denoise, masked_logits
from engine.tokenizer import DreamTokenizer

LENGTH_STRATEGIES = ("adaptive", "fixed")
SAMPLER_KEYS = ("steps", "alg", "alg_temp", "temperature", "top_p", "top_k", "max_new_tokens",
                "block_length")


def generation_defaults(folder: Path) -> dict:
    """Sampler defaults from a model folder's generation_config.json (only keys we know)."""
    path = folder / "generation_config.json"
    if not folder.is_dir() or not path.exists():
        return {}
    return {k: v for k, v in json.loads(path.read_text()).items() if k in SAMPLER_KEYS}


@dataclass
class GenerationSettings(SamplerSettings):
    """Sampler settings plus canvas size, length strategy, seed and chat mode."""

    max_new_tokens: int = 64
    """Canvas size (the most tokens a completion can have)."""
    length: str = "adaptive"
    """Infill canvas: adaptive (probe the hole's length first) or fixed (max_new_tokens)."""
    seed: int = 0
    """Seed of the explicit torch.Generator."""
    chat: bool | None = None
    """Wrap prompts in the chat template: None = when the model is an instruct model."""
    stop: tuple[str, ...] = ()
    """End denoising early once the committed left part of the canvas (every slot before the
    first one still masked) contains one of these strings, eos or a pad; what is still masked
    is dropped. ("\n",) makes single-line completion stop after its line."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.length not in LENGTH_STRATEGIES:
            raise ConfigError(f"unknown length strategy {self.length!r}; use adaptive or fixed")

    def sampler(self, steps: int | None = None) -> SamplerSettings:
        return SamplerSettings(steps=steps or self.steps, alg=self.alg, alg_temp=self.alg_temp,
                               temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                               eps=self.eps, block_length=self.block_length)


@dataclass
class Frame:
    """The canvas after one denoising step (canvas positions only, prompt excluded)."""

    step: int
    steps: int
    canvas: list[int]
    """Token ids of the canvas; mask_id where still masked."""
    order: list[int]
    """Per canvas slot, the step it was decoded at, or -1 while masked."""
    newly: list[int]
    """Canvas slots decoded at this step."""


@dataclass
class Completion:
    completion: str
    token_ids: list[int]
    """The raw generated canvas, before trimming pads/eos."""
    order: list[int]
    steps: int
    canvas_len: int
    elapsed_s: float
    prompt_tokens: int
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return len(self.token_ids) / self.elapsed_s if self.elapsed_s > 0 else 0.0


class TorchDenoiser:
    """The PyTorch model as a ``sampler.Denoiser``."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded

    @torch.inference_mode()
    def logits(self, x, attention_mask=None, position_ids=None) -> torch.Tensor:
        return self.loaded.model(x.to(self.loaded.device), attention_mask, position_ids)

    @torch.inference_mode()
    def logits_at(self, x, select, attention_mask=None, position_ids=None) -> torch.Tensor:
        dev = self.loaded.device
        return self.loaded.model(x.to(dev), attention_mask, position_ids,
                                 select=(select[0].to(dev), select[1].to(dev)))


class Engine:
    """A loaded model + tokenizer + denoiser, ready to infill and generate."""

    def __init__(self, folder: Path, tokenizer: DreamTokenizer, denoiser, config,
                 device: torch.device, backend: str = "torch", dtype: str = "") -> None:
        self.folder, self.tokenizer, self.denoiser, self.config = folder, tokenizer, denoiser, config
        self.device, self.backend, self.dtype = device, backend, dtype
        self.mask_id = config.mask_token_id
        self.eos_id = config.eos_token_id
        self.pad_id = tokenizer.token_id("<|dlm_pad|>")
        if self.pad_id is None:
            self.pad_id = config.pad_token_id
        self.im_end_id = tokenizer.token_id("<|im_end|>")
        self.defaults = generation_defaults(folder)
        """The model's sampler defaults (generation_config.json), read once at load."""

    @classmethod
    def load(cls, model: str | None = None, device: str = "auto", dtype: str = "auto",
             backend: str = "torch", **backend_options) -> "Engine":
        folder = resolve_model(model)
        if backend == "llamacpp" or folder.suffix == ".gguf":
            from engine.llamacpp import load_llamacpp_engine

            return load_llamacpp_engine(cls, folder, **backend_options)
        if backend not in ("torch", "auto"):
            raise ConfigError(f"unknown --backend {backend!r}; use auto, torch or llamacpp")
        loaded = load_model(folder, device, dtype)
        tok = DreamTokenizer.from_folder(folder)
        return cls(folder, tok, TorchDenoiser(loaded), loaded.config, loaded.device, "torch",
                   str(loaded.dtype).replace("torch.", ""))

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def is_instruct(self) -> bool:
        """Instruct models have a chat template and the <|dlm_pad|> padding token (DiffuCoder)."""
        tok = self.tokenizer
        lowered = self.folder.as_posix().lower()
        named = "instruct" in lowered or "grpo" in lowered
        return bool(tok.chat_template) and tok.token_id("<|im_start|>") is not None and (
            named or (tok.token_id("<|dlm_pad|>") is not None and "base" not in lowered))

    # -- prompt building -------------------------------------------------------------------
    def _context(self) -> int:
        return self.config.max_position_embeddings

    def _check_fits(self, n_prompt: int, n_canvas: int) -> None:
        if n_prompt + n_canvas > self._context():
            raise ConfigError(f"the prompt is {n_prompt} tokens; with {n_canvas} new tokens it "
                              f"exceeds the model's context of {self._context()}; shorten it or "
                              "lower --max-new-tokens")

    def _start(self, ids: list[int]) -> list[int]:
        # Position 0 is never predicted (the shift reuses its own logits): give it a real token.
        return ids if ids else [self.eos_id]

    # -- streams -----------------------------------------------------------------------------
    def generate_stream(self, prompt: str, settings: GenerationSettings,
                        raw: bool = False) -> Iterator[Frame | Completion]:
        """Whole-function / free generation: prompt followed by ``max_new_tokens`` masks."""
        chat = settings.chat if settings.chat is not None else self.is_instruct
        ids = self.tokenizer.encode(prompt) if raw or not chat else \
            self.tokenizer.encode_chat(prompt)
        ids = self._start(ids)
        self._check_fits(len(ids), settings.max_new_tokens)
        yield from self._run(ids, settings.max_new_tokens, [], settings, settings.steps,
                             instruct=chat and not raw)

    def infill_stream(self, prefix: str, suffix: str,
                      settings: GenerationSettings) -> Iterator[Frame | Completion]:
        """Fill the hole between ``prefix`` and ``suffix``."""
        pre = self._start(self.tokenizer.encode(prefix))
        suf = self.tokenizer.encode(suffix)
        self._check_fits(len(pre) + len(suf), settings.max_new_tokens)
        canvas, steps, probe = settings.max_new_tokens, settings.steps, {}
        if settings.length == "adaptive":
            canvas, probe = self.probe_length(pre, suf, settings.max_new_tokens)
            steps = max(1, math.ceil(settings.steps * canvas / settings.max_new_tokens))
        yield from self._run(pre, canvas, suf, settings, steps, probe=probe)

    def probe_length(self, pre: list[int], suf: list[int], max_new: int) -> tuple[int, dict]:
        """Expected hole length from one forward pass over a full canvas: the sum over slots of
        P(not pad/eos), plus a safety margin (too short is fatal, too long only costs steps)."""
        x = torch.tensor([pre + [self.mask_id] * max_new + suf], dtype=torch.long,
                         device=self.device)
        logits = masked_logits(self.denoiser, x, x == self.mask_id)  # (N, V)
        probs = torch.softmax(logits.float(), dim=-1)  # (N, V)
        p_end = probs[:, self.pad_id] + probs[:, self.eos_id]  # (N,)
        expected = float((1 - p_end).sum())
        canvas = min(max_new, max(4, math.ceil(expected * 1.5) + 4))
        return canvas, {"expected_len": round(expected, 2), "probe_canvas": canvas}

    def _run(self, pre: list[int], n_canvas: int, suf: list[int], settings: GenerationSettings,
             steps: int, instruct: bool = False, probe: dict | None = None):
        start = time.perf_counter()
        x = torch.tensor([pre + [self.mask_id] * n_canvas + suf], dtype=torch.long,
                         device=self.device)
        gen = torch.Generator(device=self.device if self.device.type != "mps" else "cpu")
        gen.manual_seed(settings.seed)
        lo, hi = len(pre), len(pre) + n_canvas
        order = [-1] * n_canvas
        steps_done, settled = 0, 0
        for st in denoise(self.denoiser, x, self.mask_id, settings.sampler(steps), gen):
            newly = st.decoded[0, lo:hi].nonzero(as_tuple=True)[0].tolist()
            for j in newly:
                order[j] = st.step
            steps_done = st.step + 1
            canvas = st.x[0, lo:hi].tolist()
            yield Frame(st.step, st.steps, canvas, list(order), newly)
            if settings.stop:
                done = canvas.index(self.mask_id) if self.mask_id in canvas else n_canvas
                if done > settled and self._stops(canvas[:done], settings.stop, instruct):
                    break
                settled = done
        canvas_ids = x[0, lo:hi].tolist()
        text = self.tokenizer.decode(self.trim(canvas_ids, instruct))
        yield Completion(text, canvas_ids, order, steps_done, n_canvas,
                         time.perf_counter() - start, len(pre) + len(suf), dict(probe or {}))

    def _stops(self, settled: list[int], stop: tuple[str, ...], instruct: bool) -> bool:
        ends = {self.eos_id, self.pad_id} | ({self.im_end_id} if instruct else set())
        return bool(ends & set(settled)) or any(
            s in self.tokenizer.decode(self.trim(settled, instruct)) for s in stop)

    def trim(self, ids: list[int], instruct: bool = False) -> list[int]:
        """Drop what the model wrote into unused slots: cut at eos (and <|im_end|> for chat),
        remove <|dlm_pad|> and any slot still masked."""
        stops = {self.eos_id} | ({self.im_end_id} if instruct and self.im_end_id is not None else set())
        out = []
        for i in ids:
            if i in stops:
                break
            if i not in (self.pad_id, self.mask_id):
                out.append(i)
        return out

    # -- blocking helpers ------------------------------------------------------------------
    @staticmethod
    def finish(stream: Iterator[Frame | Completion]) -> Completion:
        result = None
        for item in stream:
            if isinstance(item, Completion):
                result = item
        assert result is not None
        return result

    def infill(self, prefix: str, suffix: str, settings: GenerationSettings | None = None,
               **overrides) -> Completion:
        settings = replace(settings or GenerationSettings(), **overrides)
        return self.finish(self.infill_stream(prefix, suffix, settings))

    def generate(self, prompt: str, settings: GenerationSettings | None = None, raw: bool = False,
                 **overrides) -> Completion:
        settings = replace(settings or GenerationSettings(), **overrides)
        return self.finish(self.generate_stream(prompt, settings, raw))
