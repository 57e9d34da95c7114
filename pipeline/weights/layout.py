"""Find every checkpoint file of the 14B preset inside one weights directory (MODEL.md §7).

Expected layout (either Wan folder works; names are the ones the publishers use)::

    WEIGHTS/
      Wan2.1-I2V-14B-480P/              original layout, or
      Wan2.1-I2V-14B-480P-Diffusers/    diffusers layout
      chinese-wav2vec2-base/
      InfiniteTalk/single/infinitetalk.safetensors   the one-person adapter, and/or
      InfiniteTalk/multi/infinitetalk.safetensors    the one- or two-person adapter (preset ``*-multi``)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pipeline.errors import WeightsError
from pipeline.presets import SINGLE, Variant

WAN_ORIGINAL = "Wan2.1-I2V-14B-480P"
WAN_DIFFUSERS = "Wan2.1-I2V-14B-480P-Diffusers"
WAV2VEC2 = "chinese-wav2vec2-base"

_ORIGINAL_FILES = {
    "t5": "models_t5_umt5-xxl-enc-bf16.pth",
    "tokenizer": "google/umt5-xxl",
    "clip": "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth",
    "vae": "Wan2.1_VAE.pth",
}
_DIFFUSERS_FOLDERS = {
    "t5": "text_encoder",
    "tokenizer": "tokenizer",
    "clip": "image_encoder",
    "vae": "vae",
}


@dataclass(frozen=True)
class WeightPaths:
    wan_dir: Path
    wan_layout: Literal["original", "diffusers"]
    infinitetalk: Path
    wav2vec2: Path
    t5: Path
    tokenizer: Path
    clip: Path
    vae: Path

    def identities(self) -> dict[str, str]:
        """Names and sizes of the files in use, for the reproducibility record (hashing 30 GB is too slow)."""
        return {
            "wan": f"{self.wan_dir.name} ({self.wan_layout} layout)",
            "infinitetalk": f"{self.infinitetalk.name} ({self.infinitetalk.stat().st_size} bytes)",
            "wav2vec2": self.wav2vec2.name,
        }


def _require(path: Path, what: str) -> Path:
    if not path.exists():
        raise WeightsError(f"{path}: missing ({what})")
    return path


def discover(root: Path, variant: Variant = SINGLE) -> WeightPaths:
    """Resolve the weights directory for ``variant``'s adapter, naming the first file or folder missing."""
    root = Path(root)
    if not root.is_dir():
        raise WeightsError(f"{root}: weights directory does not exist")
    if (root / WAN_ORIGINAL).is_dir():
        wan_dir, layout = root / WAN_ORIGINAL, "original"
    elif (root / WAN_DIFFUSERS).is_dir():
        wan_dir, layout = root / WAN_DIFFUSERS, "diffusers"
    else:
        raise WeightsError(
            f"{root}: neither {WAN_ORIGINAL}/ nor {WAN_DIFFUSERS}/ found (the Wan2.1 I2V weights)"
        )
    names = _ORIGINAL_FILES if layout == "original" else _DIFFUSERS_FOLDERS
    parts = {key: _require(wan_dir / name, key) for key, name in names.items()}
    return WeightPaths(
        wan_dir=wan_dir,
        wan_layout=layout,
        infinitetalk=_require(root / variant.adapter, f"InfiniteTalk {variant.name} adapter"),
        wav2vec2=_require(root / WAV2VEC2, "wav2vec2 audio encoder"),
        **parts,
    )
