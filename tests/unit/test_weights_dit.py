"""Loading the DiT strictly: original Wan2.1 layout, diffusers layout, the InfiniteTalk adapter, LoRAs.

Checkpoints are written at tiny sizes with the official key names, spelled out below from Wan-Video/Wan2.1
``wan/modules/model.py`` (``WanModel``, i2v) and MeiGen-AI/InfiniteTalk ``wan/modules/multitalk_model.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline.errors import WeightsError
from pipeline.models import InfiniteTalkTransformer3DModel
from pipeline.presets import MULTI, SINGLE, TINY, Variant
from pipeline.weights.dit import (
    build_transformer,
    convert_official_state_dict,
    is_adapter_key,
    load_official_state_dict,
    load_transformer,
)
from pipeline.weights.layout import WAN_ORIGINAL, WAV2VEC2, discover

CONFIG = TINY.transformer
LAYERS = CONFIG["num_layers"]
ORIGINAL_SHARDS = 3
ADAPTER = "infinitetalk.safetensors"

# Our (diffusers) module → Wan2.1's, written out independently of the converter under test.
_TOP = {
    "patch_embedding": "patch_embedding",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.image_embedder.norm1": "img_emb.proj.0",
    "condition_embedder.image_embedder.ff.net.0.proj": "img_emb.proj.1",
    "condition_embedder.image_embedder.ff.net.2": "img_emb.proj.3",
    "condition_embedder.image_embedder.norm2": "img_emb.proj.4",
    "proj_out": "head.head",
}
_BLOCK = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn1.norm_q": "self_attn.norm_q",
    "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.norm_q": "cross_attn.norm_q",
    "attn2.norm_k": "cross_attn.norm_k",
    "attn2.add_k_proj": "cross_attn.k_img",
    "attn2.add_v_proj": "cross_attn.v_img",
    "attn2.norm_added_k": "cross_attn.norm_k_img",
    # Wan's norm3 is the (affine) cross-attention norm, diffusers' norm2.
    "norm2": "norm3",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}


def wan21_i2v_keys(layers: int) -> set[str]:
    """Every tensor of Wan2.1's i2v ``WanModel`` (norm1/norm2 and head.norm have no affine parameters)."""
    keys = {"patch_embedding.weight", "patch_embedding.bias", "head.modulation"}
    for module in ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2"):
        keys |= {f"{module}.weight", f"{module}.bias"}
    for module in ("time_projection.1", "head.head", "img_emb.proj.0", "img_emb.proj.1", "img_emb.proj.3"):
        keys |= {f"{module}.weight", f"{module}.bias"}
    keys |= {"img_emb.proj.4.weight", "img_emb.proj.4.bias"}
    for i in range(layers):
        linear = [f"self_attn.{n}" for n in "qkvo"] + [
            f"cross_attn.{n}" for n in ("q", "k", "v", "o", "k_img", "v_img")
        ]
        for module in [*linear, "norm3", "ffn.0", "ffn.2"]:
            keys |= {f"blocks.{i}.{module}.weight", f"blocks.{i}.{module}.bias"}
        for norm in (
            "self_attn.norm_q",
            "self_attn.norm_k",
            "cross_attn.norm_q",
            "cross_attn.norm_k",
            "cross_attn.norm_k_img",
        ):
            keys.add(f"blocks.{i}.{norm}.weight")
        keys.add(f"blocks.{i}.modulation")
    return keys


def infinitetalk_keys(layers: int) -> set[str]:
    keys = {
        f"audio_proj.{m}.{p}"
        for m in ("proj1", "proj1_vf", "proj2", "proj3", "norm")
        for p in ("weight", "bias")
    }
    for i in range(layers):
        for module in (
            "audio_cross_attn.q_linear",
            "audio_cross_attn.kv_linear",
            "audio_cross_attn.proj",
            "norm_x",
        ):
            keys |= {f"blocks.{i}.{module}.weight", f"blocks.{i}.{module}.bias"}
    return keys


def to_official(key: str) -> str:
    if is_adapter_key(key):
        return key
    if key == "scale_shift_table":
        return "head.modulation"
    block = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if block:
        rest = block.group(2)
        if rest == "scale_shift_table":
            return f"blocks.{block.group(1)}.modulation"
        module, param = rest.rsplit(".", 1)
        return f"blocks.{block.group(1)}.{_BLOCK[module]}.{param}"
    module, param = key.rsplit(".", 1)
    return f"{_TOP[module]}.{param}"


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return model


