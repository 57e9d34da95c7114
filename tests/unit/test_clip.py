"""CLIP image tokens: Wan's preprocessing and penultimate block, checked against CLIPVisionModel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPVisionConfig, CLIPVisionModel

from pipeline.conditioning import ClipImageEncoder
from pipeline.presets import INFINITETALK_14B, TINY
from pipeline.weights.clip import build_image_encoder

MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def vision_model() -> CLIPVisionModel:
    torch.manual_seed(0)
    return CLIPVisionModel(CLIPVisionConfig(**TINY.image_encoder)).eval()


def _image(batch: int = 2, height: int = 96, width: int = 160) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(1)) * 2 - 1


def test_penultimate_tokens_match_clip_vision_model(vision_model):
    image = _image()
    tokens = ClipImageEncoder(vision_model)(image)

    # Wan: squash to 224×224 bicubic from [−1, 1], back to [0, 1], CLIP mean/std, block 31 of 32.
    pixels = F.interpolate(image, size=(224, 224), mode="bicubic", align_corners=False)
    pixels = (pixels * 0.5 + 0.5 - MEAN) / STD
    with torch.no_grad():
        hidden = vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states
    assert len(hidden) == TINY.image_encoder["num_hidden_layers"] + 1
    assert tokens.shape == (2, 257, TINY.image_encoder["hidden_size"])
    torch.testing.assert_close(tokens, hidden[-2])
    assert not torch.allclose(tokens, hidden[-1], atol=1e-3)


def test_aspect_is_not_kept(vision_model):
    # A wide and a tall picture both become 224×224: the whole picture is seen, squashed, nothing cropped.
    encoder = ClipImageEncoder(vision_model)
    wide = _image(1, 64, 256)
    pixels = encoder.preprocess(wide)
    assert pixels.shape == (1, 3, 224, 224)
    left_marked = wide.clone()
    left_marked[..., :8] = 1.0
    assert not torch.allclose(encoder.preprocess(left_marked)[..., :4], pixels[..., :4])


def test_mid_grey_normalises_to_clip_statistics(vision_model):
    pixels = ClipImageEncoder(vision_model).preprocess(torch.zeros(1, 3, 32, 32))
    expected = (0.5 - MEAN) / STD
    torch.testing.assert_close(pixels, expected.expand_as(pixels))


def test_runs_in_the_model_dtype():
    encoder = build_image_encoder(TINY.image_encoder).to(torch.bfloat16)
    tokens = encoder(_image(1))
    assert tokens.dtype == torch.bfloat16
    assert torch.isfinite(tokens.float()).all()


@pytest.mark.parametrize("shape", [(3, 224, 224), (1, 4, 224, 224), (1, 1, 224, 224)])
def test_rejects_bad_shapes(vision_model, shape):
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        ClipImageEncoder(vision_model)(torch.zeros(shape))


def test_build_is_seeded_and_frozen():
    first = build_image_encoder(TINY.image_encoder, seed=3)
    again = build_image_encoder(TINY.image_encoder, seed=3)
    other = build_image_encoder(TINY.image_encoder, seed=4)
    assert not first.training
    assert not any(p.requires_grad for p in first.parameters())
    image = _image(1)
    torch.testing.assert_close(first(image), again(image))
    assert not torch.allclose(first(image), other(image))


def test_real_config_matches_wan_vision_tower():
    # Wan builds the tower with exact GELU (activation='gelu', not QuickGELU), LayerNorm eps 1e-5, 224/14.
    config = CLIPVisionConfig(**INFINITETALK_14B.image_encoder)
    assert config.hidden_act == "gelu"
    assert config.layer_norm_eps == 1e-5
    assert (config.image_size // config.patch_size) ** 2 + 1 == 257
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (1280, 32, 16)
