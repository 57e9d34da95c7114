"""The two-speaker and video-to-video endpoints on the whole local stack: the full flow of each (submit,
status, result, download, a second tenant's 404), and their own bad inputs answered with documented 4xx.

Both jobs are submitted at once and run one after the other on the stack's one sampler (a minute or two on
the tiny model); the bad inputs are checked while they run.
"""

from __future__ import annotations

import io

import av
import pytest

from loadtest import hostile_media as media
from loadtest.client import (
    TWO_SPEAKER_PATH,
    VIDEO_TO_VIDEO_PATH,
    ApiClient,
    dubbing_body,
    two_speaker_body,
)
from loadtest.stack import BATTERY_MAX_VIDEO_BYTES, BATTERY_MAX_VIDEO_SECONDS
from pipeline.audio import SAMPLE_RATE, decode_audio
from pipeline.streaming import speech_frame_count
from serve.client import NotFound

pytestmark = pytest.mark.e2e

JOB_TIMEOUT_S = 300
SOURCE = media.data_uri(media.counting_video(seconds=2.0, width=96, height=64), "video/mp4")


def _refusal(api: ApiClient, path: str, body: dict, status: int, code: str, field: str) -> None:
    response = api.post_job(body, path=path)
    assert response.status_code == status, response.text[:500]
    error = response.json()["error"]
    assert error["code"] == code, error
    assert field in {detail.get("field") for detail in error["details"]}, error


def _download(api: ApiClient, request_id: str) -> av.container.InputContainer:
    result = api.result(request_id)
    assert result.output is not None, result
    video = api.http.get(result.output.video)
    assert video.status_code == 200 and video.content[4:8] == b"ftyp"
    return av.open(io.BytesIO(video.content))


def test_two_speakers_and_dubbing_run_end_to_end(idle_stack, api: ApiClient, other_api: ApiClient) -> None:
    two = api.submit_accepted(
        two_speaker_body(order="left_right", frames=125, steps=6), path=TWO_SPEAKER_PATH
    )
    dub = api.submit_accepted(dubbing_body(video=SOURCE, frames=None, steps=6), path=VIDEO_TO_VIDEO_PATH)

    # While they run: each endpoint's own bad inputs, and nothing of the jobs for another tenant.
    without_right = {k: v for k, v in two_speaker_body().items() if k != "right_audio"}
    _refusal(api, TWO_SPEAKER_PATH, without_right, 422, "validation_error", "right_audio")
    _refusal(api, TWO_SPEAKER_PATH, two_speaker_body(order="together"), 422, "validation_error", "order")
    text = media.data_uri(media.text_bytes(), "video/mp4")
    _refusal(api, VIDEO_TO_VIDEO_PATH, dubbing_body(video=text), 415, "unsupported_media_type", "video")
    speech_as_video = media.data_uri(media.blip_wav(0.5), "video/mp4")
    _refusal(api, VIDEO_TO_VIDEO_PATH, dubbing_body(video=speech_as_video), 422, "invalid_video", "video")
    too_long = media.counting_video(seconds=BATTERY_MAX_VIDEO_SECONDS + 5, width=16, height=16)
    assert len(too_long) < BATTERY_MAX_VIDEO_BYTES
    long_body = dubbing_body(video=media.data_uri(too_long, "video/mp4"))
    _refusal(api, VIDEO_TO_VIDEO_PATH, long_body, 422, "invalid_video", "video")
    too_big = media.data_uri(b"\x00" * (BATTERY_MAX_VIDEO_BYTES + 1), "video/mp4")
    _refusal(api, VIDEO_TO_VIDEO_PATH, dubbing_body(video=too_big), 413, "input_too_large", "video")
    for request_id in (two, dub):
        for call in (other_api.status, other_api.result, other_api.cancel):
            with pytest.raises(NotFound):
                call(request_id)

    for request_id in (two, dub):
        outcome = api.wait_until(request_id, {"completed", "failed", "cancelled"}, timeout=JOB_TIMEOUT_S)
        assert outcome.status == "completed", outcome

    with _download(api, two) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert (video.width, video.height) == (480, 480)
        assert sum(1 for _ in container.decode(video=0)) == 125
        assert audio.duration * audio.time_base == pytest.approx(5.0, abs=0.05)
    with _download(api, dub) as container:
        video = container.streams.video[0]
        assert (video.width, video.height) == (96, 64)  # the source's size
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == speech_frame_count(decode_audio(media.ASSETS / "speech.mp3").size / SAMPLE_RATE)
    with pytest.raises(NotFound):
        other_api.result(dub)
