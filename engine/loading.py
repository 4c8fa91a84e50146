"""Find and load Dream-format model folders, offline, from safetensors only.

A model name resolves, in order: (1) a path on disk; (2) a folder shipped in the repository's
``models/``; (3) a Hugging Face repo id in the local HF cache (``$HF_HUB_CACHE``, the legacy
``$HUGGINGFACE_HUB_CACHE``, ``$HF_HOME/hub`` or ``~/.cache/huggingface/hub``, in
huggingface_hub's order), snapshot chosen by ``refs/main``; (4) ``gguf:<package>/<file>``, a
pretrained llama GGUF that an installed package ships, converted once (``engine.gguf_base``).
Nothing is downloaded and no remote code runs. Weights are read with safetensors on the meta device and assigned
(no copy through a randomly initialised model); ``pytorch_model.bin`` folders are refused
because unpickling runs arbitrary code.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.errors import ConfigError, ModelLoadError
from engine.model import DreamConfig, DreamModel

log = logging.getLogger(__name__)

REPO_MODELS = Path(__file__).resolve().parent.parent / "models"
DEFAULT_MODEL = "unmask-coder-135m"
MAX_ADAPTER_CHAIN = 4
SUPPORTED_MODEL_TYPES = {"Dream", "dream", "unmask"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# HF tensor name -> our module path. Dream/DiffuCoder use Qwen2's names, which are also ours;
# the table is literal so a renamed upstream tensor fails loudly instead of silently.
_LAYER_TENSORS = [
    "input_layernorm.weight", "post_attention_layernorm.weight",
    "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight",
    "self_attn.k_proj.bias", "self_attn.v_proj.weight", "self_attn.v_proj.bias",
    "self_attn.o_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
    "mlp.down_proj.weight",
]
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


def weight_name_map(cfg: DreamConfig) -> dict[str, str]:
    names = {"model.embed_tokens.weight": "model.embed_tokens.weight",
             "model.norm.weight": "model.norm.weight", "lm_head.weight": "lm_head.weight"}
    for i in range(cfg.num_hidden_layers):
        for t in _LAYER_TENSORS:
            names[f"model.layers.{i}.{t}"] = f"model.layers.{i}.{t}"
    return names


def hf_cache_dirs() -> list[Path]:
    dirs = []
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            dirs.append(Path(os.environ[var]))
    if os.environ.get("HF_HOME"):
        dirs.append(Path(os.environ["HF_HOME"]) / "hub")
    dirs.append(Path.home() / ".cache" / "huggingface" / "hub")
    return dirs


def _cached_snapshot(repo_id: str) -> Path | None:
    for cache in hf_cache_dirs():
        repo = cache / ("models--" + repo_id.replace("/", "--"))
        snapshots = repo / "snapshots"
        if not snapshots.is_dir():
            continue
        ref = repo / "refs" / "main"
        if ref.exists() and (snapshots / ref.read_text().strip()).is_dir():
            return snapshots / ref.read_text().strip()
        candidates = sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        if candidates:
            return candidates[0]
    return None


def resolve_model(name: str | None) -> Path:
    """Model name -> folder (or .gguf file). Raises ModelLoadError naming where it looked."""
    name = name or DEFAULT_MODEL
    if name.startswith("gguf:"):  # a pretrained llama GGUF, converted to Dream once
        from engine.gguf_base import base_folder_for

        return base_folder_for(name, cache_dir())
    path = Path(name).expanduser()
    if path.exists():
        return path.resolve()
    if (REPO_MODELS / name).is_dir():
        return REPO_MODELS / name
    if "/" in name and not name.startswith((".", "/")):
        snap = _cached_snapshot(name)
        if snap is not None:
            return snap
    looked = [str(path)]
    if not path.is_absolute():
        looked.append(str(REPO_MODELS / name))
    if "/" in name and not name.startswith((".", "/")):
        looked += [str(c / ("models--" + name.replace("/", "--"))) for c in hf_cache_dirs()]
    raise ModelLoadError(f"model {name!r} not found (looked in: {', '.join(looked)}); pass a "
                         "folder with --model, or copy a Hugging Face snapshot there "
                         "(e.g. `huggingface-cli download apple/DiffuCoder-7B-Instruct` on a "
                         "machine with network)")


def cache_dir() -> Path:
    """Unmask's own cache (built GGUFs, verified repository holes): ``$UNMASK_CACHE_DIR`` or
    ``$XDG_CACHE_HOME/unmask`` or ``~/.cache/unmask``; never inside a user's repository."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(os.environ.get("UNMASK_CACHE_DIR", Path(base) / "unmask"))


def list_models() -> list[tuple[str, Path]]:
    """Every model this machine can load: shipped ones and Dream folders in the HF cache."""
    found = []
    if REPO_MODELS.is_dir():
        found += [(p.name, p) for p in sorted(REPO_MODELS.iterdir())
                  if (p / "config.json").exists() or (p / "adapter_config.json").exists()]
    for cache in hf_cache_dirs():
        if not cache.is_dir():
            continue
        for repo in sorted(cache.glob("models--*")):
            repo_id = repo.name[len("models--"):].replace("--", "/")
            snap = _cached_snapshot(repo_id)
            if snap and (snap / "config.json").exists():
                try:
                    if read_config(snap) is not None:
                        found.append((repo_id, snap))
                except ModelLoadError:
                    continue
    return found


