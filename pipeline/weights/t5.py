"""The umT5-xxl text encoder: random tiny weights, Wan's ``models_t5_umt5-xxl-enc-bf16.pth``, or a
transformers ``text_encoder/`` folder (MODEL.md §7), all loaded into transformers' ``UMT5EncoderModel``.

Wan's own encoder (``wan/modules/t5.py``, ``T5Encoder`` with ``shared_pos=False``) is the same network under
other names. Each block has its own relative-position bias (umT5; T5 shares one), and its FFN computes
``fc2(fc1(x) · gelu_tanh(gate(x)))`` while transformers' gated-GELU computes
``wo(gelu_tanh(wi_0(x)) · wi_1(x))``, so the activated ``gate`` is ``wi_0`` and ``fc1`` is ``wi_1``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from transformers import UMT5Config, UMT5EncoderModel

from pipeline.errors import WeightsError
from pipeline.presets import INFINITETALK_14B
from pipeline.weights.checkpoint_files import find_weights, finish_loading, read_json, read_tensors
from pipeline.weights.random_init import placed, random_init
from pipeline.weights.strict import load_state_dict_strict

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
FOLDER_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
SHARED = "shared.weight"
ENCODER_EMBEDDING = "encoder.embed_tokens.weight"

_WAN_BLOCK = re.compile(r"blocks\.(\d+)\.(.+)")
_WAN_BLOCK_PARTS = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_WAN_TOP = {"token_embedding.weight": SHARED, "norm.weight": "encoder.final_layer_norm.weight"}


def build_text_encoder(
    config: dict, seed: int = 0, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> UMT5EncoderModel:
    """Random weights from ``seed`` (tiny preset, tests, benchmarks), in eval mode, on ``device`` in ``dtype``
    (built there: ``random_init``)."""
    with random_init(seed, device, dtype):
        model = UMT5EncoderModel(UMT5Config(**config))
    return placed(model, device, dtype).eval().requires_grad_(False)


def load_text_encoder(
    path: str | Path,
    *,
    config: dict | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> UMT5EncoderModel:
    """Load strictly from Wan's ``.pth`` (sized by ``config``, default umT5-xxl) or ``text_encoder/``.

    The model is built on the meta device and adopts the checkpoint's tensors, already cast to ``dtype``.
    """
    path = Path(path)
    if path.is_dir():
        model_config = _folder_config(path / CONFIG_FILE)
        source = find_weights(path, FOLDER_WEIGHTS)
        state_dict = _tie_embeddings(read_tensors(source, dtype))
    elif path.is_file():
        model_config = UMT5Config(**(config if config is not None else INFINITETALK_14B.text_encoder))
        source = path
        state_dict = _tie_embeddings(wan_to_transformers(read_tensors(path, dtype)))
    else:
        raise WeightsError(f"{path}: missing (the umT5 text encoder)")

    with torch.device("meta"):
        model = UMT5EncoderModel(model_config)
    load_state_dict_strict(model, state_dict, str(source))
    # Assigning the shared tensor twice leaves two Parameters; one Parameter is moved to the device once.
    model.encoder.embed_tokens.weight = model.shared.weight
    logger.info("loaded umT5 text encoder from %s", source)
    return finish_loading(model, str(source), device)


def wan_to_transformers(checkpoint: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Wan's T5 encoder keys; anything unrecognised passes through for the strict check to name."""
    state_dict: dict[str, torch.Tensor] = {}
    for key, tensor in checkpoint.items():
        block = _WAN_BLOCK.fullmatch(key)
        if key in _WAN_TOP:
            new_key = _WAN_TOP[key]
        elif block and block.group(2) in _WAN_BLOCK_PARTS:
            new_key = f"encoder.block.{block.group(1)}.{_WAN_BLOCK_PARTS[block.group(2)]}"
        else:
            new_key = key
        if new_key in state_dict:
            raise WeightsError(f"two checkpoint tensors map to {new_key} (one is {key})")
        state_dict[new_key] = tensor
    return state_dict


def _tie_embeddings(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder's input embedding is the shared one; files hold it under either name or both."""
    if SHARED not in state_dict and ENCODER_EMBEDDING in state_dict:
        state_dict[SHARED] = state_dict[ENCODER_EMBEDDING]
    if SHARED in state_dict:
        state_dict[ENCODER_EMBEDDING] = state_dict[SHARED]
    return state_dict


def _folder_config(path: Path) -> UMT5Config:
    raw = read_json(path, "the umT5 config")
    if raw.get("model_type") != "umt5":
        raise WeightsError(f"{path}: not a umT5 config (model_type {raw.get('model_type')!r})")
    try:
        return UMT5Config.from_dict(raw)
    except (TypeError, ValueError) as error:
        raise WeightsError(f"{path}: invalid umT5 config ({error})") from None
