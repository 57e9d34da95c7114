"""The CLIP ViT-H/14 image encoder: random tiny weights, Wan's
``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``, or a transformers ``image_encoder/`` folder
(MODEL.md §7), all loaded into transformers' ``CLIPVisionModel`` inside ``ClipImageEncoder``.

Wan's vision tower (``wan/modules/clip.py``, ``VisionTransformer``) matches ``CLIPVisionModel`` when the
config says ``hidden_act="gelu"`` (Wan builds it with exact ``nn.GELU``, not QuickGELU) and
``layer_norm_eps=1e-5``: patch conv without bias, class token, learned positions, a LayerNorm after adding
them (``pre_norm`` = ``pre_layrnorm``), pre-LN blocks, a final ``post_norm``. Its attention fuses q, k, v in
one ``to_qkv`` whose output splits as [q; k; v], each head-major.

Dropped explicitly and only these: the text tower (``textual.*``) and the logit scale (``log_scale``) of
Wan's two-tower file, and the projection into the joint text–image space (Wan ``visual.head``,
transformers ``visual_projection.weight``), which nothing downstream of the penultimate hidden states uses
and ``CLIPVisionModel`` has no slot for. The projection's shape is still checked.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from pipeline.conditioning.clip import ClipImageEncoder
from pipeline.errors import WeightsError
from pipeline.presets import INFINITETALK_14B
from pipeline.weights.checkpoint_files import find_weights, finish_loading, read_json, read_tensors
from pipeline.weights.random_init import placed, random_init
from pipeline.weights.strict import load_state_dict_strict

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
FOLDER_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
VISION = "vision_model."
WAN_VISUAL = "visual."
WAN_TEXT_PREFIX = "textual."
WAN_LOGIT_SCALE = "log_scale"
WAN_HEAD = "visual.head"
FOLDER_PROJECTION = "visual_projection.weight"

_WAN_BLOCK = re.compile(r"transformer\.(\d+)\.(.+)\.(weight|bias)")
_WAN_FUSED_QKV = "attn.to_qkv"
_WAN_BLOCK_PARTS = {
    "norm1": "layer_norm1",
    "attn.proj": "self_attn.out_proj",
    "norm2": "layer_norm2",
    "mlp.0": "mlp.fc1",
    "mlp.2": "mlp.fc2",
}
_WAN_TOP = {
    "patch_embedding.weight": "embeddings.patch_embedding.weight",
    "pre_norm.weight": "pre_layrnorm.weight",
    "pre_norm.bias": "pre_layrnorm.bias",
    "post_norm.weight": "post_layernorm.weight",
    "post_norm.bias": "post_layernorm.bias",
}
# Wan keeps these as [1, 1, D] and [1, 257, D] parameters; transformers as [D] and a [257, D] table.
_WAN_CLASS = "cls_embedding"
_WAN_POSITIONS = "pos_embedding"


def build_image_encoder(
    config: dict, seed: int = 0, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> ClipImageEncoder:
    """Random weights from ``seed`` (tiny preset, tests, benchmarks), in eval mode, on ``device`` in ``dtype``
    (built there: ``random_init``)."""
    with random_init(seed, device, dtype):
        model = CLIPVisionModel(CLIPVisionConfig(**config))
    return placed(ClipImageEncoder(model), device, dtype).eval().requires_grad_(False)


def load_image_encoder(
    path: str | Path,
    *,
    config: dict | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ClipImageEncoder:
    """Load strictly from Wan's ``.pth`` (sized by ``config``, default ViT-H/14) or ``image_encoder/``."""
    path = Path(path)
    if path.is_dir():
        vision_config = _folder_config(path / CONFIG_FILE)
        source = find_weights(path, FOLDER_WEIGHTS)
    elif path.is_file():
        vision_config = CLIPVisionConfig(**(config if config is not None else INFINITETALK_14B.image_encoder))
        source = path
    else:
        raise WeightsError(f"{path}: missing (the CLIP image encoder)")
    with torch.device("meta"):
        model = CLIPVisionModel(vision_config)
    prefix = model_prefix(model)

    checkpoint = read_tensors(source, dtype)
    if path.is_dir():
        checkpoint = _drop_projection(checkpoint, FOLDER_PROJECTION, vision_config, source)
        state_dict = {_reprefix(key, prefix): tensor for key, tensor in checkpoint.items()}
    else:
        checkpoint = _drop_text_tower(checkpoint)
        checkpoint = _drop_projection(checkpoint, WAN_HEAD, vision_config, source, transposed=True)
        state_dict = wan_to_transformers(checkpoint, prefix)
    load_state_dict_strict(model, state_dict, str(source))
    # A non-persistent buffer: no checkpoint holds it, so it is rebuilt rather than left on the meta device.
    embeddings = model.get_submodule(prefix + "embeddings")
    embeddings.register_buffer(
        "position_ids", torch.arange(embeddings.num_positions).expand((1, -1)), persistent=False
    )
    logger.info("loaded CLIP image encoder from %s", source)
    return finish_loading(ClipImageEncoder(model), str(source), device)


