"""``POST .../video-to-video``: dubbing a video through the same submit/status/result/cancel flow."""

from __future__ import annotations

import io

import pytest
from api_fixtures import ALPHA, BETA, OkEngine, build_stack
from fastapi.testclient import TestClient
from PIL import Image

from loadtest.hostile_media import blip_wav, counting_video, data_uri, text_bytes
from pipeline.audio import decode_audio
from pipeline.streaming import FPS
from serve.api.routes import VIDEO_TO_VIDEO_PATH
from serve.jobs.records import JobStatus

SOURCE = data_uri(counting_video(seconds=1.0, width=96, height=64), "video/mp4")
SPEECH = "Runcomfy_example_1278_1.mp3"
BODY = {"video": SOURCE, "audio": SPEECH}


def _png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "gray").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def stack(redis_conn, tmp_path):
    return build_stack(redis_conn, tmp_path, fetch={"max_video_seconds": 5, "max_video_bytes": 200_000})


@pytest.fixture
def http(stack):
    with TestClient(stack.app(), raise_server_exceptions=False) as client:
        yield client


def _speech_frames(assets) -> int:
    return int(decode_audio(assets / "speech.mp3").size / 16_000 * FPS)


def test_a_dubbing_job_keeps_the_source_size_and_lasts_as_long_as_the_speech(http, stack, assets) -> None:
    response = http.post(VIDEO_TO_VIDEO_PATH, json=BODY, headers=ALPHA)
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    record = stack.store.get(request_id)
    assert set(record.inputs) == {"video", "audio"}
    settings = record.settings
    assert (settings.width, settings.height, settings.frames) == (96, 64, _speech_frames(assets))
    assert settings.order is None and settings.prompt == "a person is talking"
    engine = OkEngine()
    assert stack.claim_and_run(engine) is JobStatus.COMPLETED
    assert set(engine.seen[0][1]) == {"video", "audio"}
    assert http.get(f"/v1/requests/{request_id}/result", headers=ALPHA).json()["status"] == "completed"
    assert http.get(f"/v1/requests/{request_id}/status", headers=BETA).status_code == 404
    assert http.post(f"/v1/requests/{request_id}/cancel", headers=BETA).status_code == 404


def test_a_frame_count_and_a_large_source(http, stack) -> None:
    large = data_uri(counting_video(seconds=0.2, width=1600, height=900), "video/mp4")
    response = http.post(VIDEO_TO_VIDEO_PATH, json={**BODY, "video": large, "frames": 125}, headers=ALPHA)
    assert response.status_code == 202, response.text
    settings = stack.store.get(response.json()["request_id"]).settings
    assert (settings.width, settings.height, settings.frames) == (1280, 720, 125)


def test_an_uploaded_video_is_a_source(http, stack) -> None:
    upload = http.post("/v1/files", content=counting_video(seconds=1.0), headers=ALPHA)
    assert upload.status_code == 201, upload.text
    response = http.post(VIDEO_TO_VIDEO_PATH, json={**BODY, "video": upload.json()["file_id"]}, headers=ALPHA)
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("changes", "status", "code", "field"),
    [
        ({"video": ...}, 422, "validation_error", "video"),
        ({"audio": ...}, 422, "validation_error", "audio"),
        ({"resolution": "720x720 (1:1)"}, 422, "validation_error", "resolution"),
        ({"frames": 100}, 422, "validation_error", "frames"),
        ({"video": "Runcomfy_example_1278_1.png"}, 422, "invalid_input_reference", "video"),
        ({"video": data_uri(_png(), "image/png")}, 415, "unsupported_media_type", "video"),
        ({"video": data_uri(text_bytes(), "video/mp4")}, 415, "unsupported_media_type", "video"),
        ({"video": data_uri(blip_wav(0.5), "video/mp4")}, 422, "invalid_video", "video"),
        ({"video": data_uri(counting_video(seconds=6.0), "video/mp4")}, 422, "invalid_video", "video"),
        ({"video": data_uri(b"\x00" * 300_000, "video/mp4")}, 413, "input_too_large", "video"),
        ({"audio": SOURCE.replace("video/mp4", "audio/mp4")}, 422, "invalid_audio", "audio"),
    ],
)
def test_bad_dubbing_bodies_are_refused_by_field(http, stack, changes, status, code, field) -> None:
    body = {name: value for name, value in {**BODY, **changes}.items() if value is not ...}
    response = http.post(VIDEO_TO_VIDEO_PATH, json=body, headers=ALPHA)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    fields = {detail.get("field") for detail in error.get("details", [])} | {error.get("field")}
    assert field in fields, error
    assert stack.store.counts()[JobStatus.IN_QUEUE] == 0
