"""The Wan2.1 VAE: random tiny weights, Wan's ``Wan2.1_VAE.pth``, or a diffusers ``vae/`` folder
(MODEL.md §7), all loaded into diffusers' ``AutoencoderKLWan`` inside ``WanVAE``.

Wan's key names are mapped by diffusers' own ``convert_wan_vae_to_diffusers`` (it passes unknown keys through,
so the strict check still names them). The config is always built locally (never ``from_single_file``, which
fetches one from the hub); the latent mean/std Wan hard-codes are ``AutoencoderKLWan``'s defaults.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from diffusers.loaders.single_file_utils import convert_wan_vae_to_diffusers

from pipeline.conditioning.vae import WanVAE
from pipeline.errors import WeightsError
from pipeline.presets import INFINITETALK_14B
from pipeline.weights.checkpoint_files import find_weights, finish_loading, read_json, read_tensors
from pipeline.weights.random_init import placed, random_init
from pipeline.weights.strict import load_state_dict_strict

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
FOLDER_WEIGHTS = (
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
)
_CLASS_NAME = "AutoencoderKLWan"


def build_vae(
    config: dict, seed: int = 0, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> WanVAE:
    """Random weights from ``seed`` (tiny preset, tests, benchmarks), in eval mode, on ``device`` in ``dtype``
    (built there: ``random_init``)."""
    with random_init(seed, device, dtype):
        model = AutoencoderKLWan(**config)
    return placed(WanVAE(model), device, dtype).eval().requires_grad_(False)


def load_vae(
    path: str | Path,
    *,
    config: dict | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> WanVAE:
    """Load strictly from ``Wan2.1_VAE.pth`` (sized by ``config``, default Wan2.1) or a ``vae/`` folder."""
    path = Path(path)
    if path.is_dir():
        raw_config = read_json(path / CONFIG_FILE, "the VAE config")
        if raw_config.get("_class_name", _CLASS_NAME) != _CLASS_NAME:
            raise WeightsError(f"{path / CONFIG_FILE}: not an {_CLASS_NAME} config")
        source = find_weights(path, FOLDER_WEIGHTS)
        with torch.device("meta"):
            model = AutoencoderKLWan.from_config(raw_config)
        state_dict = read_tensors(source, dtype)
    elif path.is_file():
        source = path
        try:
            with torch.device("meta"):
                model = AutoencoderKLWan(**(config if config is not None else INFINITETALK_14B.vae))
        except TypeError as error:
            raise WeightsError(f"{path}: invalid VAE config ({error})") from None
        state_dict = convert_wan_vae_to_diffusers(read_tensors(path, dtype))
    else:
        raise WeightsError(f"{path}: missing (the Wan VAE)")
    load_state_dict_strict(model, state_dict, str(source))
    logger.info("loaded Wan VAE from %s", source)
    return finish_loading(WanVAE(model), str(source), device)