def model_prefix(model: CLIPVisionModel) -> str:
    """transformers 4.x nests the tower under ``vision_model.``; 5.x puts it at the model's top level."""
    return VISION if hasattr(model, "vision_model") else ""


def _reprefix(key: str, prefix: str) -> str:
    """Saved folders spell the tower ``vision_model.*`` (as 4.x did); other keys pass through to be named."""
    return prefix + key.removeprefix(VISION) if key.startswith(VISION) else key


def wan_to_transformers(checkpoint: Mapping[str, torch.Tensor], prefix: str = "") -> dict[str, torch.Tensor]:
    """Rename Wan's ``visual.*`` keys (under ``prefix``) and split each fused ``to_qkv``.

    Anything unrecognised passes through unchanged, for the strict check to name.
    """
    state_dict: dict[str, torch.Tensor] = {}

    def put(key: str, tensor: torch.Tensor, origin: str) -> None:
        if key in state_dict:
            raise WeightsError(f"two checkpoint tensors map to {key} (one is {origin})")
        state_dict[key] = tensor

    for key, tensor in checkpoint.items():
        name = key.removeprefix(WAN_VISUAL)
        block = _WAN_BLOCK.fullmatch(name) if key.startswith(WAN_VISUAL) else None
        if not key.startswith(WAN_VISUAL):
            put(key, tensor, key)
        elif name in _WAN_TOP:
            put(prefix + _WAN_TOP[name], tensor, key)
        elif name == _WAN_CLASS:
            put(prefix + "embeddings.class_embedding", tensor.flatten(), key)
        elif name == _WAN_POSITIONS:
            table = tensor.flatten(0, -2) if tensor.ndim == 3 else tensor
            put(prefix + "embeddings.position_embedding.weight", table, key)
        elif block is not None and block.group(2) == _WAN_FUSED_QKV:
            layer, parameter = block.group(1), block.group(3)
            if tensor.shape[0] % 3:
                raise WeightsError(f"{key}: fused q/k/v of {tensor.shape[0]} rows does not split in three")
            for part, piece in zip(("q", "k", "v"), tensor.chunk(3, dim=0), strict=True):
                put(f"{prefix}encoder.layers.{layer}.self_attn.{part}_proj.{parameter}", piece, key)
        elif block is not None and block.group(2) in _WAN_BLOCK_PARTS:
            layer, part, parameter = block.groups()
            put(f"{prefix}encoder.layers.{layer}.{_WAN_BLOCK_PARTS[part]}.{parameter}", tensor, key)
        else:
            put(key, tensor, key)
    return state_dict


def _drop_text_tower(checkpoint: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in checkpoint.items() if not k.startswith(WAN_TEXT_PREFIX) and k != WAN_LOGIT_SCALE}


def _drop_projection(
    checkpoint: dict[str, torch.Tensor],
    key: str,
    config: CLIPVisionConfig,
    source: Path,
    *,
    transposed: bool = False,
) -> dict[str, torch.Tensor]:
    if key not in checkpoint:
        return checkpoint
    expected = (config.hidden_size, config.projection_dim)
    expected = expected if transposed else expected[::-1]
    if tuple(checkpoint[key].shape) != expected:
        found = tuple(checkpoint[key].shape)
        raise WeightsError(f"{source}: mis-shaped tensors: {key} (checkpoint {found}, model {expected})")
    return {k: v for k, v in checkpoint.items() if k != key}


def _folder_config(path: Path) -> CLIPVisionConfig:
    """A ``CLIPVisionConfig``, or the vision half of a full ``CLIPConfig``."""
    raw = read_json(path, "the CLIP vision config")
    model_type = raw.get("model_type")
    if model_type == "clip" and isinstance(raw.get("vision_config"), dict):
        raw = raw["vision_config"]
    elif model_type != "clip_vision_model":
        raise WeightsError(f"{path}: not a CLIP vision config (model_type {model_type!r})")
    try:
        return CLIPVisionConfig.from_dict(raw)
    except (TypeError, ValueError) as error:
        raise WeightsError(f"{path}: invalid CLIP vision config ({error})") from None