def _inputs() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {
        "hidden_states": torch.randn(1, 36, 3, 4, 4, generator=generator),
        "timestep": torch.tensor([700.0]),
        "encoder_hidden_states": torch.randn(1, 512, CONFIG["text_dim"], generator=generator),
        "encoder_hidden_states_image": torch.randn(1, 257, CONFIG["image_dim"], generator=generator),
        "audio_embeds": torch.randn(1, 9, 5, 12, CONFIG["audio_dim"], generator=generator),
    }


def _run(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(**_inputs())


def _assert_same_output(model: torch.nn.Module, expected: torch.Tensor) -> None:
    # Same weights, but tensors read from a file sit at other memory alignments, which can change CPU kernels'
    # summation order by an ulp or so: hence not bit-exact.
    torch.testing.assert_close(_run(model), expected, rtol=1e-5, atol=1e-5)


def _save(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().clone().contiguous() for k, v in tensors.items()}, str(path))


def _write_shards(folder: Path, tensors: dict[str, torch.Tensor], shards: int, index: bool) -> None:
    keys = sorted(tensors)
    weight_map = {}
    for n in range(shards):
        name = f"diffusion_pytorch_model-{n + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in keys[n::shards]}
        _save(folder / name, part)
        weight_map |= dict.fromkeys(part, name)
    if index:
        (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
            json.dumps({"metadata": {}, "weight_map": weight_map})
        )


def write_original(
    root: Path, official: dict[str, torch.Tensor], index: bool = True, variant: Variant = SINGLE, **config
) -> tuple[Path, Path]:
    """Wan2.1-I2V-14B-480P/ as published (config.json + numbered shards + index) and the adapter file."""
    wan = root / "Wan2.1-I2V-14B-480P"
    wan.mkdir(parents=True)
    wan_config = {
        "_class_name": "WanModel",
        "dim": CONFIG["num_attention_heads"] * CONFIG["attention_head_dim"],
        "eps": CONFIG["eps"],
        "ffn_dim": CONFIG["ffn_dim"],
        "freq_dim": CONFIG["freq_dim"],
        "in_dim": CONFIG["in_channels"],
        "model_type": "i2v",
        "num_heads": CONFIG["num_attention_heads"],
        "num_layers": LAYERS,
        "out_dim": CONFIG["out_channels"],
        "text_len": 512,
        **config,
    }
    (wan / "config.json").write_text(json.dumps(wan_config))
    _write_shards(wan, {k: v for k, v in official.items() if not is_adapter_key(k)}, ORIGINAL_SHARDS, index)
    adapter = root / variant.adapter
    _save(adapter, {k: v for k, v in official.items() if is_adapter_key(k)})
    return wan, adapter


def write_diffusers(
    root: Path, model: InfiniteTalkTransformer3DModel, official: dict[str, torch.Tensor]
) -> Path:
    """Wan2.1-I2V-14B-480P-Diffusers/transformer/, with the unused norm_added_q diffusers' files carry."""
    wan = root / "Wan2.1-I2V-14B-480P-Diffusers"
    transformer = wan / "transformer"
    transformer.mkdir(parents=True)
    base = {k: v for k, v in model.state_dict().items() if not is_adapter_key(k)}
    for i in range(LAYERS):
        base[f"blocks.{i}.attn2.norm_added_q.weight"] = torch.ones(CONFIG["attention_head_dim"] * 2)
    diffusers_config = {k: v for k, v in CONFIG.items() if not k.startswith("audio_")}
    (transformer / "config.json").write_text(
        json.dumps({"_class_name": "WanTransformer3DModel", **diffusers_config})
    )
    _write_shards(transformer, base, 2, index=True)
    return wan


@pytest.fixture(scope="module")
def source() -> InfiniteTalkTransformer3DModel:
    return _randomise(build_transformer(CONFIG, seed=0))


@pytest.fixture(scope="module")
def official(source) -> dict[str, torch.Tensor]:
    return {to_official(k): v for k, v in source.state_dict().items()}


@pytest.fixture(scope="module")
def expected(source) -> torch.Tensor:
    return _run(source)


@pytest.fixture(scope="module")
def original_dirs(tmp_path_factory, official) -> tuple[Path, Path]:
    return write_original(tmp_path_factory.mktemp("original"), official)


def test_official_key_set_is_wan21_plus_infinitetalk(official):
    assert set(official) == wan21_i2v_keys(LAYERS) | infinitetalk_keys(LAYERS)


def test_convert_official_state_dict_gives_our_keys(source, official):
    converted = convert_official_state_dict(official)
    ours = source.state_dict()
    assert set(converted) == set(ours)
    assert all(converted[k] is official[to_official(k)] for k in ours)


