"""``python -m pipeline generate ...``: one video from a portrait and a speech recording, no server."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Literal

from tqdm import tqdm

from pipeline.audio import SAMPLE_RATE, decode_audio
from pipeline.components import LoraSpec, load_components
from pipeline.conditioning import load_image
from pipeline.errors import InputError, PipelineError
from pipeline.models.attention_kernels import AttentionKernel
from pipeline.pipeline import GenerationRequest, InfiniteTalkPipeline
from pipeline.presets import NEGATIVE_PROMPT, PRESETS, Fp8Mode
from pipeline.progress import Progress
from pipeline.sizes import parse_size
from pipeline.source_video import chunk_references, dubbing_size, probe_video
from pipeline.streaming import DEFAULT_MAX_SPEECH_FRAMES, speech_frame_count
from pipeline.two_speakers import Box, SpeakingOrder, arrange_speech

logger = logging.getLogger("pipeline")

DEFAULT_SIZE = "720x720"
DEFAULT_FRAMES = 125
AUTO = "auto"


def parse_lora(text: str) -> LoraSpec:
    """``PATH`` or ``PATH:SCALE``."""
    path, _, scale = text.rpartition(":") if ":" in text else (text, "", "1.0")
    try:
        return LoraSpec(Path(path), float(scale))
    except ValueError:
        raise InputError(f"--lora {text!r}: scale {scale!r} is not a number") from None


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_box(text: str) -> Box:
    """argparse type: ``LEFT,TOP,RIGHT,BOTTOM`` in pixels of the portrait."""
    parts = text.split(",")
    try:
        if len(parts) != 4:
            raise ValueError
        return Box(*(float(part) for part in parts))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LEFT,TOP,RIGHT,BOTTOM (four numbers)") from None


def frame_count(text: str) -> int | Literal["auto"]:
    """argparse type: ``auto`` (as long as the speech) or a frame count ≥ 1."""
    return AUTO if text == AUTO else positive_int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pipeline", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("generate", help="generate one talking video")
    reference = gen.add_mutually_exclusive_group(required=True)
    reference.add_argument("--image", type=Path, help="portrait image (png, jpg, webp ...)")
    reference.add_argument(
        "--video",
        type=Path,
        help="dub this video instead: each chunk follows the source's frame at its start; the output keeps "
        "the source's size (scaled down to fit 1280x720 pixels of area) and is as long as the speech",
    )
    gen.add_argument("--audio", required=True, type=Path, help="speech (wav, mp3, m4a, ogg, flac ...)")
    gen.add_argument(
        "--audio2",
        type=Path,
        help="a second person's speech: two speakers, --audio the left person's, this the right one's",
    )
    gen.add_argument(
        "--order",
        choices=[order.value for order in SpeakingOrder],
        default=SpeakingOrder.MEANWHILE.value,
        help="with --audio2: both at once (meanwhile, default), left first, or right first",
    )
    gen.add_argument(
        "--left-box", type=parse_box, help="with --audio2: LEFT,TOP,RIGHT,BOTTOM of the left person"
    )
    gen.add_argument("--right-box", type=parse_box, help="with --audio2: the right person's box")
    gen.add_argument("--prompt", default="a person is talking", help="what the video shows")
    gen.add_argument("--negative-prompt", default=NEGATIVE_PROMPT)
    gen.add_argument("--size", help="output WIDTHxHEIGHT (default 720x720; with --video, the source's)")
    gen.add_argument(
        "--frames",
        type=frame_count,
        help="output frames at 25 fps (default 125 = 5 s; with --video, auto), or 'auto': as long as the "
        "speech, at most --max-frames",
    )
    gen.add_argument(
        "--max-frames",
        type=positive_int,
        default=DEFAULT_MAX_SPEECH_FRAMES,
        help=f"with --frames auto, the longest video (default {DEFAULT_MAX_SPEECH_FRAMES} = 40 s)",
    )
    gen.add_argument("--steps", type=int, default=7)
    gen.add_argument("--shift", type=float, default=11.0)
    gen.add_argument("--cfg", type=float, default=1.0, help="text guidance scale; 1 = no pass of its own")
    gen.add_argument(
        "--audio-cfg",
        type=float,
        default=1.0,
        help="audio guidance scale; 1 = no pass of its own (the reference suggests 2 with the lightx2v "
        "LoRA, 4 without); with --cfg also not 1, three passes per step",
    )
    gen.add_argument("--seed", type=int, default=96860978)
    gen.add_argument("--color-correction", type=float, default=1.0, help="0 disables, 1 = full strength")
    gen.add_argument("--out", required=True, type=Path, help="output .mp4 path")
    source = gen.add_mutually_exclusive_group()
    source.add_argument("--weights", type=Path, help="weights directory (see README: 'Real weights')")
    source.add_argument("--preset", choices=sorted(PRESETS), help="model preset; tiny needs no weights")
    gen.add_argument("--lora", action="append", default=[], type=str, help="PATH[:SCALE], repeatable")
    gen.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    gen.add_argument(
        "--fp8",
        choices=[mode.value for mode in Fp8Mode],
        default=Fp8Mode.OFF.value,
        help="fp8 DiT weights: 'weights' halves their memory, 'dynamic' (per-row scales) and "
        "'dynamic-tensorwise' also run fp8 matmuls (Ada/Hopper; fast only with --compile)",
    )
    gen.add_argument(
        "--attention",
        choices=[kernel.value for kernel in AttentionKernel],
        default=AttentionKernel.AUTO.value,
        help="self-attention kernel: 'auto' (default: the fastest exact kernel this device runs, cuDNN on "
        "Hopper), 'sdpa' (PyTorch's own pick, the reference), 'sdpa-cudnn', 'sdpa-flash', 'sage' "
        "(SageAttention, pip install sageattention: approximate, slower than cuDNN on Hopper), 'fa4' "
        "(FlashAttention-4 on Hopper/Blackwell, pip install flash-attn-4; not measured yet)",
    )
    gen.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the DiT blocks: faster passes after a compile on the first one (20 s at "
        "720x720 on an H200)",
    )
    gen.add_argument(
        "--token-chunk",
        type=positive_int,
        help="run the DiT's token-wise work N tokens at a time: a lower activation peak, the same arithmetic",
    )
    gen.add_argument(
        "--vae-tiling", action="store_true", help="decode and encode video in spatial tiles (less memory)"
    )
    gen.add_argument(
        "--batch-guidance",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --cfg other than 1, run the conditional and negative pass as one batch (default) or, "
        "with --no-batch-guidance, one after the other in half the activation memory",
    )
    return parser


def generate(args: argparse.Namespace) -> Path:
    if args.video is not None and args.size is not None:
        raise InputError("--size goes with --image; a dubbed video keeps its source's size")
    if args.video is not None and args.audio2 is not None:
        raise InputError("--video dubs one speaker; --audio2 goes with --image")
    loras = [parse_lora(text) for text in args.lora]
    speech = decode_audio(args.audio)
    speech2 = decode_audio(args.audio2) if args.audio2 else None
    boxes = _boxes(args)
    frames = args.frames or (AUTO if args.video is not None else DEFAULT_FRAMES)
    if frames == AUTO:
        tracks = (speech,) if speech2 is None else arrange_speech(speech, speech2, SpeakingOrder(args.order))
        frames = speech_frame_count(tracks[0].size / SAMPLE_RATE, args.max_frames)
        if frames < 1:
            raise InputError(f"{args.audio}: the speech is shorter than one video frame (40 ms)")
    source_frames = None
    if args.video is not None:
        probe_video(args.video)
        source_frames = chunk_references(args.video, frames)
        image = source_frames[0]
        width, height = dubbing_size(*image.size)
    else:
        image = load_image(args.image)
        width, height = parse_size(args.size or DEFAULT_SIZE)
    real = "infinitetalk-14b-multi" if args.audio2 else "infinitetalk-14b"
    preset = args.preset or (real if args.weights else "tiny")
    started = time.perf_counter()
    components = load_components(
        preset,
        weights_dir=args.weights,
        device=args.device,
        loras=loras,
        fp8=args.fp8,
        token_chunk=args.token_chunk,
        vae_tiling=args.vae_tiling,
        batch_guidance=args.batch_guidance,
        attention=args.attention,
        compile=args.compile,
    )
    load_seconds = time.perf_counter() - started
    pipe = InfiniteTalkPipeline(components)
    request = GenerationRequest(
        image=image,
        speech=speech,
        prompt=args.prompt,
        negative_prompt=args.negative_prompt,
        width=width,
        height=height,
        frames=frames,
        steps=args.steps,
        shift=args.shift,
        cfg=args.cfg,
        audio_cfg=args.audio_cfg,
        speech2=speech2,
        order=SpeakingOrder(args.order),
        boxes=boxes,
        source_frames=source_frames,
        seed=args.seed,
        color_correction=args.color_correction,
    )
    pipe.check_inputs(request)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # One unit per denoising step, per chunk decode and for the final write (pipeline.progress).
    with tqdm(total=None, unit="unit", desc="generating") as bar:

        def on_progress(p: Progress) -> None:
            bar.total = p.units_total
            bar.set_postfix_str(f"chunk {p.chunk + 1}/{p.chunks}")
            bar.update(p.units_done - bar.n)

        output = pipe.generate_to_file(request, args.out, progress=on_progress)
    timings = {"load": load_seconds, **output.timings}
    summary = ", ".join(f"{stage} {seconds:.2f}s" for stage, seconds in timings.items())
    print(f"wrote {args.out} ({frames} frames, {width}x{height}) — {summary}", file=sys.stderr)
    return args.out


def _boxes(args: argparse.Namespace) -> tuple[Box, Box] | None:
    given = (args.left_box, args.right_box)
    if given == (None, None):
        return None
    if args.audio2 is None:
        raise InputError("--left-box and --right-box go with two speakers (--audio2)")
    if None in given:
        raise InputError("give both --left-box and --right-box, or neither (the halves of the portrait)")
    return args.left_box, args.right_box


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        generate(args)
    except PipelineError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0
