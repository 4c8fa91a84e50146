"""Request validation for ``unmask serve``: llama.cpp ``/infill`` and OpenAI ``/v1`` fields.

Every malformed field is one 400 with a message naming it. Fields that only make sense for
autoregressive servers (``cache_prompt``, ``samplers``, ``t_max_*``, ``n_indent``, ``id_slot``)
are accepted and ignored, so llama.vim's requests work as sent; its ``n_predict: 0`` warm-ups
get an empty answer at once and ``response_fields`` filters the answer as llama.cpp does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_NEW_TOKENS = 512
MAX_TEXT = 400_000


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.code = status, code


@dataclass
class InfillRequest:
    prefix: str
    suffix: str
    settings: dict
    stream: bool = False
    model: str | None = None
    stops: tuple[str, ...] = ()
    extra: list[tuple[str, str]] = field(default_factory=list)
    chat: bool = False
    fields: tuple[str, ...] = ()
    """llama.cpp's ``response_fields``: only these (``a/b`` unnested to the top level)."""
    warmup: bool = False
    """``n_predict: 0``: llama.vim's cache-filling request; answered at once, nothing decoded."""
    scoped: bool = False
    """A fill-in-the-middle request (``/infill``; ``/v1/completions`` with a suffix): its answer
    ends where it leaves the block it was asked in or repeats the suffix (``engine.scope``, as
    the editors' block requests), not where the canvas ran out in the next function."""

    def cut(self, text: str) -> str:
        """The text up to the first client stop string."""
        for s in self.stops:
            i = text.find(s)
            if i != -1:
                text = text[:i]
        return text

    def context(self, engine) -> str:
        """``input_extra`` chunks as repository context (``# filename`` then the text), whole
        chunks within the engine's context budget, as ``engine.repo`` formats its own."""
        if not self.extra:
            return ""
        from engine.repo import context_budget

        budget, used, parts = context_budget(engine.context), 0, []
        for name, text in self.extra:
            block = f"# {name}\n{text}" + ("" if text.endswith("\n") else "\n")
            n = len(engine.tokenizer.encode(block))
            if used + n <= budget:
                parts.append(block)
                used += n
        return "".join(parts)


def _get(body: dict, key: str, kind, default=None, check=None, what: str = ""):
    value = body.get(key, default)
    if value is None:
        return default
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise BadRequest(f"field {key!r} must be {what or kind.__name__}")
    if check is not None and not check(value):
        raise BadRequest(f"field {key!r} is out of range: {what}")
    return value


def _text(body: dict, key: str) -> str:
    value = _get(body, key, str, "", what="a string")
    if len(value) > MAX_TEXT:
        raise BadRequest(f"field {key!r} is {len(value)} characters; the limit is {MAX_TEXT}",
                         413)
    return value


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,) if stop else ()
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 16:
        return tuple(s for s in stop if s)
    raise BadRequest("field 'stop' must be a string or a list of at most 16 strings")


def _sampling(body: dict, tokens_key: str, default_tokens: int, least: int = 1
              ) -> tuple[dict, tuple[str, ...]]:
    """Engine settings from the request's sampling fields, and its stop strings (which also end
    denoising early once they are settled)."""
    n = _get(body, tokens_key, int, default_tokens, lambda v: least <= v <= MAX_NEW_TOKENS,
             f"an integer in {least}..{MAX_NEW_TOKENS}")
    out = {"max_new_tokens": n, "steps": n, "length": "fixed",
           "temperature": _get(body, "temperature", float, None, lambda v: 0 <= v <= 5,
                               "a number in 0..5"),
           "top_p": _get(body, "top_p", float, None, lambda v: 0 < v <= 1, "a number in (0, 1]"),
           "seed": _get(body, "seed", int, 0, lambda v: v >= 0, "a non-negative integer")}
    top_k = _get(body, "top_k", int, None, lambda v: v >= 0, "a non-negative integer")
    out["top_k"] = top_k or None  # llama.cpp: 0 disables top-k
    if out["top_p"] == 1.0:
        out["top_p"] = None
    stops = _stops(body)
    if stops:
        out["stop"] = stops
    return out, stops


def parse_infill(body: dict) -> InfillRequest:
    """llama.cpp ``/infill``: input_prefix, input_suffix, input_extra, prompt, n_predict, ..."""
    extra = body.get("input_extra") or []
    if not isinstance(extra, list) or not all(
            isinstance(e, dict) and isinstance(e.get("text", ""), str)
            and isinstance(e.get("filename", ""), str) for e in extra):
        raise BadRequest("field 'input_extra' must be a list of {\"filename\", \"text\"} objects")
    # llama.cpp puts `prompt` right after the prefix: the start of the middle already typed
    prefix = _text(body, "input_prefix") + _text(body, "prompt")
    settings, stops = _sampling(body, "n_predict", 32, least=0)
    fields = body.get("response_fields") or []
    if not isinstance(fields, list) or not all(isinstance(f, str) for f in fields):
        raise BadRequest("field 'response_fields' must be a list of strings")
    return InfillRequest(prefix, _text(body, "input_suffix"), settings,
                         _get(body, "stream", bool, False, what="a boolean"),
                         _get(body, "model", str, None), stops,
                         [(e.get("filename", ""), e.get("text", "")) for e in extra],
                         fields=tuple(fields), warmup=settings["max_new_tokens"] == 0,
                         scoped=True)


def select_fields(body: dict, fields: tuple[str, ...]) -> dict:
    """llama.cpp's ``response_fields``: the named fields only; ``timings/prompt_n`` moves
    ``body["timings"]["prompt_n"]`` to the top level under that name; missing ones are left out."""
    if not fields:
        return body
    out = {}
    for name in fields:
        value = body
        for part in name.split("/"):
            if not isinstance(value, dict) or part not in value:
                break
            value = value[part]
        else:
            out[name] = value
    return out


def parse_completion(body: dict) -> InfillRequest:
    """OpenAI ``/v1/completions``: prompt (+ suffix for fill-in-the-middle), max_tokens, ..."""
    prompt = body.get("prompt", "")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("field 'prompt' must be a string (one prompt per request)")
    if len(prompt) > MAX_TEXT:
        raise BadRequest(f"field 'prompt' is {len(prompt)} characters; the limit is {MAX_TEXT}",
                         413)
    if _get(body, "n", int, 1) != 1:
        raise BadRequest("field 'n' must be 1")
    settings, stops = _sampling(body, "max_tokens", 16)
    suffix = _text(body, "suffix")
    return InfillRequest(prompt, suffix, settings,
                         _get(body, "stream", bool, False, what="a boolean"),
                         _get(body, "model", str, None), stops, scoped=bool(suffix))


def parse_chat(body: dict, engine) -> InfillRequest:
    """OpenAI ``/v1/chat/completions`` for instruct checkpoints (ChatML, DiffuCoder's format)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) for m in messages):
        raise BadRequest("field 'messages' must be a non-empty list of {role, content} objects")
    if engine is not None and not engine.is_instruct:
        raise BadRequest(f"{engine.name} is not an instruct model; use /v1/completions or "
                         "/infill, or serve an instruct checkpoint (DiffuCoder-7B-Instruct)")
    user = [m["content"] for m in messages if m.get("role") == "user"]
    if not user:
        raise BadRequest("field 'messages' has no user message")
    req = parse_completion({k: v for k, v in body.items() if k not in ("messages",)}
                           | {"prompt": user[-1]})
    req.chat = True
    return req
