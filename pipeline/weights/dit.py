"""The InfiniteTalk DiT: random tiny weights, or Wan2.1-I2V-14B + the InfiniteTalk adapter (MODEL.md §3, §7).

Two Wan layouts are read: the original one (``config.json`` + ``diffusion_pytorch_model-0000N-of-0000M``
shards with Wan's own key names) and the diffusers one (a ``transformer/`` folder with diffusers' names). The
adapter file (``single/infinitetalk.safetensors``) holds official-named adapter keys only; they are merged
over the DiT's, and the whole is loaded strictly, as the reference does.

Memory: the model is built with its parameters on the meta device and adopts the checkpoint's tensors, each
read alone, cast and moved to the target device as it is read, so the 14B model exists once, on its device.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed
from safetensors import SafetensorError, safe_open

from pipeline.errors import WeightsError
from pipeline.models.transformer import InfiniteTalkTransformer3DModel
from pipeline.presets import INFINITETALK_14B
from pipeline.weights import lora
from pipeline.weights.checkpoint_files import finish_loading, read_json, read_tensors
from pipeline.weights.random_init import random_init
from pipeline.weights.strict import check_state_dict, load_state_dict_strict

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
DIFFUSERS_FOLDER = "transformer"
INDEX_FILE = "diffusion_pytorch_model.safetensors.index.json"
SINGLE_FILE = "diffusion_pytorch_model.safetensors"
_SHARD = re.compile(r"diffusion_pytorch_model-(\d+)-of-(\d+)\.safetensors")

# InfiniteTalk's own keys. Our modules carry the official names, so they need no renaming, but diffusers'
# substring renames must never see them (``audio_cross_attn`` contains ``cross_attn``).
_ADAPTER_KEY = re.compile(r"audio_proj\.|blocks\.\d+\.(audio_cross_attn|norm_x)\.")

# Wan's config.json field → our constructor argument (the original layout).
_ORIGINAL_CONFIG_FIELDS = {
    "num_heads": "num_attention_heads",
    "num_layers": "num_layers",
    "ffn_dim": "ffn_dim",
    "freq_dim": "freq_dim",
    "text_dim": "text_dim",
    "in_dim": "in_channels",
    "out_dim": "out_channels",
    "eps": "eps",
}


def is_adapter_key(key: str) -> bool:
    return _ADAPTER_KEY.match(key) is not None


def official_key_map(keys: Iterable[str]) -> dict[str, str]:
    """Official (Wan2.1 + InfiniteTalk) key → our key, for every key given.

    The Wan keys go through diffusers' ``convert_wan_transformer_to_diffusers`` (the mapping MODEL.md §3
    verified, norm2/norm3 swap included); it renames keys only, so it is fed the keys themselves as values.
    """
    keys = list(keys)
    mapping = {key: key for key in keys if is_adapter_key(key)}
    base = {key: key for key in keys if key not in mapping}
    if base:
        for ours, official in convert_wan_transformer_to_diffusers(base).items():
            mapping[official] = ours
    return mapping


def convert_official_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict in the official layout (Wan2.1 keys + InfiniteTalk adapter keys) → our model's keys.

    Unknown keys pass through (renamed as diffusers would) for the strict check to name.
    """
    mapping = official_key_map(state_dict)
    converted = {mapping[key]: tensor for key, tensor in state_dict.items()}
    if len(converted) != len(state_dict):
        raise WeightsError("official state dict: two tensors map to the same model key")
    return converted


def load_official_state_dict(
    model: InfiniteTalkTransformer3DModel,
    state_dict: Mapping[str, torch.Tensor],
    source: str = "official state dict",
    dtype: torch.dtype | None = None,
) -> InfiniteTalkTransformer3DModel:
    """Load an official-layout state dict into ``model`` strictly: the way to compare with the reference code.

    Take a ``WanModel`` of MeiGen-AI/InfiniteTalk (``wan/modules/multitalk_model.py``), pass its
    ``state_dict()`` here, and both models hold the same weights. Any missing, unexpected or mis-shaped
    tensor raises ``WeightsError`` naming it. The model adopts the given tensors (``assign=True``), so a
    meta-device model costs no second copy.
    """
    return load_state_dict_strict(model, convert_official_state_dict(state_dict), source, dtype=dtype)


