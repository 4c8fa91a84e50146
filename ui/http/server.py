"""``unmask serve``: llama.cpp's ``/infill`` and OpenAI's ``/v1`` over a diffusion code model.

Editor plugins that speak HTTP (llama.vim and llama.vscode call ``/infill``; Continue and most
scripts call ``/v1/completions`` with ``suffix`` for fill-in-the-middle) work unchanged. Routes
only validate and submit to ``assistant.scheduler.Scheduler`` (one queue, batched denoising,
cancellation when the client goes away). ``/v1/denoise`` streams the whole canvas at every step
for live front ends. Loopback by default; any other interface needs ``--api-key``.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
import logging
import time
import uuid

from assistant.completion import EngineHolder
from assistant.scheduler import QueueFull, Scheduler, Ticket
from assistant.settings import AssistantSettings
from engine.api import Completion, GenerationSettings
from engine.choices import MAX_PARENT_BRANCHES
from engine.errors import ConfigError, UnmaskError
from engine.healing import plan_healing
from engine.scope import limit_scope
from ui.http.requests import BadRequest, InfillRequest, parse_chat, parse_completion, \
    parse_infill, select_fields

log = logging.getLogger("unmask.serve")
MAX_BODY = 1 << 20
REQUEST_TIMEOUT_S = 300.0


def error(status: int, message: str, kind: str = "invalid_request_error", code=None,
          headers=None):
    from starlette.responses import JSONResponse

    return JSONResponse({"error": {"message": message, "type": kind, "code": code}},
                        status_code=status, headers=headers)


class Server:
    """The app's state: the engine holder, the scheduler and the limits."""

    def __init__(self, holder: EngineHolder, api_key: str | None, scheduler: Scheduler,
                 parent_branches: int = 0) -> None:
        self.holder, self.api_key, self.scheduler = holder, api_key, scheduler
        self.parent_branches = parent_branches
        """``--parent-branches``: the parent's rerank of non-streamed infill answers; 0 (the
        default, as in the editors: llama.vim asks as you type) leaves them as decoded."""

    @property
    def engine(self):
        return self.holder.engine

    def model_id(self) -> str:
        return self.engine.name if self.engine is not None else "unmask"

    async def body(self, request) -> dict:
        raw = await request.body()
        if len(raw) > MAX_BODY:
            raise BadRequest(f"the request body is {len(raw)} bytes; the limit is {MAX_BODY}",
                             413)
        try:
            data = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadRequest(f"the body is not valid JSON ({getattr(err, 'msg', err)})")
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object")
        return data

    def authorized(self, request) -> bool:
        if not self.api_key:
            return True
        auth = request.headers.get("authorization", "")
        given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key")
        return given == self.api_key

    def ticket(self, req: InfillRequest) -> Ticket:
        engine = self.engine
        if engine is None:
            raise BadRequest(f"the model is {self.holder.status}; retry shortly", 503)
        if req.model and req.model not in (engine.name, "unmask", str(engine.folder)):
            raise BadRequest(f"model {req.model!r} is not served here; GET /v1/models lists "
                             f"{engine.name!r}", 404, "model_not_found")
        # the model's defaults under the request's; the rerank is the server's choice
        settings = engine.settings(**{**req.settings, "parent_branches": self.parent_branches,
                                      "limit_scope": req.scoped})
        context = req.context(engine)
        return Ticket(req.prefix, req.suffix, context, settings, chat=req.chat,
                      rerank=not req.stream and not req.chat)

    def submit(self, ticket: Ticket) -> Ticket:
        try:
            return self.scheduler.submit(ticket)
        except QueueFull:
            raise BadRequest("the server is busy (queue full); retry shortly", 503)


