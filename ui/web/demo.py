"""``unmask demo``: a Gradio app that makes masked diffusion visible.

One thin file over the engine's step stream (it never samples itself): a live canvas with one
frame per denoising step, tokens coloured by the step they were decoded at, a replay slider, the
paper's AR-ness metrics for each run (``engine.analysis``), a temperature sweep that plots
AR-ness against temperature (DiffuCoder's finding: hotter sampling, less left-to-right order),
and two settings side by side with time and tokens/s. Bound to 127.0.0.1, never shared, one job
at a time behind a bounded queue, input size and steps capped.
"""

from __future__ import annotations

import html
import time
from dataclasses import dataclass

from assistant.render import MASK_GLYPH, step_colour
from engine.analysis import ar_ness_report
from engine.errors import UnmaskError
from engine.choices import ALGORITHMS

HOLE = "<FILL>"
MAX_CHARS = 6000
MODEL_DEFAULT = "model default"
MAX_STEPS = 256
MAX_TOKENS = 256
EXAMPLES = [
    ["generate", 'def is_palindrome(s):\n    """Return True if s reads the same both ways."""\n',
     32, 32, "entropy", 0.0],
    ["infill", "def mean(values):\n    total = 0\n    for value in values:\n" + HOLE +
     "\n    return total / len(values)\n", 16, 16, "entropy", 0.0],
    ["generate", "import os\n\n\ndef list_python_files(folder):\n", 48, 24, "maskgit_plus", 0.0],
]
CSS = """
.unmask-canvas { font-family: ui-monospace, monospace; white-space: pre-wrap; line-height: 1.5;
  background: #111; color: #ddd; padding: 12px; border-radius: 8px; min-height: 120px; }
.unmask-canvas .ctx { color: #777; }
.unmask-canvas .mask { color: #555; }
.unmask-canvas .tok { color: #111; border-radius: 3px; }
"""


@dataclass
class Run:
    """What a finished run needs for replay and metrics."""

    texts: list[str]
    order: list[int]
    hidden: list[bool]
    steps: int
    before: str
    after: str


class Engines:
    """One loaded engine per model name, loaded on first use."""

    def __init__(self, device: str = "auto") -> None:
        self.device = device
        self.loaded: dict[str, object] = {}

    def get(self, name: str | None):
        from engine.api import Engine

        key = name or ""
        if key not in self.loaded:
            self.loaded[key] = Engine.load(name or None, device=self.device)
        return self.loaded[key]


def render(run: Run, upto: int | None = None) -> str:
    """HTML of the canvas with slots decoded at step <= ``upto`` shown (all when None)."""
    parts = [f'<div class="unmask-canvas"><span class="ctx">{html.escape(run.before)}</span>']
    for text, step, hidden in zip(run.texts, run.order, run.hidden):
        if step < 0 or (upto is not None and step > upto):
            parts.append(f'<span class="mask">{MASK_GLYPH}</span>')
        elif not hidden:
            colour = step_colour(step, run.steps)
            parts.append(f'<span class="tok" style="background:{colour}" title="step {step}">'
                         f"{html.escape(text)}</span>")
    parts.append(f'<span class="ctx">{html.escape(run.after)}</span></div>')
    return "".join(parts)


def _settings(engine, steps, max_tokens, alg, temperature, alg_temp, seed, **fast):
    """``Engine.settings``: the model's generation_config (decoding order included) under the
    values on the page, as in every other front end."""
    import gradio as gr

    steps, max_tokens = int(steps), int(max_tokens)
    if not 1 <= steps <= MAX_STEPS or not 1 <= max_tokens <= MAX_TOKENS:
        raise gr.Error(f"steps must be 1..{MAX_STEPS} and max tokens 1..{MAX_TOKENS}")
    try:
        return engine.settings(max_new_tokens=max_tokens, steps=steps,
                               alg=None if alg == MODEL_DEFAULT else alg,
                               temperature=float(temperature),
                               alg_temp=float(alg_temp) or None, seed=int(seed or 0), **fast)
    except UnmaskError as err:
        raise gr.Error(str(err)) from err


def _stream(engine, mode: str, code: str, settings):
    import gradio as gr

    if len(code) > MAX_CHARS:
        raise gr.Error(f"the input is {len(code)} characters; the demo takes at most {MAX_CHARS}")
    if mode == "infill":
        if code.count(HOLE) != 1:
            raise gr.Error(f"mark exactly one hole with {HOLE} in the code")
        before, after = code.split(HOLE)
        return before, after, engine.infill_stream(before, after, settings)
    return code, "", engine.generate_stream(code, settings, raw=True)


def bar(value: float, width: int = 20) -> str:
    filled = round(max(0.0, min(1.0, value)) * width)
    return "█" * filled + "░" * (width - filled)


