"""A minimal LSP client over a subprocess's stdio, able to send garbage too.

Used by the protocol tests and by ``benchmarks/lsp_typing.py``; editors are the real clients.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


class RawClient:
    def __init__(self, *server_args: str, env: dict | None = None) -> None:
        self.seen: list = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cli", "lsp", *server_args], cwd=ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, **(env or {})})
        self.inbox: queue.Queue = queue.Queue()
        self.garbage: list[bytes] = []
        self.next_id = 1
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def _read(self) -> None:
        out = self.proc.stdout
        while True:
            header = out.readline()
            if not header:
                return
            if not header.startswith(b"Content-Length:"):
                self.garbage.append(header)  # anything not framed is a protocol violation
                continue
            length = int(header.split(b":")[1])
            while out.readline() not in (b"\r\n", b""):
                pass
            self.inbox.put(json.loads(out.read(length)))

    def send_raw(self, body: bytes) -> None:
        self.proc.stdin.write(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        self.proc.stdin.flush()

    def send(self, msg: dict) -> None:
        self.send_raw(json.dumps({"jsonrpc": "2.0", **msg}).encode())

    def request(self, method: str, params=None) -> int:
        rid = self.next_id
        self.next_id += 1
        self.send({"id": rid, "method": method, "params": params})
        return rid

    def notify(self, method: str, params=None) -> None:
        self.send({"method": method, "params": params})

    def wait_for(self, pred, timeout: float = 30.0, answer_requests: bool = True) -> dict:
        deadline = time.time() + timeout
        stash = []
        try:
            while time.time() < deadline:
                try:
                    msg = self.inbox.get(timeout=0.1)
                except queue.Empty:
                    continue
                if answer_requests and "method" in msg and "id" in msg:
                    result = {"applied": True} if msg["method"] == "workspace/applyEdit" else None
                    self.send({"id": msg["id"], "result": result})
                if pred(msg):
                    return msg
                stash.append(msg)
            raise TimeoutError(f"no matching message; saw {stash[-5:]}")
        finally:
            for m in stash:
                self.seen.append(m)

    def response(self, rid: int, timeout: float = 30.0) -> dict:
        return self.wait_for(lambda m: m.get("id") == rid and "method" not in m, timeout)

    def initialize(self, options: dict | None = None, root_uri: str | None = None) -> dict:
        self.seen = []
        rid = self.request("initialize", {"processId": None, "rootUri": root_uri,
                                          "capabilities": {"window": {"workDoneProgress": True}},
                                          "initializationOptions": options or {}})
        result = self.response(rid)["result"]
        self.notify("initialized", {})
        return result

    def open(self, uri: str, text: str, version: int = 1) -> None:
        self.notify("textDocument/didOpen", {"textDocument": {
            "uri": uri, "languageId": "python", "version": version, "text": text}})

    def close(self, timeout: float = 10.0) -> int:
        rid = self.request("shutdown")
        self.response(rid)
        self.notify("exit")
        return self.proc.wait(timeout)
