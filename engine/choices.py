"""The engine's named choices, in a module without torch so command lines and settings screens
can offer them instantly. Every list of algorithms, back ends or length strategies is this one."""

ALGORITHMS = ("origin", "maskgit_plus", "topk_margin", "entropy", "confidence_threshold", "eb")
"""Rules for which masked slots a step commits (``engine.sampler``): Dream's four, which commit
a scheduled number per step, and two parallel rules that commit as many as are safe: Fast-dLLM's
confidence threshold and the entropy-bounded EB-sampler."""
PARALLEL_ALGORITHMS = ("confidence_threshold", "eb")
BACKENDS = ("auto", "torch", "llamacpp")
"""auto = torch: its bf16 forward is the fastest measured on CPU (README back-end table)."""
LENGTH_STRATEGIES = ("adaptive", "fixed")
"""Infill canvas: probe the hole's length first, or use max_new_tokens as upstream does."""
MAX_PARENT_BRANCHES = 8
"""The most lines an adapted model's parent writes for a single-line rerank (``engine.rerank``):
each is one more row of its batched passes."""
