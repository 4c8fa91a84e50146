"""Parity of model and sampler against independent references on tiny random checkpoints.

The model reference is Hugging Face transformers' own Qwen2 implementation fed a full (all-True)
4-D attention mask, i.e. Dream's bidirectional attention. The sampler reference below is a line-by-
line transcription of Dream's upstream ``_sample`` / ``sample_tokens`` (generation_utils.py), run on
the transformers model: with temperature 0 both must produce the same tokens.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from engine.api import Engine, GenerationSettings
from engine.loading import load_model
from engine.sampler import SamplerSettings, denoise
from engine.tokenizer import DreamTokenizer
from tests.conftest import make_tiny_folder


def hf_reference(folder):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    raw = json.loads((folder / "config.json").read_text())
    raw.pop("model_type"), raw.pop("architectures")
    cfg = Qwen2Config(**{k: v for k, v in raw.items() if k != "torch_dtype"}, dtype="float32")
    cfg._attn_implementation = "sdpa"
    from safetensors.torch import load_file

    model = Qwen2ForCausalLM(cfg).eval()
    state = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"lm_head.weight"}
    if cfg.tie_word_embeddings:
        model.tie_weights()
    return model


class UpstreamModel:
    """Calls the HF model with Dream's bidirectional mask, returns ``.logits`` like DreamModel."""

    def __init__(self, hf):
        self.hf = hf

    @torch.no_grad()
    def __call__(self, x, attention_mask=None, tok_idx=None):
        full = torch.ones(x.shape[0], 1, x.shape[1], x.shape[1], dtype=torch.bool)
        return self.hf(input_ids=x, attention_mask=full, position_ids=tok_idx)


# ---- transcription of DreamLM/Dream generation_utils.py (upstream), kept close to the original ----
def top_p_logits(logits, top_p=None):
    sorted_logits, sorted_indices = torch.sort(logits, descending=True)
    cumulative_probs = torch.cumsum(F.softmax(sorted_logits, dim=-1), dim=-1)
    sorted_indices_to_remove = cumulative_probs > top_p
    sorted_indices_to_remove[..., 1:] = sorted_indices_to_remove[..., :-1].clone()
    sorted_indices_to_remove[..., 0] = 0
    mask = torch.zeros_like(logits, dtype=torch.bool, device=logits.device)
    mask = mask.scatter_(-1, sorted_indices, sorted_indices_to_remove)
    return logits.masked_fill(mask, torch.finfo(logits.dtype).min)


def top_k_logits(logits, top_k=None):
    top_k = min(top_k, logits.size(-1))
    indices_to_remove = logits < torch.topk(logits, top_k)[0][..., -1, None]
    return logits.masked_fill(indices_to_remove, torch.finfo(logits.dtype).min)


def sample_tokens(logits, temperature=0.0, top_p=None, top_k=None, margin_confidence=False,
                  neg_entropy=False):
    if temperature > 0:
        logits = logits / temperature
    if top_p is not None and top_p < 1:
        logits = top_p_logits(logits, top_p)
    if top_k is not None:
        logits = top_k_logits(logits, top_k)
    probs = torch.softmax(logits, dim=-1)
    confidence, x0 = probs.max(dim=-1)
    if margin_confidence:
        sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
        confidence = sorted_probs[:, 0] - sorted_probs[:, 1]
    if neg_entropy:
        log_probs = torch.log(probs + 1e-10)
        confidence = torch.sum(probs * log_probs, dim=-1)
    return confidence, x0


def upstream_sample(model, x, mask_token_id, steps, alg, eps=1e-3, top_p=None, top_k=None,
                    alg_temp=None):
    timesteps = torch.linspace(1, eps, steps + 1)
    temperature = 0.0
    for i in range(steps):
        mask_index = x == mask_token_id
        logits = model(x, None, None).logits
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
        mask_logits = logits[mask_index]
        t, s = timesteps[i], timesteps[i + 1]
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            x0 = torch.zeros_like(x[mask_index], dtype=torch.long) + mask_token_id
            transfer_index_t_s = torch.rand(*x0.shape) < p_transfer
            _, x0[transfer_index_t_s] = sample_tokens(mask_logits[transfer_index_t_s],
                                                      temperature=temperature, top_p=top_p,
                                                      top_k=top_k)
            x[mask_index] = x0.clone()
        else:
            if alg == "maskgit_plus":
                confidence, x0 = sample_tokens(mask_logits, temperature, top_p=top_p, top_k=top_k)
            elif alg == "topk_margin":
                confidence, x0 = sample_tokens(mask_logits, temperature, top_p=top_p, top_k=top_k,
                                               margin_confidence=True)
            else:
                confidence, x0 = sample_tokens(mask_logits, temperature, top_p=top_p, top_k=top_k,
                                               neg_entropy=True)
            num_mask_token = mask_index.sum() / mask_index.shape[0]
            number_transfer_tokens = int(num_mask_token * (1 - s / t)) if i < steps - 1 \
                else int(num_mask_token)
            full_confidence = torch.full_like(x, -torch.inf, dtype=logits.dtype)
            full_confidence[mask_index] = confidence
            if number_transfer_tokens > 0:
                if alg_temp is None or alg_temp == 0:
                    _, transfer_index = torch.topk(full_confidence, number_transfer_tokens)
                else:
                    full_confidence = F.softmax(full_confidence / alg_temp, dim=-1)
                    transfer_index = torch.multinomial(full_confidence,
                                                       num_samples=number_transfer_tokens)
                x_ = torch.zeros_like(x, dtype=torch.long) + mask_token_id
                x_[mask_index] = x0.clone()
                row_indices = torch.arange(x.size(0)).unsqueeze(1).expand_as(transfer_index)
                x[row_indices, transfer_index] = x_[row_indices, transfer_index]
    return x