async def events(ticket: Ticket, request):
    """The ticket's events as they come; stops (cancelling the ticket) when the client leaves."""
    deadline = time.perf_counter() + REQUEST_TIMEOUT_S
    last_check = 0.0
    try:
        while True:
            try:
                item = ticket.events.get_nowait()
            except Exception:  # queue.Empty
                now = time.perf_counter()
                if now > deadline:
                    yield ("error", f"no answer within {REQUEST_TIMEOUT_S:.0f} s")
                    return
                if now - last_check > 0.05:
                    last_check = now
                    if await request.is_disconnected():
                        return
                await asyncio.sleep(0.003)
                continue
            yield item
            if item[0] in ("done", "error"):
                return
    finally:
        ticket.cancelled.set()  # no-op when done; a departed client stops its row


async def finished(ticket: Ticket, request):
    """The final event of a non-streaming request (None when the client left)."""
    last = None
    async for item in events(ticket, request):
        last = item
    return last


def settled_text(engine, canvas: list[int], req: InfillRequest) -> str:
    """The text of the canvas left of its first still-masked slot (what can be shown), moved
    back to the user's cut as the final completion is (``engine.healing``). A scoped request
    shows whole lines only, cut as its final answer will be (``engine.scope`` reads complete
    lines only), so what was streamed is always the start of the final answer."""
    heal = plan_healing(engine.tokenizer, req.prefix, req.suffix)
    text = heal.completion(engine.tokenizer.decode(engine.trim(engine.settled(canvas))),
                           final=False)
    if not req.scoped:
        return text
    return limit_scope(text[:text.rfind("\n") + 1], req.prefix, req.suffix)


def infill_body(engine, completion, req: InfillRequest, started: float) -> dict:
    """llama.cpp's /infill answer. Its timings split prompt processing from generation; a
    diffusion model reads the prompt in every pass, so ``predicted_ms`` is the engine's whole
    denoising time and ``prompt_ms`` what the request spent around it (queue, tokenizing)."""
    text = req.cut(completion.completion)
    total_ms = (time.perf_counter() - started) * 1000
    prompt_n = completion.prompt_tokens
    if not text:
        predicted_n = 0
    elif text == completion.completion:  # the tokens the model wrote, before the first end
        predicted_n = len(engine.trim(completion.token_ids))
    else:  # cut at a client stop string
        predicted_n = len(engine.tokenizer.encode(text))
    predicted_ms = completion.elapsed_s * 1000
    prompt_ms = max(total_ms - predicted_ms, 0.0)
    extra = completion.extra
    return {"content": text, "stop": True, "model": engine.name,
            "tokens_predicted": predicted_n, "tokens_evaluated": prompt_n, "tokens_cached": 0,
            "truncated": "note" in extra,
            "timings": {"prompt_n": prompt_n, "prompt_ms": round(prompt_ms, 2),
                        "prompt_per_token_ms": round(prompt_ms / max(prompt_n, 1), 3),
                        "prompt_per_second": round(prompt_n / max(prompt_ms / 1000, 1e-6), 2),
                        "predicted_n": predicted_n, "predicted_ms": round(predicted_ms, 2),
                        "predicted_per_token_ms": round(predicted_ms / max(predicted_n, 1), 3),
                        "predicted_per_second":
                            round(predicted_n / max(predicted_ms / 1000, 1e-6), 2),
                        "total_ms": round(total_ms, 2),
                        "canvas_n": completion.canvas_len,
                        "forward_passes": extra.get("forward_passes", 0),
                        "batch": extra.get("batch", 1)}}


def completion_body(engine, completion, req: InfillRequest, chat: bool = False) -> dict:
    text = req.cut(completion.completion)
    n_out = len(engine.tokenizer.encode(text))
    choice = {"index": 0, "finish_reason": "stop" if n_out < completion.canvas_len else "length",
              "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": engine.name, "choices": [choice],
            "usage": {"prompt_tokens": completion.prompt_tokens, "completion_tokens": n_out,
                      "total_tokens": completion.prompt_tokens + n_out}}


def sse(data) -> str:
    return f"data: {json.dumps(data) if not isinstance(data, str) else data}\n\n"


