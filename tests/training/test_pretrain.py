"""The training loop: both phases run, resume continues where it stopped, DDP on gloo."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file

from training.pretrain import TrainConfig, train
from tests.conftest import train_tiny_tokenizer

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from tests.conftest import TEXT
    from training.tokenizer import save_tokenizer_folder

    d = tmp_path_factory.mktemp("data")
    tok = train_tiny_tokenizer()
    save_tokenizer_folder(tok, d / "tok", 256)
    ids = np.array(tok.encode(TEXT * 20).ids, dtype=np.uint16)
    ids.tofile(d / "train.bin")
    ids[:2000].tofile(d / "val.bin")
    return d, tok.get_vocab_size()


def config(d, vocab, out, **kw) -> TrainConfig:
    model = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1)
    base = dict(out_dir=str(out), data_dir=str(d), tokenizer_dir=str(d / "tok"), model=model,
                seq_len=64, batch_size=2, log_every=2, eval_batches=1, warmup_steps=2,
                bf16=False, threads=1)
    base.update(kw)
    return TrainConfig(**base)


def test_both_phases_run_and_resume_continues(data, tmp_path):
    d, vocab = data
    # causal_fraction 0 -> diffusion from the first step; budget large, stop by steps
    cfg = config(d, vocab, tmp_path / "run", max_steps=4, causal_fraction=0.0)
    ckpt = train(cfg)
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 4
    first = load_file(str(ckpt / "model.safetensors"))
    cfg.max_steps = 7
    train(cfg)
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 7 and "diffusion" in state["phase_start"]
    second = load_file(str(ckpt / "model.safetensors"))
    assert any((first[k] != second[k]).any() for k in first)
    log = [json.loads(l) for l in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6]
    final = json.loads((tmp_path / "run" / "final_eval.json").read_text())
    assert final["val_masked@0.5"] > 0


def test_causal_phase(data, tmp_path):
    d, vocab = data
    cfg = config(d, vocab, tmp_path / "run", max_steps=3, causal_fraction=1.0)
    ckpt = train(cfg)
    assert list(json.loads((ckpt / "state.json").read_text())["phase_start"]) == ["causal"]


def test_config_rejects_contradictions(tmp_path):
    with pytest.raises(ValueError, match="causal_fraction"):
        TrainConfig(causal_fraction=1.5)
    bad = tmp_path / "bad.toml"
    bad.write_text('lr = 1e-3\nlearning_rate = 2\n')
    with pytest.raises(ValueError, match="unknown keys"):
        TrainConfig.from_toml(bad)


def test_ddp_two_cpu_processes_on_gloo(data, tmp_path):
    d, vocab = data
    cfg = config(d, vocab, tmp_path / "ddp", max_steps=3, causal_fraction=0.0)
    script = tmp_path / "run.py"
    script.write_text(
        "import json, sys\nfrom training.pretrain import TrainConfig, train\n"
        f"cfg = TrainConfig(**json.loads({json.dumps(json.dumps(cfg.__dict__))}))\n"
        "train(cfg)\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_port=29517", str(script)], env=env, capture_output=True,
                          text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = json.loads((tmp_path / "ddp" / "last" / "state.json").read_text())
    assert state["step"] == 3 and state["tokens"] == 3 * 2 * 64 * 2  # two processes' batches


def test_init_from_a_model_folder_starts_from_its_weights(data, tmp_path):
    import torch

    from engine.loading import load_model
    from engine.model import DreamConfig, DreamModel
    from training.export import save_model_folder

    d, vocab = data
    cfg = config(d, vocab, tmp_path / "run", max_steps=1, causal_fraction=0.0, lr=0.0,
                 diffusion_lr=0.0)
    torch.manual_seed(99)
    source = DreamModel(DreamConfig(**cfg.model))
    folder = save_model_folder(source, d / "tok", tmp_path / "src", dtype=torch.float32)
    cfg.init_from = str(folder)
    ckpt = train(cfg)
    trained = load_file(str(ckpt / "model.safetensors"))
    reference = load_model(folder, "cpu", "float32").model.state_dict()
    assert torch.equal(trained["model.norm.weight"], reference["model.norm.weight"])
    assert torch.allclose(trained["model.layers.0.mlp.up_proj.weight"],
                          reference["model.layers.0.mlp.up_proj.weight"])