def summary(metrics: dict) -> str:
    """The finished run's AR-ness and speed as a small readable table (the JSON stays for API
    clients): 1.0 means strictly left to right, as an autoregressive model decodes."""
    rows = ["| | | |", "|---|---|---|"]
    for key in ("local@1", "global@1", "local@4"):
        if key in metrics:
            rows.append(f"| AR-ness {key} | `{bar(metrics[key])}` | {metrics[key]:.2f} |")
    rows.append(f"| forward passes | {metrics.get('forward passes')} for "
                f"{metrics.get('canvas')} slots | {metrics.get('steps')} steps |")
    rows.append(f"| engine time | {metrics.get('seconds')} s | "
                f"{metrics.get('tokens/s')} tokens/s |")
    note = f"\n\n_{metrics['note']}_" if metrics.get("note") else ""
    return ("**AR-ness** (DiffuCoder §4.1: share of steps that decode the next slot to the "
            "right; 1.0 = left to right) **and speed**\n\n" + "\n".join(rows) + note)


def denoise_frames(engines: Engines, model, mode, code, steps, max_tokens, alg, temperature,
                   alg_temp, seed, fast: dict | None = None):
    """Yield (canvas html, run, completion, metrics, readable summary) after every denoising
    step; ``fast`` adds fast-decoding settings (parallel unmasking, the context cache)."""
    import gradio as gr

    from engine.api import Completion

    try:
        engine = engines.get(model)
        settings = _settings(engine, steps, max_tokens, alg, temperature, alg_temp, seed,
                             **(fast or {}))
        before, after, stream = _stream(engine, mode, code, settings)
        run = Run([], [], [], settings.steps, before[-1500:], after[:800])
        for item in stream:
            if isinstance(item, Completion):
                run.texts = engine.tokenizer.token_texts(item.token_ids)
                metrics = {"steps": item.steps, "canvas": item.canvas_len,
                           "forward passes": item.extra.get("forward_passes"), **(
                               {"note": item.extra["note"]} if "note" in item.extra else {}),
                           "seconds": round(item.elapsed_s, 3),
                           "tokens/s": round(item.tokens_per_s, 1), **ar_ness_report(item.order)}
                yield render(run), run, item.completion, metrics, summary(metrics)
                return
            texts = engine.tokenizer.token_texts(item.canvas)
            hidden = [t in engine.end_ids for t in item.canvas]
            run = Run(texts, item.order, hidden, item.steps, before[-1500:], after[:800])
            progress = {"step": f"{item.step + 1}/{item.steps}"}
            yield render(run), run, "", progress, f"denoising: step {progress['step']}"
    except UnmaskError as err:
        raise gr.Error(str(err)) from err


def sweep(engines: Engines, model, mode, code, steps, max_tokens, alg, temps_text, samples):
    """AR-ness against temperature: the mean over ``samples`` seeds at each temperature."""
    import gradio as gr
    import pandas as pd

    try:
        temps = [float(t) for t in temps_text.replace(",", " ").split()]
    except ValueError as err:
        raise gr.Error("temperatures: numbers separated by commas, e.g. 0, 0.4, 0.8, 1.2") from err
    if not temps or len(temps) * int(samples) > 24:
        raise gr.Error("give 1 to 24 runs in total (temperatures x samples)")
    rows = []
    engine = engines.get(model)
    for temp in temps:
        for seed in range(int(samples)):
            s = _settings(engine, steps, max_tokens, alg, temp, 0, seed)
            res = engine.finish(_stream(engine, mode, code, s)[2])
            rows.append({"temperature": temp, "seed": seed, **ar_ness_report(res.order)})
    df = pd.DataFrame(rows)
    mean = df.groupby("temperature", as_index=False)[["local@1", "global@1"]].mean()
    long = mean.melt("temperature", var_name="metric", value_name="AR-ness")
    return long, df.round(3)


FAST = {
    "confidence threshold 0.9, blocks of 32, cache": {
        "alg": "confidence_threshold", "threshold": 0.9, "block_length": 32, "cache_refresh": 4},
    "EB-sampler gamma 0.1, blocks of 32, cache": {
        "alg": "eb", "gamma": 0.1, "block_length": 32, "cache_refresh": 4},
    "context cache only": {"cache_refresh": 8},
}
"""Fast-decoding presets for the side-by-side tab (benchmarks/decode_speed.py measures them)."""


def side_by_side(engines: Engines, model, mode, code, max_tokens, fast):
    """Vanilla decoding (the model's defaults, one token per pass) to the end, then the fast
    preset, each timed alone, streaming both canvases with their forward passes."""
    outs = ["", "", "", ""]
    for i, preset in enumerate((None, FAST.get(fast, {}))):
        start = time.perf_counter()
        for frame_html, _, _, metrics, _ in denoise_frames(
                engines, model, mode, code, max_tokens, max_tokens, MODEL_DEFAULT, 0.0, 0, 0,
                preset):
            outs[i] = frame_html
            if "tokens/s" in metrics:
                outs[2 + i] = (f"**{'vanilla' if preset is None else fast}**: "
                               f"{metrics['forward passes']} forward passes · engine "
                               f"{metrics['seconds']:.2f} s, {metrics['tokens/s']} tokens/s · "
                               f"on screen {time.perf_counter() - start:.2f} s")
            yield tuple(outs)


