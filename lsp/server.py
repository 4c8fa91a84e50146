"""``unmask lsp``: a pygls 2 language server for diffusion infilling in any LSP editor.

Features (one small function each, all model work in ``assistant.completion``):
- ``textDocument/inlineCompletion`` (LSP 3.18; registered *with* ``InlineCompletionOptions`` or
  editors never ask): ghost text from infilling at the cursor; single- or multi-line decided by
  tree-sitter; the replace range starts at the line start when the cursor is in indentation.
- ``textDocument/completion``: the same suggestion as one item, for editors without inline support.
- ``textDocument/codeAction``: "Unmask: generate body" (function with an empty / pass / ... body)
  and "Unmask: fill selection", as commands that apply one whole WorkspaceEdit when done.
Robustness: requests whose params do not parse get a -32602 answer (pygls 2.1 leaves them
unanswered); server errors are logged to stderr, never popped up; stdout carries only protocol.

Reloads: Neovim's ``:edit!`` sends ``didClose`` and then (0.12, buffer not yet loaded while its
``on_reload`` runs) no ``didOpen``, yet keeps the buffer attached and keeps asking about it and
sending ``didChange``. The document was reloaded from disk, so a closed ``file://`` document that
is still referred to is re-adopted from disk (unversioned) instead of answered empty forever.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol, lsp_method

from assistant.completion import CompletionService
from assistant.settings import AssistantSettings, load_settings
from engine.errors import UnmaskError
from lsp.uris import file_path

log = logging.getLogger("unmask.lsp")
MAX_DOCUMENT_CHARS = 2_000_000
_HANDLED = object()


class UnmaskProtocol(LanguageServerProtocol):
    """Answers every request id, even when its params cannot be structured."""

    def structure_message(self, data):
        try:
            return super().structure_message(data)
        except JsonRpcException as err:
            if isinstance(data, dict) and "id" in data and "method" in data:
                self._send_response(data["id"], None, err.to_response_error())
                return _HANDLED
            raise

    def handle_message(self, message):
        if message is _HANDLED:
            return None
        return super().handle_message(message)

    @lsp_method(types.TEXT_DOCUMENT_DID_CLOSE)
    def lsp_text_document__did_close(self, params: types.DidCloseTextDocumentParams):
        self._server.closed.add(params.text_document.uri)
        yield from super().lsp_text_document__did_close(params)

    @lsp_method(types.TEXT_DOCUMENT_DID_OPEN)
    def lsp_text_document__did_open(self, params: types.DidOpenTextDocumentParams):
        self._server.closed.discard(params.text_document.uri)
        yield from super().lsp_text_document__did_open(params)

    @lsp_method(types.TEXT_DOCUMENT_DID_CHANGE)
    def lsp_text_document__did_change(self, params: types.DidChangeTextDocumentParams):
        self._server.adopt(params.text_document.uri)  # a change to a reloaded document
        yield from super().lsp_text_document__did_change(params)


class UnmaskServer(LanguageServer):
    def __init__(self, settings: AssistantSettings) -> None:
        super().__init__("unmask", "0.1.0", protocol_cls=UnmaskProtocol)
        self.service = CompletionService(settings, self._on_status)
        self._progress_token: str | None = None
        self.closed: set[str] = set()
        """URIs the client closed; re-adopted from disk if it still refers to them."""

    def adopt(self, uri: str) -> None:
        """Take a closed document back from disk when the client still uses it (see above)."""
        if uri not in self.closed or uri in self.workspace.text_documents:
            return
        from pathlib import Path

        from pygls.uris import to_fs_path

        path = to_fs_path(uri)
        try:
            text = Path(path).read_text(encoding="utf-8") if path else None
        except (OSError, UnicodeDecodeError) as err:
            log.info("cannot re-adopt %s: %s", uri, err)
            return
        if text is None:
            return
        self.closed.discard(uri)
        self.workspace.put_text_document(types.TextDocumentItem(
            uri=uri, language_id="python", version=0, text=text))
        # unversioned until the client's next didChange: its own version is unknown here
        self.workspace.get_text_document(uri).version = None
        log.info("re-adopted %s from disk (closed by the client, still in use)", uri)

    def report_server_error(self, error, source):
        log.error("server error (%s): %s", getattr(source, "__name__", source), error)

    def _on_status(self, status: str, detail: str) -> None:
        """Model loading shown as window/workDoneProgress (called from the loading thread)."""
        loop = getattr(self, "_loop", None)
        if loop is None:
            return
        loop.call_soon_threadsafe(self._report_progress, status, detail)

    def _report_progress(self, status: str, detail: str) -> None:
        try:
            if status == "loading":
                token = self._progress_token = f"unmask-load-{uuid.uuid4().hex[:8]}"
                self.work_done_progress.create(token)
                self.work_done_progress.begin(token, types.WorkDoneProgressBegin(
                    title="Unmask", message=f"loading {detail}", cancellable=False))
            elif self._progress_token:
                self.work_done_progress.end(self._progress_token, types.WorkDoneProgressEnd(
                    message=f"ready: {detail}" if status == "ready" else f"failed: {detail}"))
                self._progress_token = None
        except Exception as err:  # noqa: BLE001 - a client without progress support
            log.info("progress not shown: %s", err)

    def document(self, uri: str):
        """The open document, or None for unknown / huge ones (answered empty, fast)."""
        self.adopt(uri)
        doc = self.workspace.text_documents.get(uri)
        if doc is None or len(doc.source) > MAX_DOCUMENT_CHARS:
            return None
        return doc


def create_server(settings: AssistantSettings | None = None) -> UnmaskServer:
    server = UnmaskServer(settings or AssistantSettings())

    @server.feature(types.INITIALIZED)
    def initialized(ls: UnmaskServer, params):
        ls._loop = asyncio.get_running_loop()
        ls.service.start()
        ls.service.repo.start(workspace_roots(ls))  # background: completions never wait

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE)
    def did_save(ls: UnmaskServer, params: types.DidSaveTextDocumentParams):
        path = file_path(params.text_document.uri)
        if path is not None:
            ls.service.repo.saved(path)

    @server.feature(types.INITIALIZE)
    def initialize(ls: UnmaskServer, params: types.InitializeParams):
        try:
            ls.service.settings = ls.service.holder.settings = \
                ls.service.settings.updated(params.initialization_options or None)
        except UnmaskError as err:
            log.warning("ignoring initializationOptions: %s", err)

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    def did_change_configuration(ls: UnmaskServer, params):
        raw = params.settings.get("unmask", params.settings) if isinstance(params.settings, dict) \
            else None
        try:
            ls.service.reconfigure(ls.service.settings.updated(raw))
        except UnmaskError as err:
            ls.window_show_message(types.ShowMessageParams(types.MessageType.Warning,
                                                           f"Unmask: {err}"))

    @server.feature(types.TEXT_DOCUMENT_INLINE_COMPLETION, types.InlineCompletionOptions())
    async def inline_completion(ls: UnmaskServer, params: types.InlineCompletionParams):
        found = await suggest(ls, params.text_document.uri, params.position)
        if found is None:
            return types.InlineCompletionList(items=[])
        text, rng = found
        return types.InlineCompletionList(items=[types.InlineCompletionItem(
            insert_text=text, range=rng, filter_text=text)])

    @server.feature(types.TEXT_DOCUMENT_COMPLETION,
                    types.CompletionOptions(trigger_characters=[".", "(", " "]))
    async def completion(ls: UnmaskServer, params: types.CompletionParams):
        found = await suggest(ls, params.text_document.uri, params.position)
        if found is None:
            return types.CompletionList(is_incomplete=True, items=[])
        text, rng = found
        label = text.strip().splitlines()[0] if text.strip() else text
        return types.CompletionList(is_incomplete=True, items=[types.CompletionItem(
            label=label[:60], kind=types.CompletionItemKind.Snippet, detail="Unmask",
            text_edit=types.TextEdit(range=rng, new_text=text), filter_text=text)])

    @server.feature(types.TEXT_DOCUMENT_CODE_ACTION, types.CodeActionOptions(
        code_action_kinds=[types.CodeActionKind.RefactorRewrite]))
    def code_action(ls: UnmaskServer, params: types.CodeActionParams):
        from lsp.actions import code_actions

        doc = ls.document(params.text_document.uri)
        return [] if doc is None else code_actions(doc, params.range)

    @server.command("unmask.generateBody")
    async def generate_body(ls: UnmaskServer, *args):
        from lsp.actions import run_generate_body

        return await run_generate_body(ls, args)

    @server.command("unmask.fillSelection")
    async def fill_selection(ls: UnmaskServer, *args):
        from lsp.actions import run_fill_selection

        return await run_fill_selection(ls, args)

    @server.feature("unmask/stats")
    def stats(ls: UnmaskServer, params):
        from dataclasses import asdict

        return {**asdict(ls.service.stats), "status": ls.service.holder.status}

    return server


async def suggest(ls: UnmaskServer, uri: str, position: types.Position):
    """Run an infill at ``position``; None when there is nothing to show."""
    from assistant.syntax import completion_mode

    doc = ls.document(uri)
    if doc is None:
        return None
    if ls.service.holder.engine is None:
        ls.service.stats.not_ready += 1
        return None
    try:
        offset = doc.offset_at_position(position)
        mode = completion_mode(doc.source, position.line,
                               doc.position_from_client_units(position).character)
        window = ls.service.window(doc.source, offset, mode)
    except (UnmaskError, IndexError, ValueError) as err:
        log.warning("no suggestion: %s", err)
        return None
    job = ls.service.new_job(uri)
    future = ls.service.submit(job, ls.service.infill, window, mode, file_path(uri), doc.source)
    try:
        text = await asyncio.wrap_future(future)
    except asyncio.CancelledError:
        job.cancel.set()  # $/cancelRequest: stop the denoising loop at the next step
        raise
    if not text or not text.strip():
        return None
    start = doc.client_position_at_offset(window.replace_from)
    return text, types.Range(start=start, end=position)


def workspace_roots(ls: UnmaskServer) -> list:
    """The workspace folders (or the root URI) as local paths."""
    uris = [f.uri for f in ls.workspace.folders.values()] or \
        ([ls.workspace.root_uri] if ls.workspace.root_uri else [])
    return [p for p in (file_path(u) for u in uris) if p is not None and p.is_dir()]


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="unmask lsp")
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default=None)
    ap.add_argument("--log-file", default=None, help="log here instead of stderr")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    handler = logging.FileHandler(args.log_file) if args.log_file else \
        logging.StreamHandler(sys.stderr)
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler],
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        settings = load_settings()
    except UnmaskError as err:
        log.warning("%s; using defaults", err)
        settings = AssistantSettings()
    if args.model:
        settings = settings.updated({"model": args.model})
    if args.device:
        settings = settings.updated({"device": args.device})
    create_server(settings).start_io()
    return 0