# ---- end of transcription ----


@pytest.fixture(scope="module")
def untied(tmp_path_factory):
    return make_tiny_folder(tmp_path_factory.mktemp("untied"), seed=3, shards=3)


def test_model_logits_match_transformers_qwen2_bidirectional(untied):
    ours = load_model(untied, "cpu", "float32").model
    ref = hf_reference(untied)
    x = torch.randint(0, ours.config.vocab_size, (2, 37), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = ours(x)
        b = UpstreamModel(ref)(x).logits
    assert torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()


def test_attention_is_bidirectional(untied):
    ours = load_model(untied, "cpu", "float32").model
    x = torch.randint(5, ours.config.vocab_size, (1, 12))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1) % ours.config.vocab_size
    with torch.no_grad():
        # changing the last token changes the first position's logits: no causal mask
        assert not torch.allclose(ours(x)[0, 0], ours(y)[0, 0])
        assert torch.allclose(ours(x, causal=True)[0, 0], ours(y, causal=True)[0, 0], atol=1e-6)


@pytest.mark.parametrize("alg", ["origin", "maskgit_plus", "topk_margin", "entropy"])
@pytest.mark.parametrize("steps,new", [(16, 16), (8, 16), (5, 16)])
def test_greedy_sampler_matches_upstream(untied, alg, steps, new):
    loaded = load_model(untied, "cpu", "float32")
    ref = UpstreamModel(hf_reference(untied))
    tok = DreamTokenizer.from_folder(untied)
    mask = loaded.config.mask_token_id
    prompt = tok.encode("def add(a, b):\n    return")
    x_ref = torch.tensor([prompt + [mask] * new])
    x_ours = x_ref.clone()
    torch.manual_seed(123)  # upstream 'origin' draws from the global RNG
    expected = upstream_sample(ref, x_ref, mask, steps, alg)

    class Den:
        def logits(self, x, attention_mask, position_ids):
            return loaded.model(x)

    gen = torch.Generator().manual_seed(123)
    frames = list(denoise(Den(), x_ours, mask, SamplerSettings(steps=steps, alg=alg), gen))
    assert len(frames) == steps
    assert torch.equal(x_ours, expected)
    assert (x_ours != mask).all()


def test_batch_with_topk_and_top_p_filters_matches_upstream(untied):
    loaded = load_model(untied, "cpu", "float32")
    ref = UpstreamModel(hf_reference(untied))
    mask = loaded.config.mask_token_id
    x = torch.randint(5, 100, (3, 6))
    x = torch.cat([x, torch.full((3, 10), mask)], dim=1)
    expected = upstream_sample(ref, x.clone(), mask, 5, "entropy", top_p=0.9, top_k=20)

    class Den:
        def logits(self, x, attention_mask, position_ids):
            return loaded.model(x)

    ours = x.clone()
    list(denoise(Den(), ours, mask, SamplerSettings(steps=5, alg="entropy", top_p=0.9, top_k=20)))
    assert torch.equal(ours, expected)


def test_engine_infill_fixed_matches_upstream(untied):
    eng = Engine.load(str(untied), device="cpu", dtype="float32")
    ref = UpstreamModel(hf_reference(untied))
    pre, suf = eng.tokenizer.encode("def f(x):\n"), eng.tokenizer.encode("\n    return y\n")
    x = torch.tensor([pre + [eng.mask_id] * 12 + suf])
    expected = upstream_sample(ref, x, eng.mask_id, 6, "maskgit_plus")
    res = eng.infill("def f(x):\n", "\n    return y\n",
                     GenerationSettings(max_new_tokens=12, steps=6, alg="maskgit_plus",
                                        length="fixed"))
    assert res.token_ids == expected[0, len(pre):len(pre) + 12].tolist()
    assert sorted(set(res.order)) == list(range(6)) or min(res.order) >= 0
