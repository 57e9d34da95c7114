"""The wav2vec2 audio encoder: random tiny weights, or the ``chinese-wav2vec2-base/`` folder (MODEL.md §7).

TencentGameMate/chinese-wav2vec2-base was saved from ``Wav2Vec2ForPreTraining``: its keys carry a
``wav2vec2.`` prefix, it holds the contrastive-pretraining heads (quantizer, project_hid, project_q) that
inference never uses, and, being older than torch's parametrized weight norm, it spells the positional conv's
weight norm ``weight_g``/``weight_v``. Exactly those differences are reconciled; all else must match strictly.
"""

from __future__ import annotations

import json
import logging
import pickle
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import Wav2Vec2Config

from pipeline.audio.decode import SAMPLE_RATE
from pipeline.audio.wav2vec2 import InfiniteTalkWav2Vec2
from pipeline.errors import WeightsError
from pipeline.weights.random_init import placed, random_init
from pipeline.weights.strict import load_state_dict_strict

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
PREPROCESSOR_FILE = "preprocessor_config.json"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

_PRETRAINING_PREFIX = "wav2vec2."
# Wav2Vec2ForPreTraining's own tensors beside the base model (transformers' modeling_wav2vec2).
_PRETRAINING_ONLY = frozenset(
    {
        "quantizer.codevectors",
        "quantizer.weight_proj.weight",
        "quantizer.weight_proj.bias",
        "project_hid.weight",
        "project_hid.bias",
        "project_q.weight",
        "project_q.bias",
    }
)
# SpecAugment's mask vector: only a training-time parameter, present when the config's mask_time_prob > 0.
_MASK_EMBEDDING = "masked_spec_embed"
_POS_CONV = "encoder.pos_conv_embed.conv."
# torch.nn.utils.weight_norm spelling → torch.nn.utils.parametrizations.weight_norm spelling.
_WEIGHT_NORM_SPELLINGS = {
    _POS_CONV + "weight_g": _POS_CONV + "parametrizations.weight.original0",
    _POS_CONV + "weight_v": _POS_CONV + "parametrizations.weight.original1",
}


def build_audio_encoder(
    config: dict, seed: int = 0, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> InfiniteTalkWav2Vec2:
    """Random weights from ``seed`` (tiny preset, tests, benchmarks), in eval mode, on ``device`` in ``dtype``
    (built there: ``random_init``)."""
    with random_init(seed, device, dtype):
        model = InfiniteTalkWav2Vec2(Wav2Vec2Config(**config))
    return placed(model, device, dtype).eval().requires_grad_(False)


def load_audio_encoder(
    folder: Path,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> InfiniteTalkWav2Vec2:
    """Load ``chinese-wav2vec2-base/`` strictly: built on the meta device, adopting the checkpoint tensors."""
    folder = Path(folder)
    if not folder.is_dir():
        raise WeightsError(f"{folder}: wav2vec2 folder does not exist")
    config = _read_config(folder / CONFIG_FILE)
    _check_preprocessor(folder / PREPROCESSOR_FILE)
    weights_path = next((folder / name for name in WEIGHT_FILES if (folder / name).is_file()), None)
    if weights_path is None:
        raise WeightsError(f"{folder}: no wav2vec2 weights ({' or '.join(WEIGHT_FILES)})")

    try:
        with torch.device("meta"):
            model = InfiniteTalkWav2Vec2(config)
    except WeightsError as error:
        raise WeightsError(f"{folder / CONFIG_FILE}: {error.message}") from None
    checkpoint = _read_tensors(weights_path)
    state_dict = _to_model_keys(checkpoint, model.state_dict().keys())
    load_state_dict_strict(model, state_dict, str(weights_path), dtype=dtype)
    left_on_meta = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left_on_meta:
        # Non-persistent buffers are not in any checkpoint; this model has none today, a future one might.
        raise WeightsError(f"{weights_path}: tensors no checkpoint provides: {', '.join(left_on_meta)}")
    logger.info("loaded wav2vec2 audio encoder from %s", weights_path)
    return model.to(device).eval().requires_grad_(False)


def _to_model_keys(
    checkpoint: Mapping[str, torch.Tensor], model_keys: Iterable[str]
) -> dict[str, torch.Tensor]:
    """Rename a pre-training checkpoint's keys to ``InfiniteTalkWav2Vec2``'s and drop its known extras.

    Everything not explicitly handled passes through unchanged, so the strict check names it.
    """
    expected = set(model_keys)
    state_dict: dict[str, torch.Tensor] = {}
    for key, tensor in checkpoint.items():
        if key in _PRETRAINING_ONLY:
            continue
        key = key.removeprefix(_PRETRAINING_PREFIX)
        if key == _MASK_EMBEDDING and key not in expected:
            continue
        state_dict[key] = tensor
    for legacy, parametrized in _WEIGHT_NORM_SPELLINGS.items():
        for have, want in ((legacy, parametrized), (parametrized, legacy)):
            if have in state_dict and have not in expected and want in expected and want not in state_dict:
                state_dict[want] = state_dict.pop(have)
    return state_dict


def _read_config(path: Path) -> Wav2Vec2Config:
    if not path.is_file():
        raise WeightsError(f"{path}: missing (the wav2vec2 config)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"{path}: not a readable JSON config ({error})") from None
    if not isinstance(raw, dict) or raw.get("model_type", "wav2vec2") != "wav2vec2":
        kind = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
        raise WeightsError(f"{path}: not a wav2vec2 config (model_type {kind!r})")
    try:
        return Wav2Vec2Config.from_dict(raw)
    except (TypeError, ValueError) as error:
        raise WeightsError(f"{path}: invalid wav2vec2 config ({error})") from None


def _check_preprocessor(path: Path) -> None:
    """The pipeline feeds raw 16 kHz samples; a feature extractor wanting otherwise means a wrong encoder."""
    if not path.is_file():
        return
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise WeightsError(f"{path}: not a readable JSON file ({error})") from None
    if not isinstance(raw, dict):
        raise WeightsError(f"{path}: expected a JSON object")
    rate = raw.get("sampling_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE:
        raise WeightsError(f"{path}: sampling_rate {rate!r}, the pipeline feeds {SAMPLE_RATE} Hz audio")
    if raw.get("do_normalize", False):
        raise WeightsError(
            f"{path}: do_normalize is true, but InfiniteTalk's encoder (chinese-wav2vec2-base) takes raw "
            "samples"
        )


def _read_tensors(path: Path) -> Mapping[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            tensors = load_file(str(path), device="cpu")
        else:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, OSError, RuntimeError, EOFError, pickle.UnpicklingError) as error:
        raise WeightsError(f"{path}: cannot read the checkpoint ({error})") from None
    if not isinstance(tensors, Mapping) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise WeightsError(f"{path}: not a state dict of tensors")
    return tensors
