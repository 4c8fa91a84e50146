"""Adapting a pretrained llama (a tiny GGUF) to masked diffusion: what trains, the exported
peft adapter equals the trained model, stop-and-resume equals one run, attention annealing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.loading import load_model
from tests.conftest import TEXT
from training.adapt import annealed_mask, prepare_model, train
from training.objectives import line_starts, newline_tokens
from training.pretrain import TokenWindows, find_checkpoint, load_checkpoint, token_line_ends


def test_lora_trains_only_adapter_norms_and_the_mask_row(setup):
    config, _ = setup
    cfg = config("a")
    model, new_ids = prepare_model(cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    export = train(cfg)
    state = load_checkpoint(find_checkpoint(Path(cfg.out_dir) / "last"), model,
                            torch.optim.AdamW([p for p in model.parameters() if p.requires_grad]))
    assert state["step"] == 4
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert any(".lora_B." in n for n in changed) and "model.norm.weight" in changed
    assert not any(n.endswith("base.weight") for n in changed)  # the frozen parent
    emb_delta = (model.model.embed_tokens.weight - before["model.embed_tokens.weight"]).abs()
    assert emb_delta[new_ids].sum() > 0 and emb_delta[:new_ids[0]].sum() == 0
    assert (export / "adapter_config.json").exists()


def test_exported_adapter_loads_as_the_trained_model(setup):
    config, tok = setup
    cfg = config("b", generation={"alg": "confidence_threshold", "threshold": 0.9})
    export = train(cfg)
    gen = json.loads((export / "generation_config.json").read_text())
    assert gen["alg"] == "confidence_threshold" and gen["threshold"] == 0.9
    assert gen["mask_token_id"] == tok.token_id("<|mask|>")
    trained, _ = prepare_model(cfg)
    load_checkpoint(find_checkpoint(Path(cfg.out_dir) / "last"), trained,
                    torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad]))
    trained.eval()
    loaded = load_model(export, "cpu", "float32").model
    x = torch.tensor([tok.encode(TEXT[:120])])
    x[0, 5:9] = trained.config.mask_token_id
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):  # as it trained: frozen base in bf16
            want = trained(x).float()
        got = loaded(x)
    # the adapter's LoRA matrices are stored in bf16 (half the size); merged once at load
    assert torch.allclose(got, want, atol=5e-2 * float(want.abs().max())), \
        (got - want).abs().max()


def test_stop_and_resume_equals_one_uninterrupted_run(setup):
    config, _ = setup
    whole = train(config("whole", max_steps=6))
    train(config("split", max_steps=3))
    split = train(config("split", max_steps=6))
    from safetensors.torch import load_file

    a = load_file(str(whole / "adapter_model.safetensors"))
    b = load_file(str(split / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-3), key
    log = (Path(config("split").out_dir) / "log.jsonl").read_text().splitlines()
    assert [int(line.split('"step": ')[1].split(",")[0]) for line in log] == [1, 2, 3, 4, 5, 6]


def test_a_run_can_start_from_a_shipped_adapter(setup):
    from safetensors.torch import load_file

    from engine.errors import ConfigError
    from training.adapt import init_from_adapter

    config, _ = setup
    shipped = train(config("shipped", max_steps=3, pad_cycle=[0, 1]))
    cfg = config("next", init=str(shipped), max_steps=3, pad_cycle=[0, 1])
    model, new_ids = prepare_model(cfg)
    state: dict = {}
    init_from_adapter(model, cfg, new_ids, state)
    # every weight the run trains starts as the shipped adapter has it (stored in bf16)
    saved = load_file(str(shipped / "adapter_model.safetensors"))
    params = dict(model.named_parameters())
    q = "model.layers.0.self_attn.q_proj.lora_B.weight"
    assert torch.equal(params[q], saved[f"base_model.model.{q}"].float())
    norm = "model.norm.weight"
    assert torch.equal(params[norm], saved[f"base_model.model.{norm}"].float())
    rows = model.model.embed_tokens.weight[new_ids]
    assert torch.equal(rows, saved["base_model.model.model.embed_tokens.token_adapter."
                                    "trainable_tokens_delta"].float())
    assert state["pad_cycle"] == [0, 1]  # trained rows: not reset to the end row
    # and a run from it trains on from there, into its own checkpoint
    train(cfg)
    found = find_checkpoint(Path(cfg.out_dir) / "last")
    assert json.loads((found / "state.json").read_text())["init"] == str(shipped)
    bad = config("bad", init=str(shipped), lora_rank=8, pad_cycle=[0, 1])
    model, new_ids = prepare_model(bad)
    with pytest.raises(ConfigError, match="rank"):
        init_from_adapter(model, bad, new_ids, {})


def test_distilled_run_keeps_snapshots_and_logs_the_parent_kl(setup):
    config, _ = setup
    cfg = config("distill", distill=0.5, snapshot_minutes=1e-9, max_steps=3, infill_share=0.5)
    export = train(cfg)
    out = Path(cfg.out_dir)
    assert sorted(p.name for p in out.glob("export-*")) == ["export-1", "export-2", "export-3"]
    assert (out / "export-2" / "adapter_model.safetensors").exists() and export.exists()
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(r["parent_kl"] >= 0 for r in records) and any(r["parent_kl"] > 0 for r in records)


def test_pad_cycle_rows_start_as_the_end_row_then_train_and_are_exported(setup):
    config, _ = setup
    cfg = config("rainbow", pad_cycle=[0, 1], max_steps=2, infill_share=1.0)
    model, new_ids = prepare_model(cfg)
    emb = model.model.embed_tokens.weight.detach()
    end_row, own_rows = emb[model.config.pad_token_id].clone(), emb[[0, 1]].clone()
    assert new_ids == [model.config.mask_token_id, 0, 1]
    export = train(cfg)
    gen = json.loads((export / "generation_config.json").read_text())
    assert gen["pad_cycle_token_ids"] == [0, 1]
    adapter = json.loads((export / "adapter_config.json").read_text())
    assert adapter["trainable_token_indices"] == {"embed_tokens": new_ids}

    def trained_rows() -> tuple[dict, torch.Tensor]:
        state = load_checkpoint(find_checkpoint(Path(cfg.out_dir) / "last"), model,
                                torch.optim.AdamW([p for p in model.parameters()
                                                   if p.requires_grad]))
        return state, model.model.embed_tokens.weight[[0, 1]].detach().clone()

    state, rows = trained_rows()
    assert state["pad_cycle"] == [0, 1]
    # started from the end row (2 small steps away from it, far from their own), then trained
    assert (rows - end_row).abs().max() < 0.1 < (rows - own_rows).abs().max()
    assert not torch.equal(rows[0], end_row) and not torch.equal(rows[0], rows[1])
    train(cfg)  # resumed at its last step: the trained rows are kept, not copied again
    assert torch.equal(trained_rows()[1], rows)


def test_full_fine_tune_exports_a_whole_dream_folder(setup):
    config, _ = setup
    export = train(config("full", lora_rank=0, max_steps=2))
    assert (export / "config.json").exists() and (export / "tokenizer.json").exists()
    assert not (export / "adapter_config.json").exists()


def test_annealed_attention_goes_from_causal_to_full():
    gen = torch.Generator().manual_seed(0)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    early = annealed_mask(2, 6, 0.0, gen)
    assert torch.equal(early[0, 0], causal)
    middle = annealed_mask(2, 6, 0.5, gen)
    assert bool((middle >= causal).all()) and bool(middle[:, :, ~causal].any())
    assert annealed_mask(2, 6, 1.0, gen) is None


def test_line_boundaries_of_a_merging_tokenizer_are_the_newline_tokens(setup):
    _, tok = setup
    ids = tok.encode("a = 1\n    b = 2\n    return b\n")
    table = newline_tokens(tok, tok.vocab_size)
    starts = line_starts(torch.tensor(ids), table, at_newline=True).tolist()
    texts = tok.token_texts(ids)
    assert starts and all("\n" in texts[i] for i in starts)
    assert tok.decode(ids[starts[0]:starts[1]]) == "\n    b = 2"


def test_top_level_windows_start_at_column_zero_definitions(setup, tmp_path):
    from engine.loading import base_folder, resolve_model

    config, tok = setup
    ends = token_line_ends(base_folder(resolve_model(config("t").base)), tok.vocab_size)
    ends[0] = True  # the end token ends a file, as train() marks it
    first = ("import os\n\ndef f(x):\n    def g():\n        return 1\n    return x\n"
             "class A:\n    pass\n")
    second = "def h():\n    return 2\n"
    ids = tok.encode(first) + [0] + tok.encode(second) + tok.encode("x = 1\n" * 4)
    np.array(ids, dtype=np.uint16).tofile(tmp_path / "defs.bin")
    windows = TokenWindows(tmp_path / "defs.bin", 8)
    firsts = [tok.encode(w)[0] for w in ("def", "class")]
    starts = windows.top_level_starts(firsts, ends)
    texts = [tok.decode(ids[s:s + 5]) for s in starts.tolist()]
    assert texts == ["def f", "class", "def h"]  # not the nested "    def g", not "import"

    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    aligned = windows.batch(6, gen(), starts, 1.0)
    assert {tok.decode(row[:5].tolist()) for row in aligned} <= set(texts)
    assert torch.equal(windows.batch(6, gen(), starts, 0.0), windows.batch(6, gen()))
