"""``python -m serve submit``: send one job to a running server, show its progress, download the MP4.

The mode follows the inputs: ``--image`` (with ``--audio2`` for two speakers) or ``--video`` (dubbing).
Inputs are local files (uploaded first), https URLs, file ids or the example names.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tqdm import tqdm

from serve.client import Client, ImageToVideo, StatusResponse, TwoSpeakers, VideoToVideo
from serve.client.errors import ApiError, JobFailed

DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_TOKEN = "local-dev-token"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serve submit", description=__doc__)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="portrait: file, URL, file id or example name")
    source.add_argument("--video", help="video to dub (video-to-video)")
    parser.add_argument("--audio", required=True, help="speech (the left person's with --audio2)")
    parser.add_argument("--audio2", help="the right person's speech: a two-speaker job")
    parser.add_argument("--order", choices=["meanwhile", "left_right", "right_left"], default="meanwhile")
    parser.add_argument("--prompt", help="what the video shows (default: each endpoint's)")
    parser.add_argument("--size", default="720x720 (1:1)", help="an enum value, e.g. '480x480 (1:1)'")
    parser.add_argument("--frames", type=int, choices=[125, 250], help="default 125; dubbing: the speech's")
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--match-audio-length", action="store_true", help="as long as the speech")
    parser.add_argument("--out", required=True, type=Path, help="where to write the MP4")
    parser.add_argument("--url", default=os.environ.get("INFINITETALK_URL", DEFAULT_URL))
    parser.add_argument("--token", default=os.environ.get("INFINITETALK_TOKEN", DEFAULT_TOKEN))
    parser.add_argument("--poll", action="store_true", help="poll the status instead of streaming events")
    return parser


def job_request(args: argparse.Namespace) -> ImageToVideo | TwoSpeakers | VideoToVideo:
    knobs = {"steps": args.steps, "match_audio_length": args.match_audio_length}
    if args.seed is not None:
        knobs["seed"] = args.seed
    prompt = {"prompt": args.prompt} if args.prompt else {}
    if args.video is not None:
        if args.audio2 is not None:
            raise SystemExit("error: --audio2 goes with --image (dubbing takes one speaker)")
        frames = {"frames": args.frames} if args.frames else {}
        return VideoToVideo(video=args.video, audio=args.audio, **prompt, **frames, **knobs)
    frames = {"frames": args.frames or 125}
    if args.audio2 is not None:
        return TwoSpeakers(
            image=args.image,
            left_audio=args.audio,
            right_audio=args.audio2,
            order=args.order,
            resolution=args.size,
            **prompt,
            **frames,
            **knobs,
        )
    return ImageToVideo(
        prompt=args.prompt or "a person is talking",
        image=args.image,
        audio=args.audio,
        size=args.size,
        **frames,
        **knobs,
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        request = job_request(args)
    except ValueError as error:  # pydantic's ValidationError: a knob out of range
        print(f"error: {error}", file=sys.stderr)
        return 2
    with (
        Client(args.url, args.token) as api,
        tqdm(total=1.0, unit="job", bar_format="{l_bar}{bar}| {postfix}") as bar,
    ):
        try:
            job = api.submit(request)
            bar.set_description(job.request_id[:8])

            def show(status: StatusResponse) -> None:
                bar.n = status.progress or 0.0
                where = (
                    f"queue position {status.queue_position}"
                    if status.status == "in_queue"
                    else status.status
                )
                eta = f", about {status.eta_seconds:.0f} s left" if status.eta_seconds else ""
                bar.set_postfix_str(where + eta)

            result = api.wait(job, on_progress=show, stream=not args.poll)
            api.download(result, args.out)
        except (ApiError, JobFailed) as error:
            bar.close()
            print(f"error: {error}", file=sys.stderr)
            return 1
    print(f"wrote {args.out} ({result.request_id})", file=sys.stderr)
    return 0
