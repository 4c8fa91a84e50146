"""The ``unmask`` command line: generate, infill, batch JSONL, models, train, eval.

Every expected failure is an ``UnmaskError``: one line on stderr, a non-zero exit, no traceback
(set UNMASK_DEBUG=1 to see one). Heavy imports happen inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from engine.choices import ALGORITHMS, BACKENDS, LENGTH_STRATEGIES
from engine.errors import ConfigError, UnmaskError
from engine.repo import RETRIEVALS


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line and exits 2."""

    def error(self, message: str):
        sys.stderr.write(f"unmask: error: {message} (see `{self.prog} --help`)\n")
        raise SystemExit(2)


def add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model and sampler")
    g.add_argument("--model", default=None, help="folder, models/ name, HF repo id in the local "
                   "cache, or .gguf file (default: the embedded model)")
    g.add_argument("--backend", default="auto", choices=BACKENDS)
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | mps")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    g.add_argument("--max-new-tokens", type=int, default=None, help="canvas size")
    g.add_argument("--steps", type=int, default=None, help="denoising steps for a full canvas")
    g.add_argument("--alg", default=None, choices=ALGORITHMS)
    g.add_argument("--alg-temp", type=float, default=None)
    g.add_argument("--threshold", type=float, default=None,
                   help="--alg confidence_threshold: commit slots at least this confident")
    g.add_argument("--gamma", type=float, default=None,
                   help="--alg eb: entropy bound in nats per pass")
    g.add_argument("--cache-refresh", type=int, default=None,
                   help="reuse prefix/suffix keys and values, recomputed every N passes "
                        "(torch; 0 = exact)")
    g.add_argument("--max-repeats", type=int, default=None,
                   help="never let a unit of 1-8 tokens repeat more than N times in a row "
                        "(stops greedy loops; 0 = off)")
    g.add_argument("--reuse-context", action="store_true", default=None,
                   help="with --cache-refresh: start each request from the previous one's keys "
                        "for the tokens they share (batch mode; approximate)")
    g.add_argument("--stop-loops", action="store_true", default=None,
                   help="end a completion at a repeated unit (2-80 characters, 4+ times in a "
                        "row) and keep its first copy")
    g.add_argument("--limit-scope", action="store_true", default=None,
                   help="infill: cut a multi-line completion at the first line that leaves "
                        "the hole's indentation block or repeats the suffix")
    g.add_argument("--parent-branches", type=int, default=None,
                   help="infill on an adapted model: its autoregressive parent writes N "
                        "answers too and, of those and every length of a block, the one it "
                        "finds likeliest with the suffix wins (0 = the diffusion answer alone; "
                        "default: the model's)")
    g.add_argument("--rerank-suffix-lines", type=int, default=None,
                   help="with --parent-branches: suffix lines the parent scores")
    g.add_argument("--check-examples", action="store_true", default=None,
                   help="with --parent-branches, a whole function body (the prefix ends at "
                        "its docstring): run the docstring's >>> examples on each candidate in "
                        "the sandbox and prefer the ones that pass")
    g.add_argument("--block-length", type=int, default=None,
                   help="semi-autoregressive blocks of this many slots, left to right; "
                        "0 = one block (default: the model's generation_config)")
    g.add_argument("--temperature", type=float, default=None)
    g.add_argument("--top-p", type=float, default=None)
    g.add_argument("--top-k", type=int, default=None)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--length", default=None, choices=LENGTH_STRATEGIES,
                   help="infill canvas: probe the hole's length first, or use --max-new-tokens")
    g.add_argument("--json", action="store_true", help="print one JSON object")
    g.add_argument("--jsonl", type=Path, help="batch mode: read requests from this JSONL file")
    g.add_argument("--out", type=Path, help="batch mode: write results here")