def create_app(server: Server):
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    def guarded(handler):
        async def route(request):
            if not server.authorized(request):
                return error(401, "missing or wrong API key (Authorization: Bearer KEY)",
                             "authentication_error", "invalid_api_key")
            try:
                return await handler(request)
            except BadRequest as err:
                headers = {"Retry-After": "1"} if err.status == 503 else None
                return error(err.status, str(err), code=err.code, headers=headers)
            except UnmaskError as err:
                return error(400, str(err))
            except Exception as err:  # noqa: BLE001 - never crash the server
                log.exception("request failed")
                return error(500, f"internal error: {type(err).__name__}", "server_error")
        return route

    async def health(request):
        status = {"ready": "ok"}.get(server.holder.status, server.holder.status)
        return JSONResponse({"status": status, "queued": server.scheduler.queued(),
                             "stats": asdict(server.scheduler.stats),
                             **({"error": server.holder.error} if server.holder.error else {})},
                            status_code=200 if status == "ok" else 503)

    async def models(request):
        return JSONResponse({"object": "list", "data": [{
            "id": server.model_id(), "object": "model", "created": 0, "owned_by": "unmask"}]})

    async def infill(request):
        req = parse_infill(await server.body(request))
        started = time.perf_counter()
        if req.warmup:  # nothing to predict: llama.cpp only fills its cache, we have none to fill
            if server.engine is None:
                raise BadRequest(f"the model is {server.holder.status}; retry shortly", 503)
            nothing = Completion("", [], [], 0, 0, 0.0, 0)
            return JSONResponse(select_fields(infill_body(server.engine, nothing, req, started),
                                              req.fields))
        ticket = server.submit(server.ticket(req))
        engine = server.engine
        if not req.stream:
            last = await finished(ticket, request)
            return _final(last, lambda c: select_fields(infill_body(engine, c, req, started),
                                                        req.fields))

        async def chunks():
            shown = ""
            async for item in events(ticket, request):
                if item[0] == "step":
                    text = req.cut(settled_text(engine, item[3], req))
                    if len(text) > len(shown) and text.startswith(shown):
                        yield sse({"content": text[len(shown):], "stop": False})
                        shown = text
                elif item[0] == "done":
                    body = infill_body(engine, item[1], req, started)
                    yield sse({**select_fields(body, req.fields),
                               "content": body["content"][len(shown):], "stop": True})
                else:
                    yield sse({"error": {"message": item[1]}})
        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def completions(request):
        req = parse_completion(await server.body(request))
        ticket = server.submit(server.ticket(req))
        engine = server.engine
        if not req.stream:
            last = await finished(ticket, request)
            return _final(last, lambda c: completion_body(engine, c, req))

        async def chunks():
            shown, cid = "", f"cmpl-{uuid.uuid4().hex[:24]}"
            async for item in events(ticket, request):
                if item[0] == "error":
                    yield sse({"error": {"message": item[1]}})
                    return
                text = req.cut(settled_text(engine, item[3], req) if item[0] == "step"
                               else item[1].completion)
                if len(text) > len(shown) and text.startswith(shown):
                    yield sse({"id": cid, "object": "text_completion", "model": engine.name,
                               "created": int(time.time()), "choices": [{
                                   "index": 0, "text": text[len(shown):], "logprobs": None,
                                   "finish_reason": None}]})
                    shown = text
                if item[0] == "done":
                    yield sse({"id": cid, "object": "text_completion", "model": engine.name,
                               "created": int(time.time()), "choices": [{
                                   "index": 0, "text": "", "logprobs": None,
                                   "finish_reason": "stop"}]})
                    yield sse("[DONE]")
        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def chat(request):
        req = parse_chat(await server.body(request), server.engine)
        ticket = server.submit(server.ticket(req))
        engine = server.engine
        if not req.stream:
            last = await finished(ticket, request)
            return _final(last, lambda c: completion_body(engine, c, req, chat=True))

        async def chunks():
            cid = f"chatcmpl-{uuid.uuid4().hex[:24]}"
            last = await finished(ticket, request)
            if last is None:
                return
            if last[0] == "error":
                yield sse({"error": {"message": last[1]}})
                return
            text = req.cut(last[1].completion)
            for delta, reason in (({"role": "assistant", "content": text}, None), ({}, "stop")):
                yield sse({"id": cid, "object": "chat.completion.chunk", "model": engine.name,
                           "created": int(time.time()),
                           "choices": [{"index": 0, "delta": delta, "finish_reason": reason}]})
            yield sse("[DONE]")
        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def denoise_stream(request):
        req = parse_infill(await server.body(request))
        ticket = server.submit(server.ticket(req))
        engine = server.engine

        async def frames():
            async for item in events(ticket, request):
                if item[0] == "step":
                    yield sse({"step": item[1], "steps": item[2], "canvas": [
                        None if t == engine.mask_id else engine.tokenizer.decode([t])
                        for t in item[3]]})
                elif item[0] == "done":
                    yield sse({"done": True, "content": req.cut(item[1].completion),
                               "forward_passes": item[1].extra.get("forward_passes")})
                else:
                    yield sse({"error": {"message": item[1]}})
        return StreamingResponse(frames(), media_type="text/event-stream")

    routes = [Route("/health", guarded(health), methods=["GET"]),
              Route("/v1/models", guarded(models), methods=["GET"]),
              Route("/infill", guarded(infill), methods=["POST"]),
              Route("/v1/completions", guarded(completions), methods=["POST"]),
              Route("/v1/chat/completions", guarded(chat), methods=["POST"]),
              Route("/v1/denoise", guarded(denoise_stream), methods=["POST"])]
    return Starlette(routes=routes)


