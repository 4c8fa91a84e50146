"""Throughput and latency of ``unmask serve`` under concurrent clients, batched vs unbatched.

    .venv/bin/python benchmarks/serve_load.py [--requests 48] [--clients 1,4,16] [--tokens 24]

Starts the server twice on loopback (``--batching on``, then ``off``), and for each number
of concurrent clients sends the same single-line ``/infill`` requests (real code around a hole,
from this repository's files, llama.vim's fields): requests/s, p50 and p95 latency, errors.
Then 1,000 mixed good and bad requests (bad JSON, wrong types, oversize, unknown routes) at 16
clients: every answer must be the right status and the server must still be healthy.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def holes(n: int) -> list[dict]:
    files = sorted((ROOT / "engine").glob("*.py")) + sorted((ROOT / "assistant").glob("*.py"))
    out = []
    rng = random.Random(0)
    while len(out) < n:
        lines = rng.choice(files).read_text().splitlines(keepends=True)
        at = rng.randrange(20, max(21, len(lines) - 10))
        out.append({"input_prefix": "".join(lines[max(0, at - 40):at]),
                    "input_suffix": "".join(lines[at + 1:at + 12]), "n_predict": 24,
                    "stop": ["\n"], "top_k": 40, "top_p": 0.9, "cache_prompt": True})
    return out


def start(extra: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--port", str(port), *extra],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


def load(url: str, bodies: list[dict], clients: int) -> dict:
    latencies, errors, lock = [], [0], threading.Lock()
    work = list(bodies)

    def client() -> None:
        with httpx.Client(timeout=300) as http:
            while True:
                with lock:
                    if not work:
                        return
                    body = work.pop()
                t = time.perf_counter()
                r = http.post(f"{url}/infill", json=body)
                with lock:
                    latencies.append(time.perf_counter() - t)
                    errors[0] += r.status_code != 200

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    latencies.sort()
    return {"rps": len(bodies) / wall, "p50": statistics.median(latencies),
            "p95": latencies[int(0.95 * (len(latencies) - 1))], "errors": errors[0]}


def mixed(url: str, n: int, clients: int) -> dict:
    good = [{**h, "n_predict": 4} for h in holes(8)]  # short answers: the point is robustness
    bad = [(b"{not json", 400), (b"[1]", 400), (json.dumps({"input_prefix": 3}).encode(), 400),
           (json.dumps({"input_prefix": "a", "n_predict": -1}).encode(), 400),
           (b'{"input_prefix": "' + b"x" * (2 << 20) + b'"}', 413)]
    plan = [(json.dumps(good[i % 8]).encode(), 200) if i % 2 == 0 else bad[i % len(bad)]
            for i in range(n)]
    wrong, lock = [0], threading.Lock()

    def client(part) -> None:
        with httpx.Client(timeout=300) as http:
            for body, want in part:
                try:
                    got = http.post(f"{url}/infill", content=body).status_code
                except httpx.HTTPError:
                    got = -1
                with lock:
                    wrong[0] += got != want

    threads = [threading.Thread(target=client, args=(plan[i::clients],)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    healthy = httpx.get(f"{url}/health").status_code == 200
    return {"requests": n, "wrong status": wrong[0], "healthy after": healthy}


def main() -> None:
    from rich.console import Console
    from rich.table import Table

    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=48)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--mixed", type=int, default=1000)
    args = ap.parse_args()
    bodies = holes(args.requests)
    table = Table(title=f"unmask serve: {args.requests} single-line /infill requests")
    for col in ("server", "clients", "req/s", "p50 s", "p95 s", "errors"):
        table.add_column(col, justify="right")
    for label, extra in (("batched", ["--batching", "on"]), ("unbatched", ["--batching", "off"])):
        proc, url = start(extra)
        try:
            load(url, bodies[:4], 1)  # warm-up
            for c in [int(c) for c in args.clients.split(",")]:
                r = load(url, bodies, c)
                table.add_row(label, str(c), f"{r['rps']:.2f}", f"{r['p50']:.2f}",
                              f"{r['p95']:.2f}", str(r["errors"]))
            if label == "batched" and args.mixed:
                robustness = mixed(url, args.mixed, 16)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    console = Console()
    console.print(table)
    if args.mixed:
        console.print(f"mixed good/bad requests at 16 clients: {robustness}")


if __name__ == "__main__":
    main()
