"""``unmask serve`` with real HTTP clients: the openai package, httpx with llama.vim's fields,
16 concurrent clients, streaming to the end, a disconnect, and every kind of bad request."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

ROOT = Path(__file__).resolve().parents[2]
KEY = "test-key"
LLAMA_VIM = {  # the fields llama.vim sends (its defaults), verbatim
    "input_prefix": "def add(a, b):\n", "input_suffix": "\n\nprint(add(1, 2))\n",
    "input_extra": [{"filename": "util.py", "text": "def sub(a, b):\n    return a - b\n"}],
    "prompt": "    ", "n_predict": 8, "stop": [], "n_indent": 4, "top_k": 40, "top_p": 0.90,
    "samplers": ["top_k", "top_p", "infill"], "stream": False, "cache_prompt": True,
    "t_max_prompt_ms": 500, "t_max_predict_ms": 1000,
    "response_fields": ["content", "timings/prompt_n", "timings/predicted_n"]}


LLAMA_VIM_READS = ("prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second",
                   "predicted_n", "predicted_ms", "predicted_per_token_ms", "predicted_per_second")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "server.log"
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--model", str(tiny_model),
                             "--port", str(port), "--api-key", KEY, "--device", "cpu",
                             "--batching", "on", "--dtype", "float32"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=open(log, "w"),
                            env={**os.environ, "UNMASK_DEBUG": "1"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/health", headers=auth(), timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    else:
        proc.kill()
        pytest.fail(log.read_text()[-2000:])
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def auth() -> dict:
    return {"Authorization": f"Bearer {KEY}"}


def test_openai_client_completions_fill_in_the_middle_and_models(server):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{server}/v1", api_key=KEY)
    (model,) = client.models.list().data
    res = client.completions.create(model=model.id, prompt="def add(a, b):\n",
                                    suffix="\n\nprint(add(1, 2))\n", max_tokens=8)
    assert res.object == "text_completion" and isinstance(res.choices[0].text, str)
    assert res.usage.prompt_tokens > 0
    chunks = list(client.completions.create(model=model.id, prompt="x = ", max_tokens=6,
                                            stream=True))
    assert chunks and chunks[-1].choices[0].finish_reason == "stop"  # read to its end
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x", max_tokens=4)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server}/v1", api_key="wrong").models.list()


def test_llama_vim_infill_request_as_sent(server):
    r = httpx.post(f"{server}/infill", json=LLAMA_VIM, headers=auth(), timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    # llama.cpp's response_fields: only those, "timings/x" moved to the top level
    assert set(body) == {"content", "timings/prompt_n", "timings/predicted_n"}
    assert isinstance(body["content"], str) and body["timings/prompt_n"] > 0
    assert 0 <= body["timings/predicted_n"] <= 8
    whole = httpx.post(f"{server}/infill", json={k: v for k, v in LLAMA_VIM.items()
                                                 if k != "response_fields"},
                       headers=auth(), timeout=60).json()
    assert whole["content"] == body["content"] and whole["stop"] is True
    for field in LLAMA_VIM_READS:  # every timing llama.vim shows, present and numeric
        assert isinstance(whole["timings"][field], (int, float)), field
    streamed = []
    with httpx.stream("POST", f"{server}/infill", json={**LLAMA_VIM, "stream": True},
                      headers=auth(), timeout=60) as s:
        for line in s.iter_lines():
            if line.startswith("data: "):
                streamed.append(json.loads(line[6:]))
    assert streamed[-1]["stop"] is True
    assert "".join(e["content"] for e in streamed) == body["content"]  # deltas add up


def test_llama_vim_warmup_with_n_predict_0_answers_at_once(server):
    # llama.vim sends these to fill llama.cpp's cache (input_extra chunks, n_predict 0)
    warm = {**LLAMA_VIM, "n_predict": 0, "t_max_predict_ms": 1, "input_prefix": "",
            "input_suffix": "", "prompt": ""}
    start = time.perf_counter()
    r = httpx.post(f"{server}/infill", json=warm, headers=auth(), timeout=60)
    assert r.status_code == 200, r.text
    assert r.json() == {"content": "", "timings/prompt_n": 0, "timings/predicted_n": 0}
    assert time.perf_counter() - start < 30  # answered, not queued behind the model
    bad = httpx.post(f"{server}/infill", json={**warm, "response_fields": "content"},
                     headers=auth(), timeout=60)
    assert bad.status_code == 400 and "response_fields" in bad.text


def test_sixteen_concurrent_clients_are_batched_and_answered_like_one(server):
    prompts = [f"def f{i}(x):\n    return x + {i}\n\n\ndef g{i}(y):\n" for i in range(16)]
    alone = httpx.post(f"{server}/v1/completions", headers=auth(), timeout=60, json={
        "prompt": prompts[3], "suffix": "\n", "max_tokens": 8}).json()["choices"][0]["text"]
    answers: dict[int, str] = {}

    def ask(i: int) -> None:
        r = httpx.post(f"{server}/v1/completions", headers=auth(), timeout=120, json={
            "prompt": prompts[i], "suffix": "\n", "max_tokens": 8})
        answers[i] = r.json()["choices"][0]["text"] if r.status_code == 200 else r.text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(answers) == 16 and all(isinstance(a, str) for a in answers.values())
    assert answers[3] == alone  # a batched row computes what it computes alone (fp32)
    stats = httpx.get(f"{server}/health", headers=auth()).json()["stats"]
    assert stats["batches"] < stats["batched_requests"]  # some requests shared a batch


def test_canvas_stream_and_a_disconnect_that_stops_the_work(server):
    body = {"input_prefix": "def f(x):\n", "input_suffix": "\n", "n_predict": 200}
    before = httpx.get(f"{server}/health", headers=auth()).json()["stats"]["cancelled"]
    with httpx.stream("POST", f"{server}/v1/denoise", json=body, headers=auth(),
                      timeout=60) as s:
        events = []
        for line in s.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
            if len(events) == 3:
                break  # the client goes away after three of 200 steps
    assert [e["step"] for e in events] == [0, 1, 2] and len(events[0]["canvas"]) == 200
    assert events[0]["canvas"].count(None) >= 198  # masks still masked
    for _ in range(100):
        stats = httpx.get(f"{server}/health", headers=auth()).json()["stats"]
        if stats["cancelled"] > before:
            break
        time.sleep(0.1)
    assert stats["cancelled"] > before


@pytest.mark.parametrize("content,status,needle", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"input_prefix": 5}).encode(), 400, "input_prefix"),
    (json.dumps({"input_prefix": "a", "n_predict": 100000}).encode(), 400, "n_predict"),
    (json.dumps({"input_prefix": "a", "input_extra": "x"}).encode(), 400, "input_extra"),
    (b"{" + b'"input_prefix": "' + b"x" * (2 << 20) + b'"}', 413, "limit"),
])
def test_bad_requests_get_one_clear_json_error(server, content, status, needle):
    r = httpx.post(f"{server}/infill", content=content, headers=auth(), timeout=60)
    assert r.status_code == status and needle in r.json()["error"]["message"]
    assert httpx.get(f"{server}/health", headers=auth()).status_code == 200  # still serving


def test_wrong_key_and_exposed_host_without_key_are_refused(server, tiny_model):
    r = httpx.post(f"{server}/infill", json=LLAMA_VIM, headers={"Authorization": "Bearer x"})
    assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
    p = subprocess.run([sys.executable, "-m", "cli", "serve", "--host", "0.0.0.0", "--model",
                        str(tiny_model)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--api-key" in p.stderr


def test_a_full_queue_refuses_at_once():
    from assistant.scheduler import QueueFull, Scheduler, Ticket

    sched = Scheduler(lambda: None, max_queue=1, gather_s=0.5)
    sched.submit(Ticket("a", "", "", None))
    with pytest.raises(QueueFull):
        sched.submit(Ticket("b", "", "", None))
    sched.close()


def test_only_requests_that_read_the_final_answer_get_the_parents_rerank(tiny_adapter):
    # the scheduler reranks a ticket's final answer (Engine.reranked) when the route asks: a
    # non-streamed request; a streamed one keeps the answer its steps showed
    from assistant.scheduler import Scheduler, Ticket
    from engine.api import Engine

    engine = Engine.load(str(tiny_adapter), device="cpu", dtype="float32")
    settings = engine.settings(max_new_tokens=8, steps=8, length="fixed", temperature=0.0,
                               stop=("\n",), parent_branches=2)
    sched = Scheduler(lambda: engine, batching=False)
    prefix, suffix = "def add(a, b):\n    total = a + b\n", "    return total\n"
    try:
        streamed = sched.submit(Ticket(prefix, suffix, "", settings))
        whole = sched.submit(Ticket(prefix, suffix, "", settings, rerank=True))
        finals = [next(e for e in iter(t.events.get, None) if e[0] != "step")
                  for t in (streamed, whole)]
    finally:
        sched.close()
    (kind_s, plain), (kind_w, reranked) = finals
    assert kind_s == kind_w == "done"
    assert "rerank" not in plain.extra and reranked.extra["rerank"]["candidates"] >= 2
    again = engine.reranked(plain, prefix, suffix, settings)
    assert reranked.completion == again.completion
    assert reranked.extra["rerank"] == again.extra["rerank"]


def test_a_bad_parent_branches_flag_is_refused_before_loading(tiny_model):
    p = subprocess.run([sys.executable, "-m", "cli", "serve", "--model", str(tiny_model),
                        "--parent-branches", "12"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and "--parent-branches must be 0 to 8" in p.stderr


def test_a_fill_in_the_middle_answer_ends_with_the_block_it_was_asked_in(tiny_engine):
    # a canvas longer than the hole: the model writes the hole's line, then goes on into the
    # next function; /infill (llama.vim) and /v1/completions with a suffix answer the line
    # only, and a stream never shows what the final answer cuts
    from starlette.testclient import TestClient

    from assistant.completion import EngineHolder
    from assistant.scheduler import Scheduler
    from assistant.settings import AssistantSettings
    from tests.engine.test_scope import AFTER, BODY, WRITTEN, _writer
    from ui.http.server import Server, create_app

    writer, s = _writer(tiny_engine)
    holder = EngineHolder(AssistantSettings())
    holder.engine, holder.status = writer, "ready"
    sched = Scheduler(lambda: writer)
    infill = {"input_prefix": BODY, "input_suffix": AFTER, "n_predict": s.max_new_tokens,
              "temperature": 0}
    fim = {"prompt": BODY, "suffix": AFTER, "max_tokens": s.max_new_tokens, "temperature": 0}
    try:
        with TestClient(create_app(Server(holder, None, sched))) as client:
            whole = client.post("/infill", json=infill).json()["content"]
            chunks = []
            with client.stream("POST", "/infill", json={**infill, "stream": True}) as r:
                chunks = [json.loads(line[6:])["content"] for line in r.iter_lines()
                          if line.startswith("data: ")]
            fim_text = client.post("/v1/completions", json=fim).json()["choices"][0]["text"]
    finally:
        sched.close()
    assert WRITTEN.startswith(whole) and whole == "    v = f(k)\n\n"
    assert "".join(chunks) == whole and fim_text == whole
