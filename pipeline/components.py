"""Build or load every model of a preset onto one device: the DiT, VAE, CLIP, umT5 (+ tokenizer), wav2vec2."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline.audio import InfiniteTalkWav2Vec2
from pipeline.compilation import compile_transformer
from pipeline.conditioning import ClipImageEncoder, TextEncoder, WanVAE, build_tiny_tokenizer, load_tokenizer
from pipeline.errors import InputError, WeightsError
from pipeline.models import InfiniteTalkTransformer3DModel
from pipeline.models.attention_kernels import AttentionKernel, resolve_kernel
from pipeline.models.transformer import check_token_chunk
from pipeline.presets import Fp8Mode, Preset, get_preset
from pipeline.quantization import quantize_transformer
from pipeline.weights import clip, dit, t5, vae, wav2vec2
from pipeline.weights.layout import discover

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraSpec:
    path: Path
    scale: float = 1.0


@dataclass
class Components:
    preset: Preset
    device: torch.device
    dtype: torch.dtype
    transformer: InfiniteTalkTransformer3DModel
    vae: WanVAE
    text_encoder: TextEncoder
    image_encoder: ClipImageEncoder
    audio_encoder: InfiniteTalkWav2Vec2 | None
    identities: dict[str, str] = field(default_factory=dict)
    #: Guidance's conditional and negative passes as one batch of 2 (True) or one after the other (False:
    #: half the DiT's activation peak).
    batch_guidance: bool = True

    @property
    def vae_dtype(self) -> torch.dtype:
        return self.vae.dtype

    @property
    def latent_channels(self) -> int:
        return self.vae.latent_channels


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} requested but CUDA is not available")
    return resolved


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 on GPU (the 14B model's native precision), fp32 on CPU (bf16 matmuls are slow there)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def load_components(
    preset_name: str,
    *,
    weights_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    loras: list[LoraSpec] | tuple[LoraSpec, ...] = (),
    with_audio_encoder: bool = True,
    fp8: Fp8Mode | str = Fp8Mode.OFF,
    token_chunk: int | None = None,
    vae_tiling: bool = False,
    batch_guidance: bool = True,
    attention: AttentionKernel | str = AttentionKernel.AUTO,
    compile: bool = False,
    compile_tuning: bool = False,
) -> Components:
    """The tiny preset builds random weights from its fixed seed; the 14B preset loads ``weights_dir``.

    ``fp8`` quantises the DiT's block linears after loading (and after LoRAs are merged), see
    ``pipeline.quantization``. ``token_chunk``, ``vae_tiling`` and ``batch_guidance=False`` lower the
    activation peak (the same DiT output; the tiled VAE blends tile seams); what each saves is counted by
    ``python -m bench.activation_memory``. ``attention`` picks the self-attention kernel
    (``pipeline.models.attention_kernels``; ``auto``: the fastest exact kernel this device runs) and
    ``compile`` compiles the DiT's blocks (``pipeline.compilation``, with Inductor's kernel tuning when
    ``compile_tuning``; warm it up with ``pipeline.warmup.warm_up``).
    """
    preset = get_preset(preset_name)
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    fp8 = Fp8Mode(fp8)
    _check_token_chunk(token_chunk)  # both before minutes of loading
    if preset.needs_weights:
        if weights_dir is None:
            raise WeightsError(f"preset {preset.name!r} needs a weights directory (--weights DIR)")
        components = _load(preset, Path(weights_dir), device, dtype, loras, with_audio_encoder)
    else:
        if weights_dir is not None:
            raise InputError(f"preset {preset.name!r} uses random weights; it takes no weights directory")
        if loras:
            raise InputError(f"preset {preset.name!r} uses random weights; LoRAs apply to real weights only")
        components = _build(preset, device, dtype, with_audio_encoder)
    return apply_options(
        components,
        fp8=fp8,
        token_chunk=token_chunk,
        vae_tiling=vae_tiling,
        batch_guidance=batch_guidance,
        attention=attention,
        compile=compile,
        compile_tuning=compile_tuning,
    )


def apply_options(
    components: Components,
    *,
    fp8: Fp8Mode | str = Fp8Mode.OFF,
    token_chunk: int | None = None,
    vae_tiling: bool = False,
    batch_guidance: bool = True,
    attention: AttentionKernel | str = AttentionKernel.AUTO,
    compile: bool = False,
    compile_tuning: bool = False,
) -> Components:
    """How loaded models run (``load_components`` explains each option), recorded in ``identities``.

    Compilation comes last, so it sees the quantised weights and the chosen kernel."""
    fp8 = Fp8Mode(fp8)
    _check_token_chunk(token_chunk)
    transformer = components.transformer
    kernel = resolve_kernel(
        attention, components.device, components.dtype, transformer.config.attention_head_dim
    )
    transformer.set_token_chunk(token_chunk)
    transformer.set_attention_kernel(kernel)
    quantize_transformer(transformer, fp8)
    if compile:
        compile_transformer(transformer, tuned=compile_tuning)
    if vae_tiling:
        components.vae.enable_tiling()
    else:
        components.vae.disable_tiling()
    components.batch_guidance = batch_guidance
    components.identities |= {
        "fp8": fp8.value,
        "token_chunk": str(token_chunk or "off"),
        "vae_tiling": "on" if vae_tiling else "off",
        "guidance": "batched when cfg ≠ 1" if batch_guidance else "one pass at a time when cfg ≠ 1",
        "attention": kernel.value,
        "compiled": ("yes, tuned" if compile_tuning else "yes") if compile else "no",
    }
    return components


def _check_token_chunk(tokens: int | None) -> None:
    try:
        check_token_chunk(tokens)
    except ValueError as error:
        raise InputError(str(error)) from None


def random_components(
    preset_name: str,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    with_audio_encoder: bool = True,
) -> Components:
    """Every component of a preset with random weights from its seed, real sizes included (benchmarks)."""
    preset = get_preset(preset_name)
    device = resolve_device(device)
    return _build(preset, device, dtype or default_dtype(device), with_audio_encoder)


def _build(preset: Preset, device: torch.device, dtype: torch.dtype, with_audio: bool) -> Components:
    seed = preset.random_seed
    on_device = {"device": device, "dtype": dtype}
    text = TextEncoder(
        t5.build_text_encoder(preset.text_encoder, seed, **on_device),
        build_tiny_tokenizer(preset.text_encoder["vocab_size"]),
        max_tokens=preset.text_max_tokens,
    )
    return Components(
        preset=preset,
        device=device,
        dtype=dtype,
        transformer=dit.build_transformer(preset.transformer, seed, **on_device),
        vae=vae.build_vae(preset.vae, seed, **on_device),
        text_encoder=text,
        image_encoder=clip.build_image_encoder(preset.image_encoder, seed, **on_device),
        audio_encoder=wav2vec2.build_audio_encoder(preset.audio_encoder, seed, **on_device)
        if with_audio
        else None,
        identities={"preset": f"{preset.name} (random weights, seed {seed})"},
    )


def _load(
    preset: Preset,
    root: Path,
    device: torch.device,
    dtype: torch.dtype,
    loras: list[LoraSpec] | tuple[LoraSpec, ...],
    with_audio: bool,
) -> Components:
    paths = discover(root, preset.variant)
    for lora in loras:
        if not lora.path.is_file():
            raise WeightsError(f"{lora.path}: LoRA file does not exist")
    logger.info(
        "loading %s from %s (%s layout) onto %s as %s", preset.name, root, paths.wan_layout, device, dtype
    )
    transformer = dit.load_transformer(
        paths.wan_dir,
        paths.infinitetalk,
        config=preset.transformer,
        device=device,
        dtype=dtype,
        loras=[(lora.path, lora.scale) for lora in loras],
    )
    text = TextEncoder(
        t5.load_text_encoder(paths.t5, config=preset.text_encoder, device=device, dtype=dtype),
        load_tokenizer(paths.tokenizer),
        max_tokens=preset.text_max_tokens,
    )
    identities = paths.identities()
    identities["loras"] = ", ".join(f"{lora.path.name}@{lora.scale}" for lora in loras) or "none"
    return Components(
        preset=preset,
        device=device,
        dtype=dtype,
        transformer=transformer,
        vae=vae.load_vae(paths.vae, config=preset.vae, device=device, dtype=dtype),
        text_encoder=text,
        image_encoder=clip.load_image_encoder(
            paths.clip, config=preset.image_encoder, device=device, dtype=dtype
        ),
        audio_encoder=wav2vec2.load_audio_encoder(paths.wav2vec2, device=device, dtype=dtype)
        if with_audio
        else None,
        identities=identities,
    )


def load_speech_encoder(
    preset_name: str,
    *,
    weights_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> InfiniteTalkWav2Vec2:
    """Only the wav2vec2 encoder, for a process that runs the audio stage alone (the AudioEncoder)."""
    preset = get_preset(preset_name)
    device = resolve_device(device)
    dtype = dtype or default_dtype(device)
    if not preset.needs_weights:
        return wav2vec2.build_audio_encoder(
            preset.audio_encoder, preset.random_seed, device=device, dtype=dtype
        )
    if weights_dir is None:
        raise WeightsError(f"preset {preset.name!r} needs a weights directory (--weights DIR)")
    paths = discover(Path(weights_dir), preset.variant)
    return wav2vec2.load_audio_encoder(paths.wav2vec2, device=device, dtype=dtype)
