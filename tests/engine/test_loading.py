"""Model folder loading: both tokenizer styles, shards, the HF cache, and refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from engine.api import Engine
from engine.errors import ModelLoadError
from engine.loading import load_model, resolve_model
from engine.tokenizer import DreamTokenizer
from tests.conftest import make_tiny_folder

CODE = "def add(a, b):\n    return a + b  # sum\n\tx = [1, 2, 3]\n"


def test_both_tokenizer_styles_encode_identically(tmp_path):
    fast = make_tiny_folder(tmp_path / "a")
    slow = make_tiny_folder(tmp_path / "b", style="vocab+merges")
    assert not (slow / "tokenizer.json").exists()
    ta, tb = DreamTokenizer.from_folder(fast), DreamTokenizer.from_folder(slow)
    ids = ta.encode(CODE)
    assert ids == tb.encode(CODE)
    assert tb.decode(ids) == CODE
    assert tb.token_id("<|mask|>") == ta.token_id("<|mask|>")
    assert tb.encode("x<|mask|>y", specials=True)[1] == tb.token_id("<|mask|>")
    for t in (ta, tb):  # user text never becomes a control token
        ids = t.encode("x = '<|mask|>'  # <|endoftext|>")
        assert t.token_id("<|mask|>") not in ids and t.token_id("<|endoftext|>") not in ids
        assert t.decode(ids) == "x = '<|mask|>'  # <|endoftext|>"


def test_sharded_and_single_file_give_same_logits(tmp_path):
    one = load_model(make_tiny_folder(tmp_path / "one", seed=5), "cpu", "float32").model
    three_dir = make_tiny_folder(tmp_path / "three", seed=5, shards=3)
    assert (three_dir / "model.safetensors.index.json").exists()
    three = load_model(three_dir, "cpu", "float32").model
    x = torch.arange(3, 20)[None]
    with torch.no_grad():
        assert torch.equal(one(x), three(x))


def test_tied_embeddings_and_dtype_key(tmp_path):
    folder = make_tiny_folder(tmp_path, tie=True, dtype=torch.bfloat16)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["dtype"] = cfg.pop("torch_dtype")  # newer transformers write "dtype"
    (folder / "config.json").write_text(json.dumps(cfg))
    loaded = load_model(folder, "cpu", "auto")
    assert loaded.model.lm_head.weight is loaded.model.model.embed_tokens.weight
    assert loaded.config.torch_dtype == "bfloat16"


def test_pickle_only_folder_is_refused(tmp_path):
    folder = make_tiny_folder(tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle"):
        load_model(folder, "cpu", "float32")


def test_corrupt_weights_and_config(tmp_path):
    folder = make_tiny_folder(tmp_path)
    (folder / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match="corrupt"):
        load_model(folder, "cpu", "float32")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        load_model(folder, "cpu", "float32")


def test_non_dream_config_is_refused(tmp_path):
    folder = make_tiny_folder(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["model_type"] = "llama"
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="not a Dream"):
        load_model(folder, "cpu", "float32")


def test_missing_model_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelLoadError) as err:
        resolve_model("apple/DiffuCoder-7B-Instruct")
    msg = str(err.value)
    assert "models--apple--DiffuCoder-7B-Instruct" in msg and "\n" not in msg


def test_hf_cache_snapshot_resolves_offline(tmp_path, monkeypatch):
    folder = make_tiny_folder(tmp_path / "src")
    repo = tmp_path / "hub" / "models--apple--DiffuCoder-7B-Instruct"
    snap = repo / "snapshots" / "abc123"
    shutil.copytree(folder, snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model("apple/DiffuCoder-7B-Instruct") == snap
    eng = Engine.load("apple/DiffuCoder-7B-Instruct", device="cpu", dtype="float32")
    assert eng.generate("def f():", max_new_tokens=4, steps=2).canvas_len == 4


def test_shape_mismatch_between_config_and_weights(tmp_path):
    folder = make_tiny_folder(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["hidden_size"] = 128
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="disagree"):
        load_model(folder, "cpu", "float32")


def test_config_without_tie_key_keeps_the_checkpoints_own_lm_head(tmp_path):
    # Dream's and Qwen2's default is untied: the real lm_head must not be dropped
    from safetensors.torch import load_file

    folder = make_tiny_folder(tmp_path, tie=False)
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["tie_word_embeddings"]
    (folder / "config.json").write_text(json.dumps(cfg))
    model = load_model(folder, "cpu", "float32").model
    stored = load_file(str(folder / "model.safetensors"))["lm_head.weight"]
    assert torch.equal(model.lm_head.weight, stored)
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)


@pytest.mark.parametrize("key,value,match", [("rope_scaling", {"type": "yarn", "factor": 4.0},
                                              "rope_scaling"),
                                             ("hidden_act", "gelu", "hidden_act")])
def test_unimplemented_architecture_options_are_refused_in_one_line(tmp_path, key, value, match):
    folder = make_tiny_folder(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=match) as err:
        load_model(folder, "cpu", "float32")
    assert "\n" not in str(err.value)


def test_malformed_generation_config_is_a_model_load_error(tmp_path):
    folder = make_tiny_folder(tmp_path)
    (folder / "generation_config.json").write_text('{"steps": 8,')
    with pytest.raises(ModelLoadError, match="generation_config.json is not valid JSON"):
        Engine.load(str(folder), device="cpu", dtype="float32")
    r = subprocess.run([sys.executable, "-m", "cli", "infill", "--model", str(folder),
                        "--prefix", "a"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert r.stderr.count("\n") == 1 and "generation_config.json" in r.stderr


def test_legacy_huggingface_hub_cache_variable_is_honoured(tmp_path, monkeypatch):
    folder = make_tiny_folder(tmp_path / "src")
    repo = tmp_path / "legacy" / "models--org--tiny-dream"
    shutil.copytree(folder, repo / "snapshots" / "s1")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("s1")
    for var in ("HF_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "legacy"))
    assert resolve_model("org/tiny-dream") == repo / "snapshots" / "s1"
