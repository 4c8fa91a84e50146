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
import torch.distributions as dists
import torch.nn.functional as F

from engine.api import Engine, GenerationSettings
from engine.loading import load_model
from engine.sampler import SamplerSettings, denoise, padding_inputs
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
        if not isinstance(attention_mask, torch.Tensor):  # upstream passes "full"
            attention_mask = torch.ones(x.shape[0], 1, x.shape[1], x.shape[1], dtype=torch.bool)
        return self.hf(input_ids=x, attention_mask=attention_mask, position_ids=tok_idx)


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
    if temperature > 0:
        try:
            x0 = dists.Categorical(probs=probs).sample()
            confidence = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
        except Exception:  # upstream: a bare except
            confidence, x0 = probs.max(dim=-1)
    else:
        confidence, x0 = probs.max(dim=-1)
    if margin_confidence:
        sorted_probs, _ = torch.sort(probs, dim=-1, descending=True)
        confidence = sorted_probs[:, 0] - sorted_probs[:, 1]
    if neg_entropy:
        log_probs = torch.log(probs + 1e-10)
        confidence = torch.sum(probs * log_probs, dim=-1)
    return confidence, x0


def upstream_sample(model, x, mask_token_id, steps, alg, eps=1e-3, top_p=None, top_k=None,
                    alg_temp=None, temperature=0.0, attention_mask=None):
    if attention_mask is not None and torch.any(attention_mask == 0.0):
        attention_mask = F.pad(attention_mask, (0, x.shape[1] - attention_mask.shape[1]),
                               value=1.0)
        tok_idx = attention_mask.long().cumsum(-1) - 1
        tok_idx.masked_fill_(attention_mask == 0, 1)
        attention_mask = torch.logical_and(attention_mask.unsqueeze(1).unsqueeze(-2),
                                           attention_mask.unsqueeze(1).unsqueeze(-1))
    else:
        tok_idx = None
        attention_mask = "full"
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        mask_index = x == mask_token_id
        logits = model(x, attention_mask, tok_idx).logits
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
    # every slot decoded, at the step Dream's schedule says: int(M (1 - s/t)) of the M left
    ts, left, counts = torch.linspace(1, 1e-3, 7), torch.tensor(12.0), []
    for i in range(6):
        counts.append(int(left) if i == 5 else int(left * (1 - ts[i + 1] / ts[i])))
        left -= counts[-1]
    assert [res.order.count(j) for j in range(6)] == counts and sum(counts) == 12


class OursModel:
    def __init__(self, model):
        self.model = model

    def logits(self, x, attention_mask, position_ids):
        return self.model(x, attention_mask, position_ids)


@pytest.mark.parametrize("alg", ["origin", "maskgit_plus", "topk_margin", "entropy"])
@pytest.mark.parametrize("extra", [dict(temperature=0.8), dict(temperature=1.2, top_p=0.9),
                                   dict(temperature=0.7, top_k=20),
                                   dict(temperature=0.5, alg_temp=0.5)])
def test_sampled_decoding_matches_upstream_draw_for_draw(untied, alg, extra):
    # both sides consume the same uniform draws: upstream from the global RNG seeded 7, ours
    # from an explicit generator seeded 7, in the same order (position rand, token, position)
    if alg == "origin" and "alg_temp" in extra:
        pytest.skip("origin has no alg_temp")
    loaded = load_model(untied, "cpu", "float32")
    ref = UpstreamModel(hf_reference(untied))
    mask = loaded.config.mask_token_id
    x = torch.cat([torch.randint(5, 100, (2, 5), generator=torch.Generator().manual_seed(1)),
                   torch.full((2, 12), mask)], dim=1)
    torch.manual_seed(7)
    expected = upstream_sample(ref, x.clone(), mask, 6, alg, **extra)
    ours = x.clone()
    list(denoise(OursModel(loaded.model), ours, mask, SamplerSettings(steps=6, alg=alg, **extra),
                 torch.Generator().manual_seed(7)))
    assert torch.equal(ours, expected)
    assert (ours != mask).all()


@pytest.mark.parametrize("eps", [1e-2, 0.2])
def test_eps_changes_the_schedule_as_upstream(untied, eps):
    loaded = load_model(untied, "cpu", "float32")
    ref = UpstreamModel(hf_reference(untied))
    mask = loaded.config.mask_token_id
    x = torch.cat([torch.randint(5, 100, (1, 4)), torch.full((1, 20), mask)], dim=1)
    expected = upstream_sample(ref, x.clone(), mask, 7, "entropy", eps=eps)
    ours = x.clone()
    list(denoise(OursModel(loaded.model), ours, mask, SamplerSettings(steps=7, eps=eps)))
    assert torch.equal(ours, expected)


def test_left_padded_batch_matches_upstream_padding_mask(untied):
    loaded = load_model(untied, "cpu", "float32")
    ref = UpstreamModel(hf_reference(untied))
    mask = loaded.config.mask_token_id
    prompts = torch.randint(5, 100, (2, 6), generator=torch.Generator().manual_seed(2))
    real = torch.ones(2, 6, dtype=torch.long)
    real[0, :3] = 0  # the first prompt is 3 tokens, left-padded
    prompts[0, :3] = loaded.config.eos_token_id
    x = torch.cat([prompts, torch.full((2, 10), mask)], dim=1)
    expected = upstream_sample(ref, x.clone(), mask, 5, "entropy", attention_mask=real.float())
    attn, pos = padding_inputs(torch.cat([real, torch.ones(2, 10, dtype=torch.long)], dim=1))
    ours = x.clone()
    list(denoise(OursModel(loaded.model), ours, mask, SamplerSettings(steps=5), None, attn, pos))
    assert torch.equal(ours, expected)
    unpadded = x.clone()  # and the mask matters: without it the padded row decodes differently
    list(denoise(OursModel(loaded.model), unpadded, mask, SamplerSettings(steps=5)))
    assert not torch.equal(unpadded[0], expected[0]) and torch.equal(unpadded[1], expected[1])
