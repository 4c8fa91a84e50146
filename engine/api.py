"""The engine's public face: load a model once, then stream infills and generations.

``Engine.infill_stream(prefix, suffix)`` and ``Engine.generate_stream(prompt)`` yield one
``Frame`` per denoising step and finally a ``Completion``; the TUI, language server and web demo
render those and never sample themselves. Stopping iteration cancels between two steps.

Infill length: a fixed canvas that does not fit the hole costs a lot of accuracy (DreamOn, Wu et
al. 2025; CAL, "calibrated adaptive length"). The embedded model is trained to right-pad a middle
with ``<|dlm_pad|>``, so the ``adaptive`` strategy runs one probe forward pass over a full canvas,
reads the expected number of non-pad slots from it, and denoises a canvas sized to that
(``fixed`` keeps the upstream behaviour). The decoder is behind ``sampler.denoise``; a block-wise
cached decoder can replace it without touching these callers.

Settings: ``Engine.settings(**overrides)`` is the one place generation settings are assembled:
the dataclass defaults, under the model's ``generation_config.json`` (or the copy carried in a
GGUF's metadata), under the caller's overrides. Every front end calls it.

Real files: a prefix and suffix longer than the context are cut to the lines nearest the hole
(``engine.window``) and the completion says so in ``extra["note"]``; nothing is refused.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Iterator

import torch

from engine.choices import (
    BACKENDS,
    LENGTH_STRATEGIES,
    MAX_PARENT_BRANCHES,
    PARALLEL_ALGORITHMS,
)
from engine.errors import ConfigError, ModelLoadError
from engine.examples import passes_examples, prompt_examples
from engine.healing import NO_HEALING, Healing, plan_healing
from engine.loading import LoadedModel, adapter_chain, base_folder, load_model, resolve_model
from engine.lora import is_adapter
from engine.repetition import cut_loop, find_loop
from engine.rerank import Candidate, line_separator, request_kind, rerank
from engine.reuse import ContextReuse
from engine.sampler import (
    SamplerSettings,
    denoise,
    masked_logits,
    planned_steps,
    predicting_positions,
)
from engine.scope import limit_scope, scope_settled
from engine.syntax_guard import first_line
from engine.tokenizer import DreamTokenizer
from engine.window import fit_prompt, infill_ids

SAMPLER_KEYS = ("steps", "alg", "alg_temp", "temperature", "top_p", "top_k", "max_new_tokens",
                "block_length", "eps", "threshold", "gamma", "cache_refresh", "max_repeats",
                "parent_branches", "rerank_suffix_lines")


def known_defaults(raw: dict) -> dict:
    """The keys of a generation config that Unmask understands (Dream's names)."""
    return {k: v for k, v in raw.items() if k in SAMPLER_KEYS}


def generation_defaults(folder: Path) -> dict:
    """Sampler defaults from a model folder's generation_config.json (only keys we know)."""
    return known_defaults(generation_config(folder))


def pad_cycle(config: dict) -> tuple[int, ...]:
    """The rainbow padding tokens a model fills a canvas with after its end token
    (``pad_cycle_token_ids`` of its generation_config; none for Dream and DiffuCoder)."""
    ids = config.get("pad_cycle_token_ids") or []
    if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
        raise ModelLoadError(f"pad_cycle_token_ids must be a list of token ids, not {ids!r}; "
                             "restore the model's generation_config.json")
    return tuple(ids)


def model_generation_config(folder: Path) -> dict:
    """The generation config a model decodes with: its folder's own, or for an adapter without
    one the nearest of its chain of bases (the shipped adapter's own wins over its base's)."""
    from engine.loading import adapter_chain

    return next((found for f in adapter_chain(folder) if (found := generation_config(f))), {})


def generation_config(folder: Path) -> dict:
    """A model folder's generation_config.json as a dict ({} if it has none)."""
    path = folder / "generation_config.json"
    if not folder.is_dir() or not path.exists():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelLoadError(f"{path} is not valid JSON ({err}); fix it or restore it from the "
                             "original model") from err
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path} must hold a JSON object; restore it from the original model")
    return raw


