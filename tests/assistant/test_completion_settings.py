"""Editor completion settings follow the model's generation_config (block decoding, stops)."""

from __future__ import annotations

import json

from assistant.completion import CompletionService
from assistant.settings import AssistantSettings
from engine.api import Engine


def test_block_length_comes_from_the_model_and_single_line_stops_at_newline(tiny_model, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(tiny_model, folder)
    cfg = json.loads((folder / "generation_config.json").read_text())
    (folder / "generation_config.json").write_text(json.dumps({**cfg, "block_length": 1,
                                                               "alg": "topk_margin"}))
    service = CompletionService(AssistantSettings())
    service.holder.engine = Engine.load(str(folder), device="cpu", dtype="float32")
    single, multi = service.settings_for("single"), service.settings_for("multi")
    assert single.block_length == multi.block_length == 1
    assert single.stop == ("\n",) and multi.stop == ()
    assert single.alg == "topk_margin"  # the model's default when the user set none
    service.settings = AssistantSettings(alg="origin", temperature=0.3)
    assert (service.settings_for("multi").alg, service.settings_for("multi").temperature) == \
        ("origin", 0.3)
    assert service.settings_for("multi", seed=2).temperature == 0.6  # another candidate samples
    service.holder.engine = Engine.load(str(tiny_model), device="cpu", dtype="float32")
    assert service.settings_for("multi").block_length is None