def _final(last, body):
    from starlette.responses import JSONResponse

    if last is None:
        return JSONResponse({}, status_code=499)  # the client left; nobody reads this
    if last[0] == "error":
        status = 504 if last[1].startswith("no answer within") else 500
        return error(status, last[1], "server_error")
    return JSONResponse(body(last[1]))


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="unmask serve")
    ap.add_argument("--host", default="127.0.0.1", help="interface (default: loopback only)")
    ap.add_argument("--port", type=int, default=8012, help="port (llama.vim's default: 8012)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    ap.add_argument("--api-key", default=None, help="required as Bearer token when given")
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-queue", type=int, default=64)
    ap.add_argument("--batching", choices=["auto", "on", "off"], default="auto",
                    help="denoise concurrent requests in one batch; auto = on a GPU only "
                         "(on a 2-core CPU a batch is compute-bound and slower, see README)")
    ap.add_argument("--parent-branches", type=int, default=0,
                    help="an adapted model's parent writes N answers too and the likeliest "
                         "with the suffix is returned, for requests that do not stream "
                         f"(engine.rerank; 0 = off, the default: it adds seconds; at most "
                         f"{MAX_PARENT_BRANCHES})")
    args = ap.parse_args(argv)
    try:
        GenerationSettings(parent_branches=args.parent_branches)  # its check of the flag
    except ConfigError as err:
        sys.stderr.write(f"unmask: error: {err}\n")
        return 2
    if args.host not in LOOPBACK and not args.api_key:
        sys.stderr.write(f"unmask: error: --host {args.host} exposes the model beyond this "
                         "machine; add --api-key KEY (or keep the default 127.0.0.1)\n")
        return 2
    logging.basicConfig(level="INFO", format="%(asctime)s %(name)s %(levelname)s %(message)s")
    holder = EngineHolder(AssistantSettings(model=args.model, device=args.device,
                                            dtype=args.dtype))
    holder.start()
    import torch

    batching = args.batching == "on" or (args.batching == "auto" and torch.cuda.is_available())
    scheduler = Scheduler(lambda: holder.engine, args.max_batch, args.max_queue,
                          batching=batching)
    app = create_app(Server(holder, args.api_key, scheduler, args.parent_branches))
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                limit_concurrency=256, timeout_keep_alive=30)
    return 0
