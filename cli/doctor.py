"""``unmask doctor``: one screen of what this machine has for Unmask, and what to fix.

Each check is a small function returning rows of (what, found, fix); nothing is downloaded,
nothing is loaded beyond reading configs, so it answers in about a second.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import platform
import sys
from pathlib import Path

Row = tuple[str, str, str]  # (what, what was found, what to do about it; "" = nothing)


def _version(dist: str) -> str | None:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return None


def machine() -> list[Row]:
    import torch

    from engine.loading import _cpu_has_bf16

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [("python", f"{platform.python_version()} ({sys.executable})", ""),
            ("unmask", _version("unmask") or "not installed as a package",
             "" if _version("unmask") else "pip install -e ."),
            ("torch", f"{torch.__version__}, {torch.get_num_threads()} threads, GPU: {gpu}, "
                      f"CPU bf16: {'yes' if _cpu_has_bf16() else 'no (float32 is used)'}", "")]


def models(name: str | None) -> list[Row]:
    from engine.errors import UnmaskError
    from engine.loading import DEFAULT_MODEL, cache_dir, list_models, resolve_model
    from engine.lora import adapter_config, is_adapter

    rows: list[Row] = []
    if str(name or "").startswith("gguf:"):  # a bare base: report it, do not convert it here
        return base_model(name, cache_dir())
    try:
        folder = resolve_model(name)
        rows.append((f"model {name or DEFAULT_MODEL}", str(folder), ""))
        if is_adapter(folder):
            rows += base_model(adapter_config(folder)["base_model_name_or_path"], cache_dir())
    except UnmaskError as err:
        rows.append((f"model {name or DEFAULT_MODEL}", "not found",
                     str(err).split(";")[-1].strip() or "pass --model FOLDER"))
    others = [f"{n}" for n, _ in list_models()]
    rows.append(("models found offline", ", ".join(others) or "none", ""))
    return rows


def base_model(spec: str, cache: Path) -> list[Row]:
    """The pretrained base behind an adapter: its package and whether it is converted yet."""
    from engine.errors import UnmaskError
    from engine.gguf_base import gguf_path

    try:
        path = gguf_path(spec)
    except UnmaskError as err:
        return [("base model", spec, str(err).split(";")[-1].strip())]
    built = sorted((cache / "bases").glob(f"{path.stem}-*/model.safetensors"))
    state = f"converted in {built[-1].parent}" if built else \
        "not converted yet (done once on first use, ~10 s)"
    return [("base model", f"{path} ({path.stat().st_size / 2**20:.0f} MiB)", ""),
            ("base as Dream", state, "")]


OPTIONAL = "optional: "
EXTRAS = [  # (what, module, distribution, extra that installs it)
    ("back end: llama.cpp", "llama_cpp", "llama-cpp-python", "llamacpp"),
    ("GGUF reader", "gguf", "gguf", ""),
    ("language server (pygls)", "pygls", "pygls", "lsp"),
    ("TUI (textual)", "textual", "textual", "tui"),
    ("web demo (gradio)", "gradio", "gradio", "demo"),
    ("HTTP server (starlette)", "starlette", "starlette", "serve"),
    ("HTTP server (uvicorn)", "uvicorn", "uvicorn", "serve"),
    ("tree-sitter", "tree_sitter", "tree-sitter", "lsp"),
]


def front_ends() -> list[Row]:
    rows: list[Row] = [("back end: torch", "available", "")]
    for what, module, dist, extra in EXTRAS:
        found = importlib.util.find_spec(module) is not None
        fix = "" if found else OPTIONAL + (f"pip install -e '.[{extra}]'" if extra else
                                           f"pip install {dist}")
        rows.append((what, _version(dist) or "installed" if found else "missing", fix))
    return rows


def run(model: str | None = None) -> int:
    """Print the report; exit status 1 when something needs fixing."""
    from rich.console import Console
    from rich.table import Table

    from engine.loading import cache_dir

    rows = machine() + models(model) + front_ends() + [("cache", str(cache_dir()), "")]
    table = Table(title="unmask doctor", show_lines=False)
    for col in ("what", "found", "to fix"):
        table.add_column(col, overflow="fold")
    for what, found, fix in rows:
        style = "yellow" if fix.startswith(OPTIONAL) else "bold red"
        table.add_row(what, found, f"[{style}]{fix}[/]" if fix else "[green]ok[/]")
    Console(width=120).print(table)
    fixes = [r for r in rows if r[2] and not r[2].startswith(OPTIONAL)]
    missing = len([r for r in rows if r[2].startswith(OPTIONAL)])
    print((f"{len(fixes)} thing(s) to fix" if fixes else "the engine and its model are ready")
          + (f"; {missing} optional part(s) not installed" if missing else ""))
    return 1 if fixes else 0
