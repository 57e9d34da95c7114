"""``POST .../fast/multi``: two speakers through the same submit/status/result/cancel flow."""

from __future__ import annotations

from pathlib import Path

import pytest
from api_fixtures import ALPHA, BETA, OkEngine, build_stack
from fastapi.testclient import TestClient

from serve.api.routes import TWO_SPEAKER_PATH
from serve.config import ModelConfig
from serve.jobs.records import JobStatus

BODY = {
    "image": "Runcomfy_example_1278_1.png",
    "left_audio": "Runcomfy_example_1278_1.mp3",
    "right_audio": "Runcomfy_example_1278_1.mp3",
}


@pytest.fixture
def stack(redis_conn, tmp_path):
    return build_stack(redis_conn, tmp_path)


@pytest.fixture
def http(stack):
    with TestClient(stack.app(), raise_server_exceptions=False) as client:
        yield client


def test_a_two_speaker_job_runs_with_both_tracks(http, stack) -> None:
    body = {**BODY, "order": "left_right", "left_box": [0, 0, 60, 90], "right_box": [60, 0, 120, 90]}
    response = http.post(TWO_SPEAKER_PATH, json={**body, "resolution": "480x480 (1:1)"}, headers=ALPHA)
    assert response.status_code == 202, response.text
    request_id = response.json()["request_id"]
    record = stack.store.get(request_id)
    assert set(record.inputs) == {"image", "audio", "audio2"}
    settings = record.settings
    assert (settings.order, settings.width, settings.frames) == ("left_right", 480, 125)
    assert settings.boxes == ((0.0, 0.0, 60.0, 90.0), (60.0, 0.0, 120.0, 90.0))
    engine = OkEngine()
    assert stack.claim_and_run(engine) is JobStatus.COMPLETED
    assert set(engine.seen[0][1]) == {"image", "audio", "audio2"}
    assert http.get(f"/v1/requests/{request_id}/result", headers=ALPHA).json()["status"] == "completed"
    assert http.get(f"/v1/requests/{request_id}/status", headers=BETA).status_code == 404


def test_match_audio_length_counts_both_speakers_in_turn(http, stack) -> None:
    one = http.post(TWO_SPEAKER_PATH, json={**BODY, "match_audio_length": True}, headers=ALPHA)
    turns = http.post(
        TWO_SPEAKER_PATH, json={**BODY, "match_audio_length": True, "order": "right_left"}, headers=ALPHA
    )
    meanwhile = stack.store.get(one.json()["request_id"]).settings.frames
    in_turn = stack.store.get(turns.json()["request_id"]).settings.frames
    assert abs(in_turn - 2 * meanwhile) <= 1


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"right_audio": ...}, "right_audio"),
        ({"order": "together"}, "order"),
        ({"left_box": [0, 0, 10, 10]}, None),
        ({"left_box": [10, 0, 5, 10], "right_box": [0, 0, 5, 5]}, "left_box"),
        ({"left_box": [0, 0, 10], "right_box": [0, 0, 5, 5]}, "left_box"),
        ({"audio": "x.mp3"}, "audio"),
    ],
)
def test_bad_two_speaker_bodies_are_refused_by_field(http, stack, changes, field) -> None:
    body = {**BODY, **changes}
    body = {name: value for name, value in body.items() if value is not ...}
    response = http.post(TWO_SPEAKER_PATH, json=body, headers=ALPHA)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    if field is not None:
        assert field in {detail.get("field") for detail in error["details"]}, error
    assert stack.store.counts()[JobStatus.IN_QUEUE] == 0


def test_a_right_audio_that_is_not_audio_names_its_field(http) -> None:
    response = http.post(
        TWO_SPEAKER_PATH, json={**BODY, "right_audio": "Runcomfy_example_1278_1.png"}, headers=ALPHA
    )
    assert response.status_code == 422
    assert {d.get("field") for d in response.json()["error"]["details"]} == {"right_audio"}


def test_a_single_speaker_checkpoint_refuses_two_speakers_at_submit(redis_conn, tmp_path) -> None:
    single = build_stack(
        redis_conn,
        tmp_path,
        overrides={"model": ModelConfig(preset="infinitetalk-14b", weights_dir=str(tmp_path))},
    )
    with TestClient(single.app(), raise_server_exceptions=False) as client:
        response = client.post(TWO_SPEAKER_PATH, json=BODY, headers=ALPHA)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "two_speakers_unavailable" and "infinitetalk-14b-multi" in error["message"]
    assert single.store.counts()[JobStatus.IN_QUEUE] == 0


def test_a_box_outside_the_image_is_refused_at_submit(http, stack) -> None:
    # The example portrait is 384x384: a right box reaching x=400 cannot be in it.
    body = {**BODY, "left_box": [0, 0, 100, 100], "right_box": [200, 0, 400, 100]}
    response = http.post(TWO_SPEAKER_PATH, json=body, headers=ALPHA)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_box" and "384" in error["message"]
    assert {d.get("field") for d in error["details"]} == {"right_box"}
    assert stack.store.counts()[JobStatus.IN_QUEUE] == 0
    staged = [path for path in Path(stack.config.storage.root).rglob("*") if path.is_file()]
    assert staged == [], "the staged inputs were not removed"