def test_load_official_state_dict_reproduces_the_model(official, expected):
    model = build_transformer(CONFIG, seed=99)
    load_official_state_dict(model, official)
    # Adopted, not copied: a meta-device model costs no second copy.
    assert model.blocks[0].attn1.to_q.weight.data_ptr() == official["blocks.0.self_attn.q.weight"].data_ptr()
    _assert_same_output(model, expected)


def test_load_official_state_dict_names_a_missing_tensor(official):
    broken = {k: v for k, v in official.items() if k != "blocks.1.cross_attn.norm_k_img.weight"}
    with pytest.raises(WeightsError, match=r"missing tensors: blocks\.1\.attn2\.norm_added_k\.weight"):
        load_official_state_dict(build_transformer(CONFIG), broken, source="ref")


@pytest.mark.parametrize("index", [True, False])
def test_original_layout_loads_strictly(tmp_path, official, expected, index):
    wan, adapter = write_original(tmp_path, official, index=index)
    model = load_transformer(wan, adapter, config=CONFIG)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    _assert_same_output(model, expected)


@pytest.mark.parametrize("variant", [SINGLE, MULTI])
def test_each_variant_finds_its_own_adapter_and_loads_strictly(tmp_path, official, expected, variant):
    write_original(tmp_path, official, variant=variant)
    wan = tmp_path / WAN_ORIGINAL
    for part in ("models_t5_umt5-xxl-enc-bf16.pth", "google/umt5-xxl", "Wan2.1_VAE.pth", f"../{WAV2VEC2}"):
        (wan / part).mkdir(parents=True, exist_ok=True)
    (wan / "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth").touch()
    paths = discover(tmp_path, variant)
    assert paths.infinitetalk == tmp_path / "InfiniteTalk" / variant.name / ADAPTER
    _assert_same_output(load_transformer(paths.wan_dir, paths.infinitetalk, config=CONFIG), expected)
    other = MULTI if variant is SINGLE else SINGLE
    with pytest.raises(
        WeightsError, match=f"InfiniteTalk/{other.name}/{ADAPTER}: missing .InfiniteTalk {other.name} adapter"
    ):
        discover(tmp_path, other)


def test_diffusers_layout_loads_strictly(tmp_path, source, official, original_dirs, expected):
    wan = write_diffusers(tmp_path, source, official)
    model = load_transformer(wan, original_dirs[1], config=CONFIG)
    _assert_same_output(model, expected)
    original = load_transformer(original_dirs[0], original_dirs[1], config=CONFIG)
    for (name, a), (_, b) in zip(model.state_dict().items(), original.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_bf16_keeps_the_sensitive_parts_in_fp32(original_dirs, expected):
    model = load_transformer(*original_dirs, config=CONFIG, dtype=torch.bfloat16)
    assert model.blocks[1].ffn.net[0].proj.weight.dtype == torch.bfloat16
    assert model.blocks[0].audio_cross_attn.q_linear.weight.dtype == torch.bfloat16
    for name in (
        "blocks.1.scale_shift_table",
        "blocks.0.norm_x.bias",
        "scale_shift_table",
        "audio_proj.norm.weight",
    ):
        assert model.get_parameter(name).dtype == torch.float32, name
    assert model.rope.freqs_sin.dtype == torch.float32
    inputs = {k: (v if k == "timestep" else v.to(torch.bfloat16)) for k, v in _inputs().items()}
    with torch.no_grad():
        out = model(**inputs)
    torch.testing.assert_close(out.float(), expected, atol=0.2, rtol=0.1)


def _with(
    official: dict[str, torch.Tensor], drop: str = "", add: dict | None = None
) -> dict[str, torch.Tensor]:
    return {k: v for k, v in official.items() if k != drop} | (add or {})


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            {"drop": "blocks.1.cross_attn.k_img.weight"},
            r"missing tensors: blocks\.1\.attn2\.add_k_proj\.weight",
        ),
        ({"drop": "blocks.1.norm_x.bias"}, r"missing tensors: blocks\.1\.norm_x\.bias"),
        (
            {"add": {"blocks.0.self_attn.extra.weight": torch.zeros(2)}},
            r"blocks\.0\.self_attn\.extra\.weight",
        ),
        (
            {"add": {"audio_proj.proj4.weight": torch.zeros(2)}},
            r"unexpected tensors: audio_proj\.proj4\.weight",
        ),
        (
            {"add": {"blocks.0.ffn.0.weight": torch.zeros(3, 3)}},
            r"mis-shaped tensors: blocks\.0\.ffn\.net\.0\.proj\.weight \(checkpoint \(3, 3\)"
            r".*from blocks\.0\.ffn\.0\.weight in diffusion_pytorch_model-",
        ),
    ],
)
def test_bad_tensors_are_named(tmp_path, official, change, named):
    wan, adapter = write_original(tmp_path, _with(official, **change))
    with pytest.raises(WeightsError, match=named):
        load_transformer(wan, adapter, config=CONFIG)