def build_demo(default_model: str | None = None, device: str = "auto"):
    import gradio as gr

    from engine.loading import list_models

    engines = Engines(device)
    choices = [default_model] if default_model else []
    choices += [name for name, _ in list_models() if name not in choices]
    first = choices[0] if choices else None
    with gr.Blocks(title="Unmask: watch a diffusion model write code") as demo:
        gr.Markdown("# Unmask: watch a masked-diffusion model write code\n"
                    f"Each `{MASK_GLYPH}` is a masked slot; tokens are coloured by the step that "
                    "decoded them (blue first, red last). Infill: mark the hole with `<FILL>`.")
        with gr.Row():
            model = gr.Dropdown(choices, value=first, label="Model", allow_custom_value=False)
            mode = gr.Radio(["generate", "infill"], value="generate", label="Mode")
        code = gr.Code(EXAMPLES[0][1], language="python", label="Prompt, or code with <FILL>")
        with gr.Row():
            steps = gr.Slider(1, MAX_STEPS, value=32, step=1, label="Steps")
            max_tokens = gr.Slider(4, MAX_TOKENS, value=32, step=1, label="Max new tokens")
            alg = gr.Dropdown([MODEL_DEFAULT, *ALGORITHMS], value=MODEL_DEFAULT,
                              label="Algorithm")
        with gr.Row():
            temperature = gr.Slider(0, 1.5, value=0.0, step=0.05, label="Temperature")
            alg_temp = gr.Slider(0, 1, value=0.0, step=0.05, label="alg_temp")
            seed = gr.Number(0, precision=0, label="Seed")
        with gr.Tab("Denoise"):
            run_btn = gr.Button("Run", variant="primary")
            canvas = gr.HTML(label="Canvas")
            replay = gr.Slider(0, 1, value=0, step=1, label="Replay: show the canvas after step")
            completion = gr.Textbox(label="Completion", lines=4)
            figures = gr.Markdown()
            metrics = gr.JSON(label="AR-ness and speed (JSON, for API clients)", visible=False)
            run_state = gr.State()
            gr.Examples(EXAMPLES, [mode, code, steps, max_tokens, alg, temperature])
        with gr.Tab("Compare temperatures"):
            temps = gr.Textbox("0, 0.4, 0.8, 1.2", label="Temperatures")
            samples = gr.Slider(1, 6, value=2, step=1, label="Seeds per temperature")
            sweep_btn = gr.Button("Sweep")
            plot = gr.LinePlot(x="temperature", y="AR-ness", color="metric",
                               label="Mean AR-ness against temperature")
            table = gr.Dataframe(label="Every run")
        with gr.Tab("Side by side"):
            fast = gr.Dropdown(list(FAST), value=next(iter(FAST)),
                               label="Fast decoding, against vanilla (one token per pass)")
            sbs_btn = gr.Button("Run both")
            with gr.Row():
                with gr.Column():
                    canvas_a, info_a = gr.HTML(), gr.Markdown()
                with gr.Column():
                    canvas_b, info_b = gr.HTML(), gr.Markdown()

        def run(*args):
            for frame_html, run_obj, text, info, shown in denoise_frames(engines, *args):
                yield (frame_html, run_obj, text, info, shown,
                       gr.update(maximum=max(1, run_obj.steps - 1), value=max(0, max(run_obj.order))))

        run_btn.click(run, [model, mode, code, steps, max_tokens, alg, temperature, alg_temp,
                            seed], [canvas, run_state, completion, metrics, figures, replay],
                      api_name="denoise", concurrency_limit=1)
        replay.change(lambda r, s: render(r, int(s)) if r else "", [run_state, replay], canvas,
                      api_name="replay", show_progress="hidden")
        sweep_btn.click(lambda *a: sweep(engines, *a),
                        [model, mode, code, steps, max_tokens, alg, temps, samples],
                        [plot, table], api_name="sweep", concurrency_limit=1)
        sbs_btn.click(lambda *a: (yield from side_by_side(engines, *a)),
                      [model, mode, code, max_tokens, fast],
                      [canvas_a, canvas_b, info_a, info_b], api_name="side_by_side",
                      concurrency_limit=1)
    demo.queue(max_size=8, default_concurrency_limit=1)
    return demo


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="unmask demo")
    ap.add_argument("--port", type=int, default=7860)
    ap.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    build_demo(args.model, args.device).launch(server_name=args.host, server_port=args.port,
                                               share=False, css=CSS, show_error=True)
    return 0
