"""Code actions: "Unmask: generate body" (also "checked by its examples", where the docstring
has ``>>>`` examples) and "Unmask: fill selection".

Each action is a command; the server runs the model, then sends one ``workspace/applyEdit`` with a
*versioned* document edit, so the editor applies the whole result at once or (when the user
edited the document in the meantime) rejects it; a buffer is never left half-written.
"""

from __future__ import annotations

import asyncio
import logging

from lsprotocol import types

from assistant.edits import plan_body
from lsp.uris import file_path

log = logging.getLogger("unmask.lsp")


def code_actions(doc, rng: types.Range) -> list[types.CodeAction]:
    actions = []
    try:
        plan = plan_body(doc.source, rng.start.line)  # None: no function with an empty body
    except Exception as err:  # noqa: BLE001 - tree-sitter missing or odd input: no action
        log.info("no syntax actions: %s", err)
        plan = None
    if plan is not None:
        fn = plan.function
        actions.append(_body_action(doc, fn, f"generate body of {fn.name}", False))
        if plan.examples:
            actions.append(_body_action(
                doc, fn, f"generate body of {fn.name}, checked by its examples", True))
    if rng.start != rng.end:
        actions.append(types.CodeAction(
            title="Unmask: fill selection", kind=types.CodeActionKind.RefactorRewrite,
            command=types.Command(title="Unmask: fill selection", command="unmask.fillSelection",
                                  arguments=[doc.uri, doc.version, rng.start.line,
                                             rng.start.character, rng.end.line,
                                             rng.end.character])))
    return actions


def _body_action(doc, fn, title: str, check_examples: bool) -> types.CodeAction:
    """``unmask.generateBody``; its optional fourth argument, true, checks the candidates on
    the docstring's examples (the file before the body runs with each, in the sandbox)."""
    return types.CodeAction(
        title=f"Unmask: {title}", kind=types.CodeActionKind.RefactorRewrite,
        command=types.Command(title="Unmask: generate body", command="unmask.generateBody",
                              arguments=[doc.uri, doc.version, fn.start_line, check_examples]))


async def _run(ls, fn, *args):
    job = ls.service.new_job(f"action:{args[0] if args else ''}")
    return await asyncio.wrap_future(ls.service.submit(job, fn, *args))


def _version(value) -> int | None:
    """A document version from a command's arguments; None for an unversioned (re-adopted)
    document, whose edit the client then applies without a version check."""
    return None if value is None else int(value)


def _apply(ls, uri: str, version: int | None, rng: types.Range, text: str, label: str) -> None:
    edit = types.WorkspaceEdit(document_changes=[types.TextDocumentEdit(
        text_document=types.OptionalVersionedTextDocumentIdentifier(uri=uri, version=version),
        edits=[types.TextEdit(range=rng, new_text=text)])])
    ls.workspace_apply_edit(types.ApplyWorkspaceEditParams(edit=edit, label=label))


def _message(ls, text: str) -> None:
    ls.window_show_message(types.ShowMessageParams(types.MessageType.Info, f"Unmask: {text}"))


def _current(ls, uri: str, version: int | None):
    doc = ls.document(uri)
    if doc is None or doc.version != version:
        _message(ls, "the document changed; run the action again")
        return None
    if ls.service.holder.engine is None:
        _message(ls, f"the model is {ls.service.holder.status}; try again in a moment")
        return None
    return doc


async def run_generate_body(ls, args) -> None:
    uri, version, line = args[0], _version(args[1]), int(args[2])
    check = len(args) > 3 and bool(args[3])
    doc = _current(ls, uri, version)
    if doc is None:
        return None
    plan = plan_body(doc.source, line)
    if plan is None:
        _message(ls, "no function with an empty body here")
        return None
    if check and not plan.examples:
        _message(ls, f"the docstring has no >>> examples to check; use \"{plan.title}\"")
        return None
    if check and ls.service.holder.engine.parent_folder is None:
        _message(ls, "checking examples needs the candidates of an adapted model's parent, "
                     "and this model has none; use the embedded model or a plain body")
        return None
    result = await _run(ls, ls.service.fill, plan.prefix, plan.suffix, 0, None,
                        file_path(uri), check)
    if result is None:
        return None
    body = plan.finish(result.completion)
    if not body.strip():
        _message(ls, "the model wrote no body; try again or raise max_tokens_block")
        return None
    rng = types.Range(start=doc.client_position_at_offset(plan.start),
                      end=doc.client_position_at_offset(plan.end))
    _apply(ls, uri, version, rng, body, f"Unmask: {plan.title}")
    if check:
        _message(ls, examples_verdict(result.extra.get("rerank", {})))
    return None


def examples_verdict(rerank: dict) -> str:
    """What the user learns after a checked body: whether the body written passes."""
    if "examples_passed" not in rerank:  # the parent wrote nothing to choose among
        return "the examples were not checked: there were no candidates; this is the model's body"
    passed, of = rerank["examples_passed"], rerank["candidates"]
    if passed:
        return (f"the body passes its docstring's examples ({passed} of {of} candidates "
                "did; the parent's likeliest of those)")
    return (f"no candidate passed the docstring's examples (0 of {of}); this body is the "
            "parent's likeliest: check it before relying on it")


async def run_fill_selection(ls, args) -> None:
    uri, version = args[0], _version(args[1])
    rng = types.Range(start=types.Position(int(args[2]), int(args[3])),
                      end=types.Position(int(args[4]), int(args[5])))
    doc = _current(ls, uri, version)
    if doc is None:
        return None
    start, end = doc.offset_at_position(rng.start), doc.offset_at_position(rng.end)
    result = await _run(ls, ls.service.fill, doc.source[:start], doc.source[end:], 0, None,
                        file_path(uri))
    if result is None:
        return None
    _apply(ls, uri, version, rng, result.completion, "Unmask: fill selection")
    return None
