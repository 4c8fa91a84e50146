"""The llama.cpp back end: GGUF export, token parity with torch, quantized agreement, refusals."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from engine.api import Engine, GenerationSettings
from engine.errors import BackendError, ModelLoadError
from tests.conftest import make_tiny_folder

PROMPTS = ["def add(a, b):\n", "class Stack:\n    def push(self, item):\n", "x = [1, 2, 3]\n"]


def test_missing_llama_cpp_is_a_clear_backend_error(monkeypatch):
    from engine import llamacpp

    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(BackendError, match="pip install 'unmask\\[llamacpp\\]'"):
        llamacpp._llama()


llama_cpp = pytest.importorskip("llama_cpp")
pytest.importorskip("gguf")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    # hidden 64 keeps q8_0 blocks whole (multiples of 32)
    return make_tiny_folder(tmp_path_factory.mktemp("gg"), seed=7)


@pytest.fixture(scope="module")
def torch_engine(folder):
    return Engine.load(str(folder), device="cpu", dtype="float32")


def gguf_engine(folder, tmp_path, quant):
    from engine.gguf_export import write_gguf

    path = write_gguf(folder, tmp_path / f"tiny-{quant}.gguf", quant)
    return Engine.load(str(path), backend="llamacpp")


def greedy(engine, prompt, steps=8, new=16):
    return engine.generate(prompt, GenerationSettings(max_new_tokens=new, steps=steps,
                                                      alg="entropy"), raw=True).token_ids


@pytest.mark.parametrize("quant", ["f32", "f16"])
def test_gguf_greedy_tokens_equal_torch(folder, torch_engine, tmp_path, quant):
    eng = gguf_engine(folder, tmp_path, quant)
    assert eng.backend == "llamacpp" and eng.mask_id == torch_engine.mask_id
    for p in PROMPTS:
        assert eng.tokenizer.encode(p) == torch_engine.tokenizer.encode(p)  # GGUF's own BPE
        assert greedy(eng, p) == greedy(torch_engine, p)


def test_logits_close_to_torch(folder, torch_engine, tmp_path):
    eng = gguf_engine(folder, tmp_path, "f32")
    x = torch.tensor([torch_engine.tokenizer.encode(PROMPTS[1]) + [torch_engine.mask_id] * 8])
    a = torch_engine.denoiser.logits(x).float()
    b = eng.denoiser.logits(x).float()
    assert (a - b).abs().max() < 1e-3


def test_q8_0_stays_close(folder, torch_engine, tmp_path):
    eng = gguf_engine(folder, tmp_path, "q8_0")
    same = total = 0
    for p in PROMPTS:
        a, b = greedy(eng, p), greedy(torch_engine, p)
        same += sum(x == y for x, y in zip(a, b))
        total += len(a)
    assert same / total >= 0.5  # measured agreement is reported by benchmarks/backends.py


def test_folder_with_backend_llamacpp_builds_a_cached_gguf(folder, torch_engine, tmp_path,
                                                           monkeypatch):
    monkeypatch.setenv("UNMASK_CACHE_DIR", str(tmp_path / "cache"))
    eng = Engine.load(str(folder), backend="llamacpp")
    cached = list((tmp_path / "cache" / "gguf").glob("*.gguf"))
    assert len(cached) == 1 and cached[0].name.endswith("-f16.gguf")
    assert greedy(eng, PROMPTS[0]) == greedy(torch_engine, PROMPTS[0])
    Engine.load(str(folder), backend="llamacpp")
    assert list((tmp_path / "cache" / "gguf").glob("*.gguf")) == cached  # built once


def test_canvas_longer_than_context_is_an_error_not_an_abort(folder, tmp_path):
    from engine.gguf_export import write_gguf
    from engine.llamacpp import LlamaCppDenoiser

    den = LlamaCppDenoiser(write_gguf(folder, tmp_path / "t.gguf", "f32"), n_ctx=32)
    with pytest.raises(BackendError, match="context"):
        den.logits(torch.zeros(1, 40, dtype=torch.long))


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_corrupt_and_non_diffusion_gguf_are_refused_cleanly(folder, tmp_path):
    import gguf
    import numpy as np

    bad = tmp_path / "corrupt.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 64)
    other = tmp_path / "llama.gguf"
    w = gguf.GGUFWriter(str(other), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file(), w.write_kv_data_to_file(), w.write_tensors_to_file(), w.close()
    for path, needle in ((bad, "not a valid GGUF"), (other, "not a Dream")):
        r = run_cli("generate", "--model", str(path), "--prompt", "x")
        assert r.returncode == 3, r.stderr  # a clean error, not SIGABRT (134)
        assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1
    with pytest.raises(ModelLoadError):
        Engine.load(str(bad), backend="llamacpp")


def test_export_cli_writes_each_quant(folder, tmp_path):
    for quant in ("f16", "q8_0"):
        out = tmp_path / f"m-{quant}.gguf"
        r = run_cli("export", "gguf", "--model", str(folder), "--out", str(out), "--quant", quant)
        assert r.returncode == 0, r.stderr
        from engine.llamacpp import read_gguf_header

        assert read_gguf_header(out)["arch"] == "dream"


def test_gguf_carries_the_models_generation_defaults(tmp_path):
    # a GGUF has no generation_config.json beside it: the export stores it in the metadata, so
    # a .gguf decodes in the same order as the folder (here left to right) at default settings
    # and ends completions at the same pads
    import json
    import shutil

    src = make_tiny_folder(tmp_path / "src", seed=7)
    folder = tmp_path / "l2r"
    shutil.copytree(src, folder)
    cfg = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps(
        {**cfg, "block_length": 1, "alg": "maskgit_plus", "steps": 16, "max_new_tokens": 16,
         "pad_cycle_token_ids": [40, 41]}))
    torch_eng = Engine.load(str(folder), device="cpu", dtype="float32")
    gg = gguf_engine(folder, tmp_path, "f32")
    assert gg.defaults == torch_eng.defaults and gg.defaults["block_length"] == 1
    assert gg.end_ids == torch_eng.end_ids and {40, 41} < gg.end_ids
    assert gg.settings() == torch_eng.settings()
    for p in PROMPTS:  # default settings: the same tokens on both back ends
        a = torch_eng.generate(p, raw=True)
        b = gg.generate(p, raw=True)
        assert a.token_ids == b.token_ids and a.steps == b.steps == 16


def test_the_shipped_model_agrees_across_back_ends_at_default_settings(tmp_path):
    from engine.gguf_export import write_gguf
    from engine.loading import resolve_model

    torch_eng = Engine.load(device="cpu", dtype="float32")
    gg = Engine.load(str(write_gguf(resolve_model(None), tmp_path / "shipped.gguf", "f16")))
    assert gg.backend == "llamacpp" and gg.defaults == torch_eng.defaults
    prefix, suffix = "def mean(values):\n    total = 0\n", "\n    return total / len(values)\n"
    # the diffusion decoding agrees; the parent's rerank is the torch back end's alone
    a = torch_eng.infill(prefix, suffix, max_new_tokens=16, steps=16, parent_branches=0)
    b = gg.infill(prefix, suffix, max_new_tokens=16, steps=16)
    assert a.completion == b.completion and a.steps == b.steps
