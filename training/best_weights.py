"""The best weights a run has passed, by its validation score, kept on disk beside its checkpoint.

Personalization writes the weights that scored best on files it never trained on (early
stopping) while its resumable checkpoint keeps the last ones, to go on from. The best must
outlive the process: a finished run asked again (the benchmark rerun, the same command twice)
resumes its checkpoint, and with the best only in memory it wrote the last weights over it.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


class BestWeights:
    """The lowest-scoring point of a run: its step, score and a copy of the trained tensors
    (``params``, in their order), saved to ``path`` each time a new best is offered. A run that
    resumes (``resumed``) starts from the saved best, a new run deletes what an earlier run at
    the same place left."""

    def __init__(self, path: Path, params: list[torch.Tensor], resumed: bool) -> None:
        self.path, self.params = path, params
        self.step: int | None = None
        self.score = float("inf")
        self.weights: list[torch.Tensor] = []
        if not resumed:
            path.unlink(missing_ok=True)
        elif path.exists():
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                meta = f.metadata()
                self.step, self.score = int(meta["step"]), float(meta["score"])
                self.weights = [f.get_tensor(str(i)) for i in range(len(params))]

    def offer(self, step: int, score: float) -> None:
        """Keep the current weights (and write them) when ``score`` is the lowest yet."""
        if score >= self.score:
            return
        from safetensors.torch import save_file

        self.step, self.score = step, score
        self.weights = [p.detach().clone() for p in self.params]
        tmp = self.path.with_name(self.path.name + ".new")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        save_file({str(i): w.contiguous() for i, w in enumerate(self.weights)}, str(tmp),
                  metadata={"step": str(step), "score": repr(score)})
        os.replace(tmp, self.path)  # a kill leaves the previous best or this one, whole

    def restore_unless(self, last_step: int, last_score: float, within: float) -> int:
        """The step whose weights the parameters end with: the best's, copied back, when it
        beats the last weights' score by more than ``within``; else the last (a tie goes to
        the weights that trained longest)."""
        if self.step is None or self.step == last_step or last_score - self.score <= within:
            return last_step
        with torch.no_grad():
            for p, w in zip(self.params, self.weights):
                p.copy_(w)
        return self.step
