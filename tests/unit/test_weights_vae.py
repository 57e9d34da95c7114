"""Loading the Wan VAE strictly from Wan2.1_VAE.pth's layout and from a diffusers vae/ folder."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import save_file

from pipeline.conditioning import WanVAE
from pipeline.errors import WeightsError
from pipeline.presets import TINY
from pipeline.weights.vae import build_vae, load_vae

CONFIG = TINY.vae
WAN_FILE = "Wan2.1_VAE.pth"
# Wan's ResidualBlock is Sequential(norm, SiLU, conv, norm, SiLU, Dropout, conv) plus an optional shortcut.
_RESNET = {"norm1": "residual.0", "conv1": "residual.2", "norm2": "residual.3", "conv2": "residual.6"}
_RESNET["conv_shortcut"] = "shortcut"
_TOP = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
_ENDS = {"conv_in": "conv1", "norm_out": "head.0", "conv_out": "head.2"}
_MIDDLE = {"resnets.0": "middle.0", "attentions.0": "middle.1", "resnets.1": "middle.2"}
# Per decoder stage: num_res_blocks + 1 = 3 residual blocks, then one upsampler: 4 entries of Wan's list.
_STAGE = 4


@pytest.fixture(scope="module")
def reference() -> WanVAE:
    vae = build_vae(CONFIG, seed=1)
    with torch.no_grad():  # well away from the init, so a swapped tensor would show
        for parameter in vae.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return vae


def _resnet_part(rest: str) -> str:
    module, parameter = rest.rsplit(".", 1)
    return f"{_RESNET.get(module, module)}.{parameter}"


def _wan_name(key: str) -> str:
    """diffusers AutoencoderKLWan name → Wan's WanVAE_ name."""
    top, _, rest = key.partition(".")
    if top in _TOP:
        return f"{_TOP[top]}.{rest}"
    side = top  # encoder / decoder
    module, _, rest = rest.partition(".")
    if module in _ENDS:
        return f"{side}.{_ENDS[module]}.{rest}"
    if module == "mid_block":
        kind, index, rest = rest.split(".", 2)
        return f"{side}.{_MIDDLE[f'{kind}.{index}']}.{_resnet_part(rest) if kind == 'resnets' else rest}"
    if module == "down_blocks":
        index, rest = rest.split(".", 1)
        resampler = rest.startswith(("resample.", "time_conv."))
        return f"encoder.downsamples.{index}.{rest if resampler else _resnet_part(rest)}"
    stage, kind, index, rest = rest.split(".", 3)  # up_blocks.i.{resnets.j | upsamplers.0}.…
    flat = _STAGE * int(stage) + (int(index) if kind == "resnets" else _STAGE - 1)
    return f"decoder.upsamples.{flat}.{_resnet_part(rest) if kind == 'resnets' else rest}"


def to_wan(vae: WanVAE) -> dict[str, torch.Tensor]:
    return {_wan_name(k): v.detach().clone() for k, v in vae.model.state_dict().items()}


def _video() -> torch.Tensor:
    return torch.rand(1, 3, 5, 16, 24, generator=torch.Generator().manual_seed(0)) * 2 - 1


def _latents() -> torch.Tensor:
    return torch.randn(1, 16, 2, 2, 3, generator=torch.Generator().manual_seed(1))


def _assert_same_model(loaded: WanVAE, reference: WanVAE) -> None:
    torch.testing.assert_close(loaded.encode(_video()), reference.encode(_video()), atol=0, rtol=0)
    torch.testing.assert_close(loaded.decode(_latents()), reference.decode(_latents()), atol=0, rtol=0)


def _write_folder(folder, vae: WanVAE, tensors=None):
    folder.mkdir(parents=True, exist_ok=True)
    vae.model.save_config(folder)
    tensors = (
        tensors if tensors is not None else {k: v.detach().clone() for k, v in vae.model.state_dict().items()}
    )
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "diffusion_pytorch_model.safetensors")
    return folder


def test_wan_key_names_are_wans(reference):
    wan = to_wan(reference)
    # Literally names of wan/modules/vae.py's WanVAE_ (Encoder3d/Decoder3d, CausalConv3d conv1/conv2, ...).
    for name in (
        "conv1.weight",
        "conv2.bias",
        "encoder.conv1.weight",
        "encoder.downsamples.0.residual.0.gamma",
        "encoder.downsamples.0.residual.2.weight",
        "encoder.downsamples.0.residual.6.bias",
        "encoder.downsamples.2.resample.1.weight",
        "encoder.downsamples.3.shortcut.weight",
        "encoder.downsamples.5.time_conv.weight",
        "encoder.middle.0.residual.3.gamma",
        "encoder.middle.1.norm.gamma",
        "encoder.middle.1.to_qkv.weight",
        "encoder.middle.1.proj.bias",
        "encoder.head.0.gamma",
        "encoder.head.2.weight",
        "decoder.conv1.weight",
        "decoder.middle.2.residual.6.weight",
        "decoder.upsamples.0.residual.0.gamma",
        "decoder.upsamples.3.resample.1.weight",
        "decoder.upsamples.3.time_conv.weight",
        "decoder.upsamples.4.shortcut.weight",
        "decoder.upsamples.11.resample.1.bias",
        "decoder.upsamples.14.residual.6.weight",
        "decoder.head.2.bias",
    ):
        assert name in wan, name
    assert len(wan) == len(reference.model.state_dict()) == 194  # as many as Wan's WanVAE_ at this size
    assert not any("up_blocks" in k or "down_blocks" in k or "mid_block" in k for k in wan)


