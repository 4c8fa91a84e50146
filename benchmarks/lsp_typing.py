"""Replay a scripted typing session against `unmask lsp` and print latency and cache numbers.

    .venv/bin/python benchmarks/lsp_typing.py [--model M] [--cps 8] [--debounce-ms 200]
        [--modes exact:0,cache:8:off,reuse:8:on] [--above FILE]

A person types ``examples/typing_session.py`` character by character at ``--cps`` characters
per second. After each keystroke the client sends didChange; like Neovim 0.12 it sends an
automatic inlineCompletion request once typing pauses for the debounce (every keystroke when
0), and never cancels the previous one (the server supersedes stale work itself). Printed:
p50/p95 latency from keystroke to answer (answered requests with a suggestion, and all),
the share of requests served from the suggestion cache, and the denoising steps that
superseded/cancelled requests ran for nothing. Each mode (``label:cacheRefresh[:reuseContext]``:
cacheRefresh 0 is exact decoding, N the context cache refreshed every N passes; reuseContext on
or off keeps keys from one request to the next, the server's default being on; then any other
setting as ``key=value``, e.g. ``lineCanvas=fixed``, ``lineContextTokens=512`` or
``syntaxGuard=false``) replays the same
session against a fresh server, one after the other, and the table shows them side by side.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.lsp.stdio_client import RawClient  # noqa: E402

URI = "file:///bench/typing_session.py"


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--cps", type=float, default=8.0, help="typing speed, characters per second")
    ap.add_argument("--debounce-ms", type=float, default=200.0)
    ap.add_argument("--session", type=Path, default=ROOT / "examples" / "typing_session.py")
    ap.add_argument("--above", type=Path, default=None,
                    help="a file already in the buffer above the typed text (a long file: "
                         "the context windows fill up and slide)")
    ap.add_argument("--modes", default="exact:0,cache:8:off,reuse:8:on",
                    help="label:cacheRefresh[:reuseContext on|off[:setting=value ...]], run "
                         "one after the other (e.g. fast:8:on:lineCanvas=fixed)")
    args = ap.parse_args()
    results = {}
    for mode in args.modes.split(","):
        label, refresh, *rest = mode.split(":")
        options = {"cacheRefresh": int(refresh)}
        if rest:
            options["reuseContext"] = rest[0] == "on"
        for setting in rest[1:]:  # any other editor setting, e.g. lineCanvas=fixed
            key, value = setting.split("=", 1)
            options[key] = int(value) if value.isdigit() else \
                {"true": True, "false": False}.get(value, value)
        results[label] = replay(args, options)
    where = f" below {args.above.name}" if args.above else ""
    table = Table(title=f"LSP typing replay ({len(args.session.read_text())} keystrokes{where} "
                        f"at {args.cps} cps, debounce {args.debounce_ms:.0f} ms)")
    table.add_column("metric")
    for label in results:
        table.add_column(label, justify="right")
    for i, (name, _) in enumerate(next(iter(results.values()))):
        table.add_row(name, *[str(rows[i][1]) for rows in results.values()])
    Console().print(table)


def replay(args, options: dict) -> list[tuple[str, object]]:
    target = args.session.read_text()
    client = RawClient(*(["--model", args.model] if args.model else []))
    client.initialize(options)
    client.wait_for(lambda m: m.get("method") == "$/progress"
                    and m["params"]["value"].get("kind") == "end", timeout=300)
    above = args.above.read_text() if args.above else ""
    if above and not above.endswith("\n"):
        above += "\n"
    client.open(URI, above)
    sent: dict[int, float] = {}
    answers: dict[int, tuple[float, bool]] = {}

    stop = threading.Event()

    def collect() -> None:
        while not stop.is_set():
            try:
                msg = client.inbox.get(timeout=0.2)
            except Exception:  # noqa: BLE001 - queue.Empty
                continue
            rid = msg.get("id")
            if rid in sent and "method" not in msg:
                items = (msg.get("result") or {}).get("items") or []
                answers[rid] = (time.perf_counter() - sent[rid], bool(items))

    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    version, line, col = 1, above.count("\n"), 0
    interval = 1.0 / args.cps
    for i, ch in enumerate(target):
        version += 1
        client.notify("textDocument/didChange", {
            "textDocument": {"uri": URI, "version": version},
            "contentChanges": [{"text": above + target[:i + 1]}]})
        line, col = (line + 1, 0) if ch == "\n" else (line, col + 1)
        pause = args.debounce_ms / 1000 <= interval or i + 1 == len(target) \
            or target[i + 1] in "\n(.: "
        if args.debounce_ms == 0 or pause:
            rid = client.request("textDocument/inlineCompletion", {
                "textDocument": {"uri": URI}, "position": {"line": line, "character": col},
                "context": {"triggerKind": 2}})
            sent[rid] = time.perf_counter()
        time.sleep(interval)
    deadline = time.time() + 120
    while len(answers) < len(sent) and time.time() < deadline:
        time.sleep(0.1)
    stop.set()
    collector.join()
    stats_id = client.request("unmask/stats", {})
    stats = client.response(stats_id)["result"]
    client.close()
    with_text = [t for t, ok in answers.values() if ok]
    every = [t for t, _ in answers.values()]
    return [("requests sent", len(sent)), ("answered", len(answers)),
            ("with a suggestion", len(with_text)),
            ("withheld by the syntax guard", stats.get("rejected", 0)),
            ("p50 latency, suggestions (ms)", f"{pct(with_text, 0.5) * 1e3:.0f}"),
            ("p95 latency, suggestions (ms)", f"{pct(with_text, 0.95) * 1e3:.0f}"),
            ("p50 latency, all (ms)", f"{pct(every, 0.5) * 1e3:.0f}"),
            ("p95 latency, all (ms)", f"{pct(every, 0.95) * 1e3:.0f}"),
            ("served from cache", f"{stats['cache_hits']}/{stats['requests']} "
                                  f"({stats['cache_hits'] / max(stats['requests'], 1):.0%})"),
            ("superseded/cancelled", stats["cancelled"]),
            ("denoising steps wasted", stats["wasted_steps"]),
            ("mean denoise time per completed request (ms)",
             f"{stats['denoise_s'] / max(stats['completed'], 1) * 1e3:.0f}")]


if __name__ == "__main__":
    main()
