"""The web demo: streamed frames through gradio_client, and a real headless Chromium."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("gradio")

from ui.web.demo import CSS, build_demo  # noqa: E402

PROMPT = "def f(x):\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tiny_model):
    demo = build_demo(str(tiny_model), "cpu")
    _, url, share = demo.launch(server_name="127.0.0.1", server_port=free_port(),
                                prevent_thread_lock=True, css=CSS, quiet=True)
    assert share is None and url.startswith("http://127.0.0.1:")
    yield url, str(tiny_model)
    demo.close()


def test_streams_a_frame_per_step_and_matches_the_cli(served, tiny_model):
    from gradio_client import Client

    url, model = served
    client = Client(url, verbose=False)
    steps = 6
    job = client.submit(model, "generate", PROMPT, steps, 12, "entropy", 0.0, 0.0, 3,
                        api_name="/denoise")
    final = job.result(timeout=120)
    outputs = job.outputs()
    assert len(outputs) >= steps + 1  # one frame per step, then the finished run
    masks = [o[0].count("░") for o in outputs]
    assert masks == sorted(masks, reverse=True) and masks[-1] == 0
    completion, metrics = final[1], final[2]
    assert metrics["steps"] == steps and 0 <= metrics["local@1"] <= 1
    shown = final[3]  # what a person reads: figures, not a JSON box
    assert f"{metrics['local@1']:.2f}" in shown and "forward passes" in shown
    assert "tokens/s" in shown and "{" not in shown
    cli = subprocess.run([sys.executable, "-m", "cli", "generate", "--model",
                          str(tiny_model), "--prompt", PROMPT, "--raw", "--json", "--steps",
                          str(steps), "--max-new-tokens", "12", "--alg", "entropy", "--seed", "3",
                          "--device", "cpu"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["completion"] == completion


def test_infill_needs_exactly_one_hole(served):
    from gradio_client import Client

    url, model = served
    with pytest.raises(Exception, match="hole"):
        Client(url, verbose=False).predict(model, "infill", "no hole here", 4, 4, "entropy",
                                           0.0, 0.0, 0, api_name="/denoise")


def test_temperature_sweep_returns_ar_ness_per_temperature(served):
    from gradio_client import Client

    url, model = served
    plot, table = Client(url, verbose=False).predict(
        model, "generate", PROMPT, 8, 8, "entropy", "0, 1.0", 2, api_name="/sweep")
    rows = table["data"]
    assert len(rows) == 4 and {r[0] for r in rows} == {0.0, 1.0}


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian chromium")
def test_headless_chromium_runs_an_example(served, tmp_path):
    pytest.importorskip("playwright")
    from playwright.sync_api import sync_playwright

    url, _ = served
    shot = Path(tmp_path) / "demo.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(url)
        page.get_by_text("Run", exact=True).first.wait_for(timeout=30_000)
        page.locator(".gr-samples-table tr, table tbody tr, .examples button").first.click()
        page.get_by_role("button", name="Run", exact=True).click()
        page.wait_for_function("document.body.innerText.includes('tokens/s')", timeout=60_000)
        assert page.locator(".unmask-canvas .tok").count() > 0
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 10_000