def test_loads_wan_pth_strictly(tmp_path, reference):
    path = tmp_path / WAN_FILE
    torch.save(to_wan(reference), path)
    loaded = load_vae(path, config=CONFIG)
    _assert_same_model(loaded, reference)
    assert not loaded.training
    assert not any(p.requires_grad for p in loaded.parameters())


def test_loads_in_the_requested_dtype(tmp_path, reference):
    path = tmp_path / WAN_FILE
    torch.save(to_wan(reference), path)
    loaded = load_vae(path, config=CONFIG, dtype=torch.bfloat16)
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}
    expected = reference.model.state_dict()
    for key, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, expected[key].to(torch.bfloat16)), key
    assert torch.isfinite(loaded.decode(_latents())).all()


def test_loads_diffusers_folder(tmp_path, reference):
    folder = _write_folder(tmp_path / "vae", reference)
    config = json.loads((folder / "config.json").read_text())
    assert config["_class_name"] == "AutoencoderKLWan"
    _assert_same_model(load_vae(folder), reference)


def _wan_checkpoint(reference, change: str) -> tuple[dict, str]:
    wan = to_wan(reference)
    if change == "removed":
        del wan["decoder.upsamples.4.shortcut.weight"]
        return wan, "missing tensors: decoder.up_blocks.1.resnets.0.conv_shortcut.weight"
    if change == "extra":
        wan["encoder.extra.weight"] = torch.zeros(2)
        return wan, "unexpected tensors: encoder.extra.weight"
    wan["encoder.middle.1.to_qkv.weight"] = torch.zeros(3, 3, 1, 1)
    return wan, "mis-shaped tensors: encoder.mid_block.attentions.0.to_qkv.weight (checkpoint (3, 3, 1, 1)"


@pytest.mark.parametrize("change", ["removed", "extra", "misshaped"])
def test_wan_pth_is_strict(tmp_path, reference, change):
    checkpoint, message = _wan_checkpoint(reference, change)
    path = tmp_path / WAN_FILE
    torch.save(checkpoint, path)
    with pytest.raises(WeightsError, match=re.escape(message)) as raised:
        load_vae(path, config=CONFIG)
    assert WAN_FILE in raised.value.message


def _folder_checkpoint(reference, change: str) -> tuple[dict, str]:
    tensors = {k: v.detach().clone() for k, v in reference.model.state_dict().items()}
    key = "decoder.up_blocks.2.upsamplers.0.resample.1.weight"
    if change == "removed":
        del tensors[key]
        return tensors, f"missing tensors: {key}"
    if change == "extra":
        tensors["decoder.extra.bias"] = torch.zeros(2)
        return tensors, "unexpected tensors: decoder.extra.bias"
    tensors[key] = torch.zeros(1)
    return tensors, f"mis-shaped tensors: {key} (checkpoint (1,)"


@pytest.mark.parametrize("change", ["removed", "extra", "misshaped"])
def test_folder_is_strict(tmp_path, reference, change):
    checkpoint, message = _folder_checkpoint(reference, change)
    folder = _write_folder(tmp_path / "vae", reference, tensors=checkpoint)
    with pytest.raises(WeightsError, match=re.escape(message)) as raised:
        load_vae(folder)
    assert "diffusion_pytorch_model.safetensors" in raised.value.message


def test_missing_and_broken_inputs_are_named(tmp_path, reference):
    with pytest.raises(WeightsError, match=f"{WAN_FILE}: missing"):
        load_vae(tmp_path / WAN_FILE)
    not_a_dict = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], not_a_dict)
    with pytest.raises(WeightsError, match=r"list\.pth: not a state dict of tensors"):
        load_vae(not_a_dict, config=CONFIG)
    with pytest.raises(WeightsError, match="invalid VAE config"):
        load_vae(not_a_dict, config={"no_such_argument": 1})
    folder = tmp_path / "vae"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(WeightsError, match="not an AutoencoderKLWan config"):
        load_vae(folder)
    (folder / "config.json").write_text("{broken")
    with pytest.raises(WeightsError, match=r"config\.json: not readable JSON"):
        load_vae(folder)
    reference.model.save_config(folder)
    with pytest.raises(WeightsError, match="vae: no weights"):
        load_vae(folder)