@dataclass(frozen=True)
class SpecialIds:
    """What the engine needs to know of a model besides its tokenizer and denoiser."""

    mask: int
    eos: int
    pad: int | None
    """The id the model writes into unused slots; None: it uses eos (Dream Base)."""
    context: int
    """Longest sequence (prompt + canvas) the model takes."""
    pad_cycle: tuple[int, ...] = ()
    """Further padding tokens (rainbow padding, ``pad_cycle``): each one ends a completion."""


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
    cache_refresh: int = 0
    """Torch back end: reuse the prefix's and suffix's keys/values, recomputed every this many
    passes (Fast-dLLM's dual cache); 0 computes everything every pass (exact)."""
    reuse_context: bool = False
    """Torch back end, with ``cache_refresh``: start from the keys and values of the previous
    request's full pass for the tokens the two share at the start (``engine.reuse``); an
    approximation like the dual cache, for editors whose consecutive requests share a prefix."""
    stop_loops: bool = False
    """End denoising once the committed left part of the canvas holds a loop
    (``engine.repetition``) and keep the text up to the end of the unit's first copy; a loop
    committed elsewhere is cut from the final text. False: as upstream Dream."""
    limit_scope: bool = False
    """Infill: cut the completion at the first line that leaves the hole's indentation block
    or repeats the suffix's first lines (``engine.scope``; editors' block requests). False: as
    upstream Dream."""

    parent_branches: int = 0
    """Infill on an adapted model: its autoregressive parent also writes this many answers,
    and of those and the diffusion answer the one under which the parent finds the file
    likeliest is the answer (``engine.rerank``): first lines for a single-line request (a
    ``"\n"`` stop), every length of each for a block, which needs a suffix to judge its end;
    0: the diffusion answer alone. A model that is no LoRA adapter, or the llama.cpp back end,
    has no parent to ask."""
    rerank_suffix_lines: int = 8
    """With ``parent_branches``: how many lines of the suffix the parent scores after each
    candidate (0: the candidate alone, the prefix-only parent's preference)."""
    check_examples: bool = False
    """With ``parent_branches``, for a multi-line request that is a whole function body (the
    prefix ends at the docstring of a function whose body has not begun, whatever follows):
    run the docstring's ``>>>`` examples against each candidate in the sandbox
    (``engine.examples``), and put the candidates that pass them all first. It runs the file
    before the cursor with each candidate, so it is asked for, never assumed."""

    retries: int = 0
    """Infill with an ``accept`` test (``Engine.infill_stream``): how many other decodings
    (``Engine.alternatives``, in order, at most 2) are tried after a rejected answer; 0: the
    answer is only judged (``extra["accepted"]``). On held-out corpus lines two retries made 8
    of 100 more answers parse and none more exact, for 67 % more time per hole
    (``benchmarks/decode_order.py --guard``), so none is the default."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.retries <= 2:
            raise ConfigError(f"--retries must be 0, 1 or 2, got {self.retries}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"--max-new-tokens must be at least 1, got {self.max_new_tokens}")
        if self.length not in LENGTH_STRATEGIES:
            raise ConfigError(f"unknown length strategy {self.length!r}; use adaptive or fixed")
        if self.cache_refresh < 0:
            raise ConfigError(f"--cache-refresh must be >= 0, got {self.cache_refresh}")
        if not 0 <= self.parent_branches <= MAX_PARENT_BRANCHES:
            raise ConfigError(f"--parent-branches must be 0 to {MAX_PARENT_BRANCHES}, got "
                              f"{self.parent_branches}")
        if self.rerank_suffix_lines < 0:
            raise ConfigError(f"--rerank-suffix-lines must be >= 0, got "
                              f"{self.rerank_suffix_lines}")
        if self.check_examples and not self.parent_branches:
            raise ConfigError("--check-examples orders the parent's candidates; drop "
                              "--parent-branches 0 or --check-examples")
        if self.reuse_context and not self.cache_refresh:
            raise ConfigError("--reuse-context works with the context cache; add "
                              "--cache-refresh N (N >= 1)")

    def sampler(self, steps: int | None = None) -> SamplerSettings:
        return SamplerSettings(steps=steps or self.steps, alg=self.alg, alg_temp=self.alg_temp,
                               temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                               eps=self.eps, block_length=self.block_length,
                               threshold=self.threshold, gamma=self.gamma,
                               max_repeats=self.max_repeats)


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
    """Engine time: the time a consumer spends between two frames is not counted."""
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


class CachedDenoiser(TorchDenoiser):
    """Fast-dLLM's dual cache over one run's canvas (Wu et al. 2025): every ``refresh`` passes a
    full forward stores every layer's keys and values; the passes between compute only the
    canvas window (plus the position before it, whose hidden state predicts the first slot)
    and reuse the prefix's and suffix's stored keys. Exact when ``refresh`` is 1. With
    ``reuse`` (``engine.reuse``) the first full pass starts from the keys kept from the previous
    request (or this request's length probe) for the shared start of the prefix, and keeps its
    own for the next request: an all-mask canvas, as the next request's first pass will see."""

    def __init__(self, loaded: LoadedModel, window: tuple[int, int], refresh: int,
                 reuse: ContextReuse | None = None) -> None:
        super().__init__(loaded)
        self.window, self.refresh, self.reuse = window, refresh, reuse
        self.cache: list | None = None
        self.passes = 0
        self.reused = 0
        """Positions the first pass took from the previous request instead of computing."""

    @torch.inference_mode()
    def logits_at(self, x, select, attention_mask=None, position_ids=None) -> torch.Tensor:
        from engine.model import LayerKV

        dev = self.loaded.device
        rows, cols = select[0].to(dev), select[1].to(dev)
        if attention_mask is not None or position_ids is not None:  # batches: exact path
            return super().logits_at(x, select, attention_mask, position_ids)
        if self.cache is None or self.passes % self.refresh == 0:
            if self.reuse is not None and self.cache is None:
                out, self.cache, self.reused = self.reuse.full_pass(x, (rows, cols),
                                                                    self.window[0])
            else:
                self.cache = [LayerKV(None) for _ in self.loaded.model.model.layers]
                out = self.loaded.model(x.to(dev), select=(rows, cols), cache=self.cache)
            for layer in self.cache:
                layer.window = self.window
        else:
            a, b = self.window
            out = self.loaded.model(x[:, a:b].to(dev), select=(rows, cols - a), cache=self.cache)
        self.passes += 1
        return out


class Engine:
    """A loaded model + tokenizer + denoiser, ready to infill and generate."""

    def __init__(self, folder: Path, tokenizer: DreamTokenizer, denoiser, ids: SpecialIds,
                 device: torch.device, backend: str = "torch", dtype: str = "",
                 defaults: dict | None = None) -> None:
        self.folder, self.tokenizer, self.denoiser = folder, tokenizer, denoiser
        self.device, self.backend, self.dtype = device, backend, dtype
        self.mask_id, self.eos_id, self.context = ids.mask, ids.eos, ids.context
        self.pad_id = tokenizer.token_id("<|dlm_pad|>")
        if self.pad_id is None:
            self.pad_id = ids.pad if ids.pad is not None else ids.eos
        self.im_end_id = tokenizer.token_id("<|im_end|>")
        self.end_ids = frozenset({self.eos_id, self.pad_id, *ids.pad_cycle})
        """Every id that ends a completion: the end token, the pad and a rainbow cycle's pads."""
        self.reuse = ContextReuse(denoiser.loaded.model, denoiser.loaded.device) \
            if isinstance(denoiser, TorchDenoiser) else None
        """Keys kept across requests (torch only), used when a request asks for reuse_context."""
        self.defaults = known_defaults(defaults if defaults is not None
                                       else generation_defaults(folder))
        """The model's sampler defaults (generation_config.json), read once at load."""
        self._parent: LoadedModel | None = None
        self._parent_lock = threading.Lock()

    @classmethod
    def load(cls, model: str | None = None, device: str = "auto", dtype: str = "auto",
             backend: str = "auto", **backend_options) -> "Engine":
        """``backend``: auto (= torch: its bf16 forward is the fastest measured on CPU, see the
        README's back-end table), torch, or llamacpp (also chosen by a ``.gguf`` path)."""
        if backend not in BACKENDS:
            raise ConfigError(f"unknown --backend {backend!r}; use {', '.join(BACKENDS)}")
        folder = resolve_model(model)
        if backend == "llamacpp" or folder.suffix == ".gguf":
            from engine.llamacpp import load_llamacpp

            tok, den, head, label = load_llamacpp(folder, **backend_options)
            ids = SpecialIds(head["mask"], head["eos"], head["pad"], head["context"],
                             pad_cycle(head["defaults"]))
            # the GGUF carries the model's generation_config: both back ends decode alike
            return cls(folder, tok, den, ids, torch.device("cpu"), "llamacpp", label,
                       defaults=head["defaults"] if folder.suffix == ".gguf" else None)
        loaded = load_model(folder, device, dtype)
        base = base_folder(folder)  # a LoRA adapter uses its base's tokenizer and defaults
        tok = DreamTokenizer.from_folder(base)
        cfg = loaded.config
        gen_config = model_generation_config(folder)
        ids = SpecialIds(cfg.mask_token_id, cfg.eos_token_id, cfg.pad_token_id,
                         cfg.max_position_embeddings, pad_cycle(gen_config))
        defaults = known_defaults(gen_config)
        return cls(folder, tok, TorchDenoiser(loaded), ids, loaded.device, "torch",
                   str(loaded.dtype).replace("torch.", ""), defaults=defaults)

    def settings(self, **overrides) -> "GenerationSettings":
        """The one place generation settings are built: dataclass defaults, then the model's
        generation_config, then ``overrides`` (None means "not given"; ``block_length=0`` means
        one block, Dream's own order, overriding a model that asks for blocks)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = set(given) - {f for f in GenerationSettings.__dataclass_fields__}
        if unknown:
            raise ConfigError(f"unknown generation setting(s) {sorted(unknown)}")
        merged = {**self.defaults, **given}
        if merged.get("block_length") == 0:
            merged["block_length"] = None
        return GenerationSettings(**merged)

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

    @cached_property
    def parent_folder(self) -> Path | None:
        """Where the parent loads from: the nearest ``parent/`` adapter of the model's chain (a
        parent taught the user's repository, ``unmask train personalize --parent-minutes``),
        else the base under the LoRA adapters; None for a model that is no adapter and has no
        ``parent/``, or a back end other than torch. Found once: every rerank asks for it."""
        if self.backend != "torch":
            return None
        chain = adapter_chain(self.folder)
        for part in chain:
            if is_adapter(part / "parent"):
                return part / "parent"
        return chain[-1] if len(chain) > 1 else None

    @property
    def parent(self):
        """The adapted model's autoregressive parent (``parent_folder``, loaded on first use,
        on the model's device and dtype); None where there is none."""
        folder = self.parent_folder
        if folder is None:
            return None
        with self._parent_lock:  # requests on several threads ask at once
            if self._parent is None:
                self._parent = load_model(folder, str(self.device), self.dtype)
        return self._parent.model

    # -- prompt building -------------------------------------------------------------------
    def _room(self, n_canvas: int) -> int:
        """Tokens left for the prompt next to a canvas of ``n_canvas`` (one for the start)."""
        room = self.context - n_canvas - 1
        if room < 1:
            raise ConfigError(f"{n_canvas} new tokens do not fit the model's context of "
                              f"{self.context}; lower --max-new-tokens")
        return room

    def _check_fits(self, n_prompt: int, n_canvas: int) -> None:
        if n_prompt + n_canvas > self.context:
            raise ConfigError(f"the prompt is {n_prompt} tokens; with {n_canvas} new tokens it "
                              f"exceeds the model's context of {self.context}; shorten it or "
                              "lower --max-new-tokens")

    def _start(self, ids: list[int]) -> list[int]:
        # Position 0 is never predicted (the shift reuses its own logits): give it a real token.
        return ids if ids else [self.eos_id]

    def infill_prompt(self, prefix: str, suffix: str, n_canvas: int, context: str = ""
                      ) -> tuple[list[int], list[int], str | None]:
        """Token ids before and after a canvas of ``n_canvas`` slots, exactly as an infill
        builds them (cut to the context, a real first token), and the windowing note if any."""
        pre, suf, note = infill_ids(self.tokenizer, prefix, suffix, context,
                                    self._room(n_canvas))
        return self._start(pre), suf, note

    # -- streams -----------------------------------------------------------------------------
    def generate_stream(self, prompt: str, settings: GenerationSettings,
                        raw: bool = False) -> Iterator[Frame | Completion]:
        """Whole-function / free generation: prompt followed by ``max_new_tokens`` masks.
        Code (``raw``, or a model that is not an instruct model) is an infill with a blank
        suffix: its boundary is healed as any hole's (a prompt ending after a newline, as
        HumanEval's do, is out of distribution for a tokenizer that merges newlines with the
        indentation after them) and the parent's rerank judges it as a function."""
        chat = settings.chat if settings.chat is not None else self.is_instruct
        if raw or not chat:
            yield from self.infill_stream(prompt, "", replace(settings, length="fixed"))
            return
        template = len(self.tokenizer.encode_chat(""))
        prompt, note = fit_prompt(prompt, self.tokenizer,
                                  self._room(settings.max_new_tokens) - template)
        ids = self._start(self.tokenizer.encode_chat(prompt))
        self._check_fits(len(ids), settings.max_new_tokens)
        yield from self._run(ids, settings.max_new_tokens, [], settings, settings.steps,
                             instruct=True, extra={"note": note} if note else {})

    @staticmethod
    def alternatives(settings: GenerationSettings) -> list[GenerationSettings]:
        """The decodings tried after a rejected answer, in order (``settings.retries`` of them):
        strictly left to right (one slot per pass, Dream's entropy rule within a one-slot
        block), whose errors differ from a parallel order's; then a sample at temperature 0.6
        with the next seed."""
        left_to_right = replace(settings, alg="entropy", block_length=1)
        sampled = replace(settings, temperature=max(settings.temperature, 0.6),
                          seed=settings.seed + 1)
        return [left_to_right, sampled][:settings.retries]

    def infill_stream(self, prefix: str, suffix: str, settings: GenerationSettings,
                      context: str = "", accept=None) -> Iterator[Frame | Completion]:
        """Fill the hole between ``prefix`` and ``suffix``; ``context`` (repository chunks from
        ``engine.repo``) goes before the prefix.

        ``accept(text) -> bool``, from a caller that can judge an answer (one holding the whole
        file, ``engine.syntax_guard``): a rejected answer is decoded again with each of
        ``alternatives(settings)`` in turn, and the first accepted answer is the completion
        (the first answer when none is; ``extra["accepted"]`` says which). Every try streams
        its frames; ``extra`` counts the tries, and the time and forward passes are those of
        all of them."""
        started = time.perf_counter()
        first, passes = None, 0
        tries = [settings] + (self.alternatives(settings) if accept is not None else [])
        for n, attempt in enumerate(tries, 1):
            for item in self._infill_once(prefix, suffix, attempt, context):
                if isinstance(item, Completion):
                    break
                yield item
            passes += item.extra.get("forward_passes", 0)
            first = item if first is None else first
            ok = accept is None or accept(item.completion)
            if ok or n == len(tries):
                best = item if ok else first
                if accept is not None:
                    best.extra.update(tries=n, accepted=ok, forward_passes=passes)
                    best.elapsed_s = time.perf_counter() - started
                yield self.reranked(best, prefix, suffix, settings, context, accept)
                return

    def reranked(self, done: Completion, prefix: str, suffix: str,
                 settings: GenerationSettings, context: str = "", accept=None) -> Completion:
        """``done``, the diffusion answer of this hole, or a likelier answer by the parent
        (``settings.parent_branches``): ``engine.rerank``. A single-line request compares
        lines; a block request compares every length of each answer, judged by the code after
        it; before a blank suffix (a function) whole answers, per token. With ``accept``, an
        answer it rejects is never chosen over one it takes. ``extra["rerank"]`` says which
        source won, out of how many; the time spent is added to ``elapsed_s``."""
        started = time.perf_counter() - done.elapsed_s
        single = "\n" in settings.stop
        if not settings.parent_branches or self.parent is None:
            return done
        heal = plan_healing(self.tokenizer, prefix, suffix)
        # what follows the answer in the file, as the diffusion answer of the hole would end
        sep = ("\n" if heal.newline_to_suffix else "") if single else \
            line_separator(prefix, suffix)
        prompt = self.infill_prompt(prefix, "", settings.max_new_tokens, context)[0]
        kind = request_kind(single, suffix)
        examples = prompt_examples(prefix) if settings.check_examples and not single else ""
        ranked = rerank(self.parent, self.tokenizer, prompt, prefix, suffix, heal,
                        done.completion, settings.parent_branches, settings.rerank_suffix_lines,
                        settings.max_new_tokens, set(self.end_ids), kind, bool(examples))
        if not ranked:  # a blank answer and no parent answer: nothing to choose from
            return done
        extra = {**done.extra, "rerank": {"candidates": len(ranked)}}
        if accept is not None:
            taken = [c for c in ranked if accept(c.text + sep)]
            ranked, extra["accepted"] = taken or ranked, bool(taken)
        if examples:
            ranked = self.by_examples(ranked, prefix, sep, extra["rerank"], examples)
        best = ranked[0]
        extra["rerank"]["source"] = best.source
        kept = first_line(done.completion) if single else done.completion.rstrip("\n")
        if best.text == kept:  # the diffusion answer as it was
            done.extra, done.elapsed_s = extra, time.perf_counter() - started
            return done
        ids = self.tokenizer.encode(best.text + sep)
        return Completion(best.text + sep, ids, list(range(len(ids))), done.steps,
                          done.canvas_len, time.perf_counter() - started, done.prompt_tokens,
                          extra)

    @staticmethod
    def by_examples(ranked: list[Candidate], prefix: str, sep: str, record: dict,
                    examples: str) -> list[Candidate]:
        """``ranked`` with the candidates that pass the docstring's ``examples``
        (``engine.examples.prompt_examples``) first, each part in its order (unchanged when
        there are none). ``record`` (``extra["rerank"]``) gets how many passed, and
        ``unchecked``, the answer the parent alone would have given, when the examples changed
        it."""
        if not examples:
            return ranked
        passing = [c for c in ranked if passes_examples(prefix, c.text + sep, examples)]
        record["examples_passed"] = len(passing)
        if passing and passing[0] != ranked[0]:
            record["unchecked"] = ranked[0].text + sep
        return passing + [c for c in ranked if c not in passing]

    def _infill_once(self, prefix: str, suffix: str, settings: GenerationSettings,
                     context: str) -> Iterator[Frame | Completion]:
        started = time.perf_counter()  # the probe's pass counts towards latency
        pre, suf, note = self.infill_prompt(prefix, suffix, settings.max_new_tokens, context)
        self._check_fits(len(pre) + len(suf), settings.max_new_tokens)
        canvas, steps, extra = settings.max_new_tokens, settings.steps, {}
        if settings.length == "adaptive":
            canvas, extra = self.probe_length(pre, suf, settings.max_new_tokens,
                                              settings.reuse_context)
            steps = max(1, math.ceil(settings.steps * canvas / settings.max_new_tokens))
        if note:
            extra["note"] = note
        # the scope's cut is known before the canvas is done: stop there (same text, fewer passes)
        cut_known = (lambda start: scope_settled(start, prefix, suffix)) \
            if settings.limit_scope else None
        for item in self._run(pre, canvas, suf, settings, steps, extra=extra, started=started,
                              heal=plan_healing(self.tokenizer, prefix, suffix),
                              done=cut_known):
            if isinstance(item, Completion) and settings.limit_scope:
                self.cut_to_scope(item, prefix, suffix)
            yield item

    def cut_to_scope(self, item: "Completion", prefix: str, suffix: str) -> None:
        """``limit_scope``: ``item`` ends where its text leaves the hole's scope or repeats the
        suffix (``engine.scope``); the characters cut go to ``extra["scope_cut_chars"]``."""
        cut = limit_scope(item.completion, prefix, suffix, self.ran_out(item.token_ids))
        if cut != item.completion:
            item.extra["scope_cut_chars"] = len(item.completion) - len(cut)
            item.completion = cut

    def probe_length(self, pre: list[int], suf: list[int], max_new: int,
                     reuse: bool = False) -> tuple[int, dict]:
        """Expected hole length from one forward pass over a full canvas: the sum over slots of
        P(not pad/eos), plus a safety margin (too short is fatal, too long only costs steps).
        ``reuse``: the pass starts from the previous request's keys (``engine.reuse``)."""
        x = torch.tensor([pre + [self.mask_id] * max_new + suf], dtype=torch.long,
                         device=self.device)
        extra: dict = {}
        if reuse and self.reuse is not None:
            logits, _, extra["reused_positions"] = self.reuse.full_pass(
                x, predicting_positions(x == self.mask_id), len(pre) - 1)
        else:
            logits = masked_logits(self.denoiser, x, x == self.mask_id)  # (N, V)
        probs = torch.softmax(logits.float(), dim=-1)  # (N, V)
        # a set: Dream Base models pad with eos, and P(eos) must not count twice
        ends = sorted(self.end_ids)
        p_end = probs[:, ends].sum(-1)  # (N,)
        expected = float((1 - p_end).sum())
        canvas = min(max_new, max(4, math.ceil(expected * 1.5) + 4))
        return canvas, {"expected_len": round(expected, 2), "probe_canvas": canvas, **extra}

    def _run(self, pre: list[int], n_canvas: int, suf: list[int], settings: GenerationSettings,
             steps: int, instruct: bool = False, extra: dict | None = None,
             started: float | None = None, heal: Healing = NO_HEALING, done=None):
        """Denoise ``n_canvas`` slots between ``pre`` and ``suf``, yielding every step's
        ``Frame`` and then the ``Completion``. ``done(text) -> bool``: whether the committed
        start of the canvas (healed text) already holds all of the answer the caller keeps, so
        the rest need not be decoded."""
        start = started or time.perf_counter()
        extra = dict(extra or {})
        passes = planned_steps(n_canvas, steps, settings.block_length)
        # a note only where the caller's own step count changes: an adaptive canvas scales the
        # steps itself, and saying so on every completion says nothing the user can act on
        if passes != steps and settings.alg not in PARALLEL_ALGORITHMS \
                and steps == settings.steps:
            why = "one per block at least" if passes > steps else "one per slot at most"
            extra["note"] = "; ".join(filter(None, [extra.get("note"), (
                f"{passes} denoising steps instead of {steps} ({why}, with blocks of "
                f"{settings.block_length} over {n_canvas} slots)")]))
        x = torch.tensor([pre + [self.mask_id] * n_canvas + suf], dtype=torch.long,
                         device=self.device)
        gen = torch.Generator(device=self.device if self.device.type != "mps" else "cpu")
        gen.manual_seed(settings.seed)
        lo, hi = len(pre), len(pre) + n_canvas
        order = [-1] * n_canvas
        steps_done, settled = 0, 0
        denoiser, first_token_s, paused = self.denoiser, None, 0.0
        if settings.cache_refresh and isinstance(denoiser, TorchDenoiser):
            denoiser = CachedDenoiser(denoiser.loaded, (max(lo - 1, 0), hi),
                                      settings.cache_refresh,
                                      self.reuse if settings.reuse_context else None)
        for st in denoise(denoiser, x, self.mask_id, settings.sampler(steps), gen):
            newly = st.decoded[0, lo:hi].nonzero(as_tuple=True)[0].tolist()
            for j in newly:
                order[j] = st.step
            if first_token_s is None and order[0] >= 0:  # the first slot: text can show
                first_token_s = time.perf_counter() - start - paused
            steps_done = st.step + 1
            canvas = st.x[0, lo:hi].tolist()
            handed = time.perf_counter()
            yield Frame(st.step, st.steps, canvas, list(order), newly)
            # the consumer's time (a UI rendering each frame) is not the engine's
            paused += time.perf_counter() - handed
            if settings.stop or settings.stop_loops or done is not None:
                left = self.settled(canvas)
                if len(left) > settled and self._stops(left, settings, instruct, heal, done):
                    break
                settled = len(left)
        canvas_ids = x[0, lo:hi].tolist()
        text = self.text_of(canvas_ids, settings, instruct, extra, heal)
        if isinstance(denoiser, CachedDenoiser) and denoiser.reuse is not None:
            extra["reused_positions"] = extra.get("reused_positions", 0) + denoiser.reused
        extra["forward_passes"] = steps_done + int("expected_len" in extra)  # + the probe
        extra["first_token_s"] = round(first_token_s, 4) if first_token_s is not None else None
        yield Completion(text, canvas_ids, order, steps_done, n_canvas,
                         time.perf_counter() - start - paused, len(pre) + len(suf), extra)

    def settled(self, canvas: list[int]) -> list[int]:
        """The canvas left of its first still-masked slot: what can no longer change order."""
        return canvas[:canvas.index(self.mask_id)] if self.mask_id in canvas else canvas

    def _stops(self, settled: list[int], settings: GenerationSettings, instruct: bool,
               heal: Healing = NO_HEALING, done=None) -> bool:
        ends = self.end_ids | ({self.im_end_id} if instruct else set())
        if ends & set(settled):
            return True
        text = heal.completion(self.tokenizer.decode(self.trim(settled, instruct)), final=False)
        return any(s in text for s in settings.stop) or (
            settings.stop_loops and find_loop(text) is not None) or (
            done is not None and done(text))

    def text_of(self, canvas: list[int], settings: GenerationSettings, instruct: bool,
                extra: dict, heal: Healing = NO_HEALING) -> str:
        """The completion's text (healed back to the user's cut, ``engine.healing``); with
        ``stop_loops`` cut after a loop's first copy (the number of characters cut goes to
        ``extra["loop_cut_chars"]``)."""
        text = heal.completion(self.tokenizer.decode(self.trim(canvas, instruct)))
        if settings.stop_loops and (cut := cut_loop(text)) != text:
            extra["loop_cut_chars"] = len(text) - len(cut)
            return cut
        return text

    def trim(self, ids: list[int], instruct: bool = False) -> list[int]:
        """The completion's tokens: everything before the first eos, pad (and <|im_end|> for
        chat), as upstream Dream / DiffuCoder cut, or before the first slot still masked after an
        early stop; a token committed right of such a gap belongs to no contiguous text."""
        ends = set(self.end_ids) | {self.mask_id}
        if instruct and self.im_end_id is not None:
            ends.add(self.im_end_id)
        for n, i in enumerate(ids):
            if i in ends:
                return ids[:n]
        return list(ids)

    def ran_out(self, canvas: list[int]) -> bool:
        """The canvas holds no end token and no masked slot: its text stops where the canvas
        did, likely mid-statement."""
        return len(self.trim(canvas)) == len(canvas)

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
               context: str = "", accept=None, **overrides) -> Completion:
        settings = replace(settings, **overrides) if settings else self.settings(**overrides)
        return self.finish(self.infill_stream(prefix, suffix, settings, context, accept))

    def generate(self, prompt: str, settings: GenerationSettings | None = None, raw: bool = False,
                 **overrides) -> Completion:
        settings = replace(settings, **overrides) if settings else self.settings(**overrides)
        return self.finish(self.generate_stream(prompt, settings, raw))