def build_parser() -> Parser:
    p = Parser(prog="unmask", description="Local code assistant on a masked-diffusion code model.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    g = sub.add_parser("generate", help="complete a prompt (whole functions)")
    g.add_argument("--prompt", help="prompt text")
    g.add_argument("--prompt-file", type=Path)
    g.add_argument("--raw", action="store_true", help="no chat template, even for instruct models")
    add_model_flags(g)
    i = sub.add_parser("infill", help="fill the code between a prefix and a suffix")
    i.add_argument("--prefix", default=None)
    i.add_argument("--suffix", default=None)
    i.add_argument("--prefix-file", type=Path)
    i.add_argument("--suffix-file", type=Path)
    i.add_argument("--single-line", action="store_true",
                   help="stop after the first line, as an editor's single-line suggestion (an "
                        "adapted model's parent then reranks it: --parent-branches)")
    i.add_argument("--repo", type=Path, default=None,
                   help="put the most similar code of this repository before the prefix")
    i.add_argument("--exclude", action="append", default=[], metavar="GLOB",
                   help="with --repo: a path or glob relative to it never read (repeatable)")
    i.add_argument("--retrieval", default=None, choices=RETRIEVALS,
                   help="with --repo: what the context holds (default file: the file's own "
                        "lines the model cannot see, none when it sees all of it; bm25: other "
                        "files' most similar chunks)")
    add_model_flags(i)
    sub.add_parser("models", help="list the models Unmask can find offline")
    d = sub.add_parser("doctor", help="what this machine has for Unmask, and what to fix")
    d.add_argument("--model", default=None, help="the model to check (default: embedded)")
    sub.add_parser("lsp", help="language server over stdio (inline completion, code actions)",
                   add_help=False)
    sub.add_parser("tui", help="terminal coding session with live denoising", add_help=False)
    sub.add_parser("demo", help="web demo of the denoising order (127.0.0.1)", add_help=False)
    sub.add_parser("serve", help="HTTP server: llama.cpp /infill and OpenAI /v1 (127.0.0.1)",
                   add_help=False)
    from cli.train import add_train_parsers

    add_train_parsers(sub)
    return p


def read_arg_or_file(text: str | None, path: Path | None, what: str) -> str | None:
    if path is not None:
        try:
            return path.read_text()
        except OSError as err:
            raise ConfigError(f"cannot read --{what}-file {path}: {err.strerror}") from err
    return text


def settings_from(args, engine, **request):
    """The flags (and a batch line's own keys) over the model's defaults: ``Engine.settings``."""
    flags = {"max_new_tokens": args.max_new_tokens, "steps": args.steps, "alg": args.alg,
             "alg_temp": args.alg_temp, "temperature": args.temperature, "top_p": args.top_p,
             "top_k": args.top_k, "length": args.length, "block_length": args.block_length,
             "seed": args.seed, "threshold": args.threshold, "gamma": args.gamma,
             "cache_refresh": args.cache_refresh, "max_repeats": args.max_repeats,
             "stop_loops": args.stop_loops, "reuse_context": args.reuse_context,
             "limit_scope": args.limit_scope, "parent_branches": args.parent_branches,
             "rerank_suffix_lines": args.rerank_suffix_lines,
             "check_examples": args.check_examples}
    if getattr(args, "single_line", False):
        flags["stop"] = ("\n",)
    return engine.settings(**{**flags, **request})


def load_engine(args):
    from engine.api import Engine

    return Engine.load(args.model, device=args.device, dtype=args.dtype, backend=args.backend)


def repo_context(args, engine, prefix: str, suffix: str, path: str | None = None) -> str:
    """``--repo``: the repository chunks most similar to the code around the hole."""
    index = getattr(args, "_repo_index", None)
    if index is None:
        return ""
    from engine.repo import context_budget

    return index.context(prefix, suffix, engine.tokenizer, context_budget(engine.context),
                         path=path)


def relative_to_repo(args, file: Path | None) -> str | None:
    """The edited file's path inside ``--repo`` (never retrieved as context), if it is there."""
    if file is None or getattr(args, "repo", None) is None:
        return None
    try:
        return file.resolve().relative_to(args.repo.resolve()).as_posix()
    except ValueError:
        return None


def say_note(res, said: set | None = None) -> None:
    """A completion's note (context cut, steps changed) as one line on stderr; with ``said``
    (a batch run) each distinct note once, the records keep theirs."""
    note = res.extra.get("note") if res is not None else None
    if note and (said is None or note not in said):
        sys.stderr.write(f"unmask: note: {note}\n")
        if said is not None:
            said.add(note)


def completion_record(res) -> dict:
    return {"completion": res.completion, "token_ids": res.token_ids, "order": res.order,
            "steps": res.steps, "canvas_len": res.canvas_len, "prompt_tokens": res.prompt_tokens,
            "elapsed_s": round(res.elapsed_s, 4), "tokens_per_s": round(res.tokens_per_s, 2),
            **res.extra}


def run_stream(engine, stream, live: bool, prefix_tail: str = "", suffix_head: str = ""):
    """Consume a stream; on a terminal, show the canvas denoising live. Returns the Completion."""
    from engine.api import Completion

    if not live:
        return engine.finish(stream)
    from rich.console import Console
    from rich.live import Live

    from assistant.render import frame_pieces, rich_text

    console = Console(stderr=True)
    result = None
    with Live(console=console, refresh_per_second=30, transient=True) as view:
        for item in stream:
            if isinstance(item, Completion):
                result = item
            else:
                view.update(rich_text(frame_pieces(engine, item), item.steps,
                                      prefix_tail, suffix_head))
    return result


def cmd_single(args, engine) -> int:
    settings = settings_from(args, engine)
    live = not args.json and sys.stderr.isatty()
    if args.command == "generate":
        prompt = read_arg_or_file(args.prompt, args.prompt_file, "prompt")
        if prompt is None:
            raise ConfigError("generate needs --prompt TEXT or --prompt-file FILE")
        res = run_stream(engine, engine.generate_stream(prompt, settings, raw=args.raw), live,
                         prompt[-400:])
        head = prompt if args.raw or not engine.is_instruct else ""
    else:
        prefix = read_arg_or_file(args.prefix, args.prefix_file, "prefix")
        suffix = read_arg_or_file(args.suffix, args.suffix_file, "suffix")
        if prefix is None and suffix is None:
            raise ConfigError("infill needs --prefix/--prefix-file and/or --suffix/--suffix-file")
        prefix, suffix = prefix or "", suffix or ""
        context = repo_context(args, engine, prefix, suffix,
                               relative_to_repo(args, args.prefix_file or args.suffix_file))
        res = run_stream(engine, engine.infill_stream(prefix, suffix, settings, context), live,
                         prefix[-400:], suffix[:200])
        head = prefix
    say_note(res)
    if args.json:
        print(json.dumps(completion_record(res)))
    else:
        tail = suffix if args.command == "infill" else ""
        print(head + res.completion + tail, end="" if (head + res.completion + tail).endswith("\n") else "\n")
        sys.stderr.write(f"[{engine.name} · {engine.backend}/{engine.device.type} · "
                         f"{res.canvas_len} slots in {res.steps} steps · {res.elapsed_s:.2f}s · "
                         f"{res.tokens_per_s:.0f} tok/s]\n")
    return 0


def cmd_batch(args, engine) -> int:
    """JSONL in, JSONL out; a malformed line becomes an error record, the rest still run."""
    if args.out is None:
        raise ConfigError("--jsonl needs --out FILE for the results")
    try:
        lines = args.jsonl.read_text().splitlines()
    except OSError as err:
        raise ConfigError(f"cannot read --jsonl {args.jsonl}: {err.strerror}") from err
    failures, noted, said = 0, 0, set()
    with open(args.out, "w") as out:
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            rid = None
            try:
                req = json.loads(line)
                if not isinstance(req, dict):
                    raise ValueError("not a JSON object")
                rid = req.get("id", n)
                s = settings_from(args, engine, **{k: req[k] for k in (
                    "max_new_tokens", "steps", "seed") if k in req})
                if "prompt" in req and isinstance(req["prompt"], str):
                    res = engine.generate(req["prompt"], s, raw=args.command == "generate" and
                                          getattr(args, "raw", False))
                elif isinstance(req.get("prefix", ""), str) and isinstance(req.get("suffix", ""), str) \
                        and ("prefix" in req or "suffix" in req):
                    pre, suf = req.get("prefix", ""), req.get("suffix", "")
                    path = req.get("path") if isinstance(req.get("path"), str) else None
                    res = engine.infill(pre, suf, s, context=repo_context(
                        args, engine, pre, suf, path))
                else:
                    raise ValueError('needs "prompt", or "prefix"/"suffix" strings')
                say_note(res, said)
                noted += bool(res.extra.get("note"))
                out.write(json.dumps({"id": rid, **completion_record(res)}) + "\n")
            except (ValueError, UnmaskError, TypeError) as err:
                failures += 1
                out.write(json.dumps({"id": rid, "line": n,
                                      "error": f"line {n}: {str(err).splitlines()[0]}"}) + "\n")
    sys.stderr.write(f"{len([l for l in lines if l.strip()]) - failures} done, {failures} failed "
                     f"-> {args.out}" + (f" ({noted} with a note in their record)" if noted else "")
                     + "\n")
    return 1 if failures else 0


def cmd_models() -> int:
    from engine.loading import DEFAULT_MODEL, list_models

    found = list_models()
    if not found:
        print("no models found; the embedded model should be in models/ (reinstall Unmask)")
        return 1
    for name, path in found:
        print(f"{name}{'  (default)' if name == DEFAULT_MODEL else ''}\t{path}")
    return 0


FRONT_ENDS = {"lsp": ("lsp.server", "the language server", "lsp"),
              "serve": ("ui.http.server", "the HTTP server", "serve"),
              "tui": ("ui.tui.app", "the TUI", "tui"),
              "demo": ("ui.web.demo", "the web demo", "demo")}


def run_front_end(name: str, argv: list[str]) -> int:
    import importlib

    module, what, extra = FRONT_ENDS[name]
    try:
        entry = importlib.import_module(module).main
    except ImportError as err:
        sys.stderr.write(f"unmask: error: {what} needs {err.name}, which is not installed; "
                         f"pip install 'unmask[{extra}]'\n")
        return 4
    return entry(argv)


def show_first_run_steps() -> None:
    """The one-time work behind a first run (converting the pretrained base) says what it does
    on stderr; the engine itself only logs."""
    import logging

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("unmask: %(message)s"))
    for name in ("engine.gguf_base",):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in FRONT_ENDS:  # their own flags (lsp must never print to stdout)
        return run_front_end(argv[0], argv[1:])
    args = build_parser().parse_args(argv)
    show_first_run_steps()
    try:
        if args.command == "models":
            return cmd_models()
        if args.command == "doctor":
            from cli.doctor import run

            return run(args.model)
        if args.command in ("train", "eval", "export"):
            from cli.train import run_train_command

            return run_train_command(args)
        if getattr(args, "repo", None) is not None:  # a bad --repo fails before any work
            from engine.repo import RETRIEVAL, RepoIndex

            args._repo_index = RepoIndex(args.repo, args.exclude,
                                         args.retrieval or RETRIEVAL)
        engine = load_engine(args)
        if args.jsonl is not None:
            return cmd_batch(args, engine)
        return cmd_single(args, engine)
    except UnmaskError as err:
        sys.stderr.write(f"unmask: error: {err}\n")
        return err.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("unmask: interrupted\n")
        return 130
    except Exception as err:  # noqa: BLE001 - the boundary: never a traceback for users
        if os.environ.get("UNMASK_DEBUG"):
            raise
        sys.stderr.write(f"unmask: internal error: {type(err).__name__}: {err} "
                         "(rerun with UNMASK_DEBUG=1 for the traceback and report it)\n")
        return 70


if __name__ == "__main__":
    raise SystemExit(main())