def test_missing_files_are_named(tmp_path, official, original_dirs):
    wan, adapter = original_dirs
    with pytest.raises(WeightsError, match=re.escape(str(tmp_path / "nope.safetensors"))):
        load_transformer(wan, tmp_path / "nope.safetensors", config=CONFIG)
    with pytest.raises(WeightsError, match="does not exist"):
        load_transformer(tmp_path / "absent", adapter, config=CONFIG)
    with pytest.raises(WeightsError, match=re.escape(str(tmp_path / "lora.safetensors"))):
        load_transformer(wan, adapter, config=CONFIG, loras=[(tmp_path / "lora.safetensors", 1.0)])

    listed, _ = write_original(tmp_path / "listed", official)
    (listed / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"diffusion_pytorch_model-00002-of-00003\.safetensors: missing"):
        load_transformer(listed, adapter, config=CONFIG)

    numbered, _ = write_original(tmp_path / "numbered", official, index=False)
    (numbered / "diffusion_pytorch_model-00003-of-00003.safetensors").unlink()
    with pytest.raises(WeightsError, match=r"diffusion_pytorch_model-00003-of-00003\.safetensors: missing"):
        load_transformer(numbered, adapter, config=CONFIG)

    empty, _ = write_original(tmp_path / "empty", official, index=False)
    for shard in empty.glob("*.safetensors"):
        shard.unlink()
    with pytest.raises(WeightsError, match="no DiT weights"):
        load_transformer(empty, adapter, config=CONFIG)

    (wan_no_config := tmp_path / "no_config").mkdir()
    with pytest.raises(WeightsError, match=r"config\.json: missing"):
        load_transformer(wan_no_config, adapter, config=CONFIG)


def test_a_config_json_that_disagrees_is_named(tmp_path, official, original_dirs):
    wan, adapter = write_original(tmp_path, official, num_heads=4)
    with pytest.raises(WeightsError, match=r"config\.json: num_heads is 4, the configured model has 2"):
        load_transformer(wan, adapter, config=CONFIG)
    t2v, _ = write_original(tmp_path / "t2v", official, model_type="t2v")
    with pytest.raises(WeightsError, match="i2v"):
        load_transformer(t2v, adapter, config=CONFIG)


def test_unreadable_or_duplicated_tensors_are_named(tmp_path, official, original_dirs):
    wan, adapter = write_original(tmp_path, official)
    shard = wan / "diffusion_pytorch_model-00001-of-00003.safetensors"
    shard.write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match=re.escape(f"{shard}: cannot read")):
        load_transformer(wan, adapter, config=CONFIG)

    twice, adapter2 = write_original(tmp_path / "twice", official)
    _save(
        twice / "diffusion_pytorch_model-00002-of-00003.safetensors",
        {"head.head.weight": official["head.head.weight"]}
        | {k: official[k] for k in sorted(k for k in official if not is_adapter_key(k))[1::3]},
    )
    with pytest.raises(WeightsError, match=r"head\.head\.weight appears twice"):
        load_transformer(twice, adapter2, config=CONFIG)


def test_loras_are_fused_at_load_time(tmp_path, original_dirs, source):
    generator = torch.Generator().manual_seed(2)
    up = torch.randn(32, 4, generator=generator)
    down = torch.randn(4, 32, generator=generator)
    lora = tmp_path / "lora.safetensors"
    _save(
        lora,
        {
            "diffusion_model.blocks.0.self_attn.q.lora_up.weight": up,
            "diffusion_model.blocks.0.self_attn.q.lora_down.weight": down,
        },
    )
    model = load_transformer(*original_dirs, config=CONFIG, loras=[(lora, 0.5)])
    expected = source.blocks[0].attn1.to_q.weight + 0.5 * (up @ down)
    torch.testing.assert_close(model.blocks[0].attn1.to_q.weight, expected, rtol=0, atol=0)
    torch.testing.assert_close(
        model.blocks[0].attn1.to_k.weight, source.blocks[0].attn1.to_k.weight, rtol=0, atol=0
    )