def read_config(folder: Path) -> DreamConfig:
    cfg_path = folder / "config.json"
    if not cfg_path.exists():
        raise ModelLoadError(f"{folder} has no config.json; point --model at a Dream/DiffuCoder "
                             "model folder")
    try:
        raw = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ModelLoadError(f"{cfg_path} is not valid JSON ({err}); restore it from the "
                             "original model") from err
    if raw.get("model_type") not in SUPPORTED_MODEL_TYPES:
        raise ModelLoadError(f"{cfg_path}: model_type {raw.get('model_type')!r} is not a Dream "
                             "diffusion model; use a Dream, DiffuCoder or Unmask checkpoint")
    try:
        return DreamConfig.from_dict(raw)
    except (TypeError, ValueError) as err:
        raise ModelLoadError(f"{cfg_path}: {err}; the config does not describe a valid "
                             "Dream model") from err


def weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as err:
            raise ModelLoadError(f"{index} is corrupt ({err}); re-download it") from err
        missing = [s for s in shards if not (folder / s).exists()]
        if missing:
            raise ModelLoadError(f"{folder} is missing shards {missing}; finish the download")
        return [folder / s for s in shards]
    files = sorted(folder.glob("*.safetensors"))
    if files:
        return files
    if list(folder.glob("*.bin")) or list(folder.glob("*.pt")):
        raise ModelLoadError(f"{folder} has only pickle weights (*.bin/*.pt), which can run "
                             "arbitrary code when loaded; convert them to safetensors first")
    raise ModelLoadError(f"{folder} has no *.safetensors weights; copy the model's weight files "
                         "there")


def pick_device(device: str) -> torch.device:
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if device not in ("cpu", "cuda", "mps") and not device.startswith("cuda:"):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda or mps")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for but no CUDA GPU is visible; use --device cpu")
    if device == "mps" and not (getattr(torch.backends, "mps", None)
                                and torch.backends.mps.is_available()):
        raise ConfigError("--device mps asked for but MPS is not available; use --device cpu")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device, stored: str) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cpu":
            # bf16 matmuls are ~2x faster than fp32 on CPUs with avx512_bf16 / AMX.
            return torch.bfloat16 if _cpu_has_bf16() else torch.float32
        return DTYPES.get(stored, torch.bfloat16)
    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return DTYPES[dtype]


def _cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass
class LoadedModel:
    folder: Path
    config: DreamConfig
    model: DreamModel
    device: torch.device
    dtype: torch.dtype


def base_folder(folder: Path) -> Path:
    """The model folder behind ``folder``: itself, or the root of its chain of LoRA adapters,
    whose tokenizer and config every adapter of the chain uses."""
    return adapter_chain(folder)[-1]


def adapter_chain(folder: Path) -> list[Path]:
    """``folder``, then each adapter's base down to a model folder: an adapter's base may be an
    adapter too (a personalization of the shipped adapter)."""
    from engine.lora import is_adapter

    chain = [folder]
    while is_adapter(chain[-1]):
        if len(chain) > MAX_ADAPTER_CHAIN:
            raise ModelLoadError(f"{folder}: more than {MAX_ADAPTER_CHAIN} adapters stacked "
                                 "(or a cycle); merge it into a model folder first")
        chain.append(adapter_base(chain[-1]))
    return chain


def adapter_base(folder: Path) -> Path:
    """The model an adapter folder was trained on (``base_model_name_or_path``)."""
    from engine.lora import adapter_config

    return resolve_model(adapter_config(folder)["base_model_name_or_path"])


def load_model(folder: Path, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Load a Dream-format folder onto ``device`` in ``dtype``, straight from safetensors; a
    peft LoRA adapter folder loads its base model with the adapter merged in."""
    from safetensors import SafetensorError, safe_open

    if base_folder(folder) != folder:  # an adapter: its base (maybe an adapter) merged first
        from engine.lora import merge_adapter

        loaded = load_model(adapter_base(folder), device, dtype)
        merge_adapter(loaded.model, folder)
        return LoadedModel(folder, loaded.config, loaded.model, loaded.device, loaded.dtype)

    cfg = read_config(folder)
    dev = pick_device(device)
    dt = pick_dtype(dtype, dev, cfg.torch_dtype)
    names = weight_name_map(cfg)
    state: dict[str, torch.Tensor] = {}
    for f in weight_files(folder):
        try:
            with safe_open(str(f), framework="pt", device="cpu") as fh:
                for key in fh.keys():
                    if key.endswith(IGNORED_SUFFIXES):
                        continue
                    if key not in names:
                        raise ModelLoadError(f"{f.name}: unexpected tensor {key!r}; this is not "
                                             "a Dream/Qwen2 checkpoint")
                    state[names[key]] = fh.get_tensor(key).to(dt)
        except (SafetensorError, OSError) as err:
            raise ModelLoadError(f"{f} is corrupt or truncated ({err}); re-download it") from err
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    with torch.device("meta"):
        model = DreamModel(cfg)
    expected = set(model.state_dict()) - ({"lm_head.weight"} if cfg.tie_word_embeddings else set())
    missing = sorted(expected - set(state))
    if missing:
        raise ModelLoadError(f"{folder} lacks tensors {missing[:3]}{'...' if len(missing) > 3 else ''}"
                             "; the checkpoint is incomplete")
    for key, tensor in state.items():
        want = model.state_dict()[key].shape
        if tensor.shape != want:
            raise ModelLoadError(f"{folder}: tensor {key} has shape {tuple(tensor.shape)} but "
                                 f"config.json implies {tuple(want)}; config and weights disagree")
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.to(dev).eval()
    return LoadedModel(folder, cfg, model, dev, dt)