def build_transformer(
    config: Mapping[str, Any],
    seed: int = 0,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> InfiniteTalkTransformer3DModel:
    """Random weights from ``seed`` (tiny preset, tests, benchmarks), in eval mode; the global RNG is left
    untouched.

    Off the host the model is built where it will run, in ``dtype``: initialising 14B parameters on the host
    in fp32 would take minutes and 56 GB of host memory. Under fake tensors (``bench.tensor_memory``) it is
    built the host's way and holds no data.
    """
    with random_init(seed, device, dtype):
        model = InfiniteTalkTransformer3DModel(**config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.data = parameter.data.to(parameter_dtype(model, name, dtype))
    model.rope.to(torch.float32)
    return model.eval().requires_grad_(False)


def load_transformer(
    wan_dir: Path,
    infinitetalk_file: Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    loras: Sequence[tuple[Path, float]] = (),
    config: Mapping[str, Any] | None = None,
) -> InfiniteTalkTransformer3DModel:
    """Wan2.1 I2V weights (either layout) + the InfiniteTalk adapter (+ LoRAs, fused), loaded strictly.

    The architecture comes from ``config`` (default: the 14B preset), never from the hub; the folder's own
    config.json is checked against it so that, say, a different head count cannot load silently.
    """
    wan_dir, infinitetalk_file = Path(wan_dir), Path(infinitetalk_file)
    config = dict(INFINITETALK_14B.transformer if config is None else config)
    folder, layout = _detect_layout(wan_dir)
    _check_folder_config(folder / CONFIG_FILE, layout, config)
    shards = find_shards(folder)
    if not infinitetalk_file.is_file():
        raise WeightsError(f"{infinitetalk_file}: missing (the InfiniteTalk adapter)")
    for path, _ in loras:
        if not Path(path).is_file():
            raise WeightsError(f"{path}: missing (LoRA)")

    model = _empty_model(config)
    state_dict: dict[str, torch.Tensor] = {}
    origins: dict[str, str] = {}
    for shard in shards:
        _read_into(
            state_dict, origins, model, shard, official=layout == "original", dtype=dtype, device=device
        )
    if layout == "diffusers":
        _drop_ignored(state_dict, origins)
    # The adapter is merged over the DiT: where it repeats a key, its tensor wins (the reference's update()).
    adapter: dict[str, torch.Tensor] = {}
    adapter_origins: dict[str, str] = {}
    _read_into(adapter, adapter_origins, model, infinitetalk_file, official=True, dtype=dtype, device=device)
    state_dict.update(adapter)
    origins.update(adapter_origins)

    source = f"{folder} + {infinitetalk_file.name}"
    _check(model, state_dict, origins, source)
    load_state_dict_strict(model, state_dict, source)
    for path, scale in loras:
        lora.fuse_lora(model, read_tensors(Path(path)), scale, source=str(path))
    logger.info("loaded the DiT from %s (%s layout) and %s", folder, layout, infinitetalk_file)
    return finish_loading(model, source, device)


def parameter_dtype(model: InfiniteTalkTransformer3DModel, name: str, dtype: torch.dtype) -> torch.dtype:
    """fp32 for the modules diffusers keeps in fp32 (time embedder, modulation, norms), else ``dtype``."""
    keep = type(model)._keep_in_fp32_modules
    return torch.float32 if any(part in keep for part in name.split(".")) else dtype


def find_shards(folder: Path) -> list[Path]:
    """The DiT's safetensors files in ``folder``: from the shard index, a single file, or the shard names."""
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = read_json(index, "shard index").get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise WeightsError(f"{index}: no weight_map")
        shards = [folder / str(name) for name in dict.fromkeys(weight_map.values())]
    elif (folder / SINGLE_FILE).is_file():
        shards = [folder / SINGLE_FILE]
    else:
        numbered = [
            m for p in folder.glob("diffusion_pytorch_model-*.safetensors") if (m := _SHARD.fullmatch(p.name))
        ]
        if not numbered:
            raise WeightsError(f"{folder}: no DiT weights ({INDEX_FILE}, {SINGLE_FILE} or numbered shards)")
        total = max(int(m.group(2)) for m in numbered)
        width = len(numbered[0].group(2))
        shards = [
            folder / f"diffusion_pytorch_model-{i:0{width}d}-of-{total:0{width}d}.safetensors"
            for i in range(1, total + 1)
        ]
    for shard in shards:
        if not shard.is_file():
            raise WeightsError(f"{shard}: missing (a DiT shard)")
    return shards


def _detect_layout(wan_dir: Path) -> tuple[Path, str]:
    if not wan_dir.is_dir():
        raise WeightsError(f"{wan_dir}: Wan2.1 folder does not exist")
    if (wan_dir / DIFFUSERS_FOLDER).is_dir():
        return wan_dir / DIFFUSERS_FOLDER, "diffusers"
    return wan_dir, "original"


def _check_folder_config(path: Path, layout: str, config: Mapping[str, Any]) -> None:
    raw = read_json(path, "the DiT config")
    if layout == "original":
        expected = {field: config[ours] for field, ours in _ORIGINAL_CONFIG_FIELDS.items()}
        expected["dim"] = config["num_attention_heads"] * config["attention_head_dim"]
        if raw.get("model_type", "i2v") != "i2v":
            raise WeightsError(
                f"{path}: model_type is {raw['model_type']!r}; InfiniteTalk needs the i2v model"
            )
    else:
        expected = dict(config)
    for field, want in expected.items():
        if field not in raw:
            continue
        have = raw[field]
        same = (
            math.isclose(float(have), float(want))
            if isinstance(want, float) and isinstance(have, (int, float))
            else _plain(have) == _plain(want)
        )
        if not same:
            raise WeightsError(f"{path}: {field} is {have!r}, the configured model has {want!r}")


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value


def _empty_model(config: Mapping[str, Any]) -> InfiniteTalkTransformer3DModel:
    """Parameters on the meta device (no memory, no init), RoPE tables real: they are in no checkpoint."""
    with torch.device("meta"):
        model = InfiniteTalkTransformer3DModel(**config)
    model.rope = WanRotaryPosEmbed(
        config["attention_head_dim"], config["patch_size"], model.config.rope_max_seq_len
    ).to(torch.float32)
    return model


def _read_into(
    state_dict: dict[str, torch.Tensor],
    origins: dict[str, str],
    model: InfiniteTalkTransformer3DModel,
    path: Path,
    *,
    official: bool,
    dtype: torch.dtype,
    device: torch.device | str,
) -> None:
    """Add ``path``'s tensors under our key names, each cast and moved as it is read (one in host memory)."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            keys = list(handle.keys())
            names = official_key_map(keys) if official else {key: key for key in keys}
            for key in keys:
                ours = names[key]
                if ours in state_dict:
                    raise WeightsError(f"{path}: tensor {key} appears twice in the checkpoint")
                tensor = handle.get_tensor(key)
                if tensor.is_floating_point():
                    tensor = tensor.to(device=device, dtype=parameter_dtype(model, ours, dtype))
                state_dict[ours] = tensor
                origins[ours] = f"{key} in {path.name}" if key != ours else path.name
    except (SafetensorError, OSError) as error:
        raise WeightsError(f"{path}: cannot read the checkpoint ({error})") from None


def _drop_ignored(state_dict: dict[str, torch.Tensor], origins: dict[str, str]) -> None:
    """diffusers' Wan I2V checkpoints carry ``attn2.norm_added_q``, used by no forward; diffusers skips it."""
    patterns = InfiniteTalkTransformer3DModel._keys_to_ignore_on_load_unexpected or []
    for key in [k for k in state_dict if any(re.search(p, k) for p in patterns)]:
        del state_dict[key]
        del origins[key]


def _check(
    model: InfiniteTalkTransformer3DModel,
    state_dict: Mapping[str, torch.Tensor],
    origins: Mapping[str, str],
    source: str,
) -> None:
    """``check_state_dict``, plus the file and spelling each unexpected or mis-shaped tensor came with."""
    try:
        check_state_dict(model, state_dict, source)
    except WeightsError as error:
        expected = model.state_dict()
        offending = [
            key
            for key, tensor in state_dict.items()
            if key not in expected or tuple(tensor.shape) != tuple(expected[key].shape)
        ]
        spelled = [f"{key} from {origins[key]}" for key in sorted(offending)[:8] if key in origins]
        if not spelled:
            raise
        raise WeightsError(f"{error.message} [{'; '.join(spelled)}]") from None
