"""The parent's own continuations as infilling targets: batched greedy decoding equals the
one-row parent, records are whole lines after a healed cut and resume after a stop, holes lie
only in the continuation, and a run trains on them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.autoregressive import greedy_continue
from engine.errors import ConfigError
from engine.loading import load_model, resolve_model
from training import parent_lines
from training.adapt import train
from training.objectives import Specials, causal_lm_loss, infill_batch, newline_tokens


def _parent(cfg, steps: int = 0):
    """The tiny base, optionally trained causally on the test corpus until it writes it back
    (a random one never writes a line, so it cannot make a record)."""
    model = load_model(resolve_model(cfg.base), "cpu", "float32").model
    data = np.fromfile(Path(cfg.data_dir) / "train.bin", dtype=np.uint16).astype(np.int64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        at = torch.randint(len(data) - 65, (8,), generator=gen).tolist()
        loss, _ = causal_lm_loss(model, torch.tensor(np.stack([data[a:a + 65] for a in at])))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def _build(cfg, tok, out: Path, count: int, model, reject=None) -> int:
    data = np.fromfile(Path(cfg.data_dir) / "train.bin", dtype=np.uint16)
    return parent_lines.build(model, tok, data, out, count, context_len=64, prompt_len=16,
                              max_new=48, batch=4, seed=1, end_ids={0}, reject=reject)


def test_batched_greedy_rows_equal_the_one_row_parent(setup):
    config, tok = setup
    model = _parent(config("g"))
    rows = torch.tensor([tok.encode(TEXT_A)[:12], tok.encode(TEXT_B)[:12]])
    batched = parent_lines.greedy_rows(model, rows, 6).tolist()
    for row, out in zip(rows.tolist(), batched):
        assert greedy_continue(model, row, 6, end_ids=set()) == out


TEXT_A = "def add(a, b):\n    return a + b\n"
TEXT_B = "class Stack:\n    def push(self, item):\n"


def test_records_are_whole_lines_after_the_cut_and_a_stopped_build_resumes(setup, tmp_path):
    config, tok = setup
    cfg = config("r")
    model = _parent(cfg, steps=120)
    out = tmp_path / "lines"
    assert _build(cfg, tok, out, 4, model) >= 4
    first = {p.name: p.read_bytes() for p in out.glob("part-*.npz")}
    assert _build(cfg, tok, out, 4, model) == sum(  # nothing more to do: nothing written
        len(np.load(out / n)["offsets"]) - 1 for n in first)
    have = _build(cfg, tok, out, 12, model)
    assert all((out / n).read_bytes() == b for n, b in first.items())  # parts never rewritten
    records = parent_lines.load(out)
    assert len(records) == have >= 12
    data = np.fromfile(Path(cfg.data_dir) / "train.bin", dtype=np.uint16)
    indented = parent_lines.indented_newlines(tok, tok.vocab_size)
    for i in range(len(records)):
        ids, lo = records.window(i, 64)
        text = tok.decode(ids[lo:].tolist())
        assert ids.shape == (64,) and text.startswith("\n")
        assert len([ln for ln in text.splitlines() if ln.strip()]) >= parent_lines.MIN_LINES
        context = records.context[i]
        at = _find(data, context)  # the context is corpus text that stops before an indented line
        assert at >= 0 and indented[int(data[at + len(context)])]


def _find(data: np.ndarray, piece: np.ndarray) -> int:
    for a in range(len(data) - len(piece)):
        if np.array_equal(data[a:a + len(piece)], piece):
            return a
    return -1


def test_rejected_records_are_dropped_and_a_base_that_writes_no_line_stops(setup, tmp_path):
    config, tok = setup
    cfg = config("d")
    trained = _parent(cfg, steps=120)
    _build(cfg, tok, tmp_path / "kept", 6, trained,
           reject=lambda text: "push" if "push" in text else None)
    records = parent_lines.load(tmp_path / "kept")
    texts = [tok.decode(records.window(i, 64)[0][-len(records.continuation[
        records.offsets[i]:records.offsets[i + 1]]) - 16:].tolist()) for i in range(len(records))]
    assert len(records) >= 6 and not any("push" in t for t in texts)
    with pytest.raises(ConfigError, match="no usable continuation"):
        _build(cfg, tok, tmp_path / "none", 4, _parent(cfg))  # random: never writes lines


def test_parent_windows_hold_every_hole_inside_the_continuation(setup, tmp_path):
    config, tok = setup
    cfg = config("w")
    _build(cfg, tok, tmp_path / "lines", 4, _parent(cfg, steps=120))
    records = parent_lines.load(tmp_path / "lines")
    x = torch.zeros(6, 64, dtype=torch.long)
    gen = torch.Generator().manual_seed(2)
    mixed, lo = parent_lines.mix_into(x, records, 0.5, gen)
    assert any(lo) and not all(lo)  # some rows became records, some stayed corpus rows
    assert all(torch.equal(mixed[b], x[b]) for b in range(6) if not lo[b])
    sp = Specials(mask_id=tok.vocab_size, pad_id=0, eos_id=0, pad_cycle=(10, 11))
    table = newline_tokens(tok, tok.vocab_size + 1)
    for seed in range(8):
        seqs, _, masked, _, _ = infill_batch(mixed, sp, table, 1e-3, 32,
                                             torch.Generator().manual_seed(seed), 2,
                                             at_newline=True, lo=lo)
        for b in range(6):
            if lo[b]:
                assert masked[b].any() and torch.equal(seqs[b, :lo[b]], mixed[b, :lo[b]])
                assert not masked[b, :lo[b]].any()
    assert torch.equal(parent_lines.mix_into(x, records, 0.0, gen)[0], x)


def test_a_run_trains_on_parent_lines_and_names_the_missing_build(setup, tmp_path):
    config, tok = setup
    cfg = config("t", parent_lines=str(tmp_path / "lines"), parent_lines_share=1.0,
                 infill_share=1.0, parent_lines_new=24, max_steps=2)
    with pytest.raises(ConfigError, match="unmask train parent-lines"):
        train(cfg)
    _build(cfg, tok, tmp_path / "lines", 4, _parent(cfg, steps=120))
    assert (train(cfg) / "adapter_config.json").exists()


@pytest.mark.parametrize("toml,needle", [
    ('data_dir = "/no/such/data"\n', "sets no parent_lines"),
    ('parent_lines = "x"\ndata_dir = "/no/such/data"\n', "not found; run `unmask train corpus`"),
    ('parent_lines = "x"\nparent_lines_new = 600\n', "parent_lines_new"),
])
def test_the_build_command_names_a_bad_config_in_one_line(tmp_path, toml, needle):
    import subprocess
    import sys

    (tmp_path / "c.toml").write_text(toml)
    r = subprocess.run([sys.executable, "-m", "cli", "train", "parent-lines", "--config",
                        str(tmp_path / "c.toml")], capture_output=True, text=True, timeout=120,
                       cwd=Path(__file__).resolve().parents[2])
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and needle in lines[0], r.stderr
