"""The HTTP job API of API.md end to end, without Ray: FastAPI's TestClient in front of the app's own
services on a real Redis (job store, local storage, job runner); fake engines at the edge."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import socket
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import av
import pytest
import redis
from api_fixtures import (
    ALIASES,
    ALPHA,
    BETA,
    EXTENSIONS,
    MAX_AUDIO_BYTES,
    RETENTION_SECONDS,
    SEED_BODY,
    SEED_SETTINGS,
    URL_TTL_SECONDS,
    CrashingEngine,
    FailingEngine,
    OkEngine,
    SlowEngine,
    build_stack,
    png_bytes,
    run_in_thread,
    wait_until,
    wav_bytes,
)
from fastapi.testclient import TestClient

from pipeline.errors import AudioError
from serve.api.routes import MODEL_PATH
from serve.jobs.embedded_redis import EmbeddedRedis
from serve.jobs.records import InputSource, JobStatus

ASSETS = Path(__file__).resolve().parents[2] / "pipeline" / "assets"
ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.fixture
def stack(redis_conn, tmp_path):
    return build_stack(redis_conn, tmp_path)


def client_for(stack) -> TestClient:
    return TestClient(stack.app(), raise_server_exceptions=False)


@pytest.fixture
def http(stack):
    with client_for(stack) as client:
        yield client


def submit(http: TestClient, body: dict | None = None, headers: dict | None = None, **changes) -> dict:
    response = http.post(MODEL_PATH, json={**(body or SEED_BODY), **changes}, headers=headers or ALPHA)
    assert response.status_code == 202, response.text
    return response.json()


def status_of(http: TestClient, request_id: str, headers: dict | None = None) -> dict:
    response = http.get(f"/v1/requests/{request_id}/status", headers=headers or ALPHA)
    assert response.status_code == 200, response.text
    return response.json()


def result_of(http: TestClient, request_id: str) -> dict:
    response = http.get(f"/v1/requests/{request_id}/result", headers=ALPHA)
    assert response.status_code == 200, response.text
    return response.json()


def error_of(response, status: int) -> dict:
    """The one error shape of API.md, with the expected status; returns the ``error`` object."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message", "details"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert "Traceback" not in response.text
    return body["error"]


def fields_named(error: dict) -> set[str]:
    return {detail.get("field") for detail in error["details"]}


def data_uri(data: bytes, media_type: str) -> str:
    return f"data:{media_type};base64,{base64.b64encode(data).decode()}"


# -- submit --------------------------------------------------------------------------------------------------


def test_submit_the_seed_curl_body(http, stack) -> None:
    response = http.post(
        MODEL_PATH,
        content=json.dumps(SEED_BODY),
        headers={**ALPHA, "Content-Type": "application/json"},
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"request_id", "status_url", "result_url", "cancel_url"}
    request_id = body["request_id"]
    assert ID.match(request_id)
    base = f"http://testserver/v1/requests/{request_id}"
    assert body["status_url"] == f"{base}/status"
    assert body["result_url"] == f"{base}/result"
    assert body["cancel_url"] == f"{base}/cancel"

    record = stack.store.get(request_id, "alpha")
    assert record is not None and record.status is JobStatus.IN_QUEUE
    assert record.settings == SEED_SETTINGS
    # The example names resolved to the shipped assets, staged under this job, with their size and hash.
    portrait = (ASSETS / "portrait.png").read_bytes()
    image = record.inputs["image"]
    assert stack.storage.get_bytes(image.key) == portrait
    assert (image.size_bytes, image.sha256) == (len(portrait), hashlib.sha256(portrait).hexdigest())
    assert image.source is InputSource.EXAMPLE
    assert stack.storage.get_bytes(record.inputs["audio"].key) == (ASSETS / "speech.mp3").read_bytes()
    assert record.timings["submit_inputs"] >= 0


def test_submit_urls_follow_the_request_host(http) -> None:
    response = http.post(MODEL_PATH, json=SEED_BODY, headers={**ALPHA, "Host": "talk.example.org:8443"})
    assert response.status_code == 202
    body = response.json()
    assert body["status_url"] == f"http://talk.example.org:8443/v1/requests/{body['request_id']}/status"
    assert body["cancel_url"].startswith("http://talk.example.org:8443/v1/requests/")


def test_public_base_url_wins_over_the_request_host(redis_conn, tmp_path) -> None:
    stack = build_stack(redis_conn, tmp_path, public_base_url="https://api.talk.example/")
    with client_for(stack) as http:
        response = http.post(MODEL_PATH, json=SEED_BODY, headers={**ALPHA, "Host": "internal:8000"})
        assert response.status_code == 202
        body = response.json()
        request_id = body["request_id"]
        assert body["status_url"] == f"https://api.talk.example/v1/requests/{request_id}/status"
        assert body["result_url"] == f"https://api.talk.example/v1/requests/{request_id}/result"
        stack.claim_and_run(OkEngine())
        video = result_of(http, request_id)["output"]["video"]
        assert video.startswith(f"https://api.talk.example/v1/outputs/alpha/{request_id}/run1/video.mp4?")


def test_submit_accepts_every_field_and_data_uris(http, stack) -> None:
    image, audio = png_bytes(), wav_bytes()
    body = {
        "241_positive_prompt": "  a man reads the news  ",
        "284_image": data_uri(image, "image/png"),
        "125_audio": data_uri(audio, "audio/wav"),
        "245_valuex246_value": "1280x720 (16:9)",
        "270_value": 250,
        "128_seed": 2**64 - 1,
        "128_steps": 20,
        "128_shift": 1,
        "128_cfg": 0.6,
    }
    request_id = submit(http, body)["request_id"]
    record = stack.store.get(request_id)
    settings = record.settings
    assert settings.prompt == "a man reads the news"
    assert (settings.width, settings.height, settings.frames) == (1280, 720, 250)
    assert (settings.seed, settings.steps, settings.shift, settings.cfg) == (2**64 - 1, 20, 1.0, 0.6)
    assert stack.storage.get_bytes(record.inputs["image"].key) == image
    assert stack.storage.get_bytes(record.inputs["audio"].key) == audio
    assert record.inputs["image"].source is InputSource.DATA


def test_match_audio_length_makes_the_job_as_long_as_the_speech(http, stack) -> None:
    speech = data_uri(wav_bytes(2.5), "audio/wav")
    body = {"125_audio": speech, "match_audio_length": True, "audio_cfg": 2}
    request_id = submit(http, **body)["request_id"]
    settings = stack.store.get(request_id).settings
    assert (settings.frames, settings.audio_cfg) == (62, 2.0)  # 62.5 frames: the whole ones
    # Left off, the seed's frame count stands.
    plain = submit(http, **{"125_audio": speech})["request_id"]
    assert stack.store.get(plain).settings.frames == 125


def test_match_audio_length_stops_at_the_servers_cap(redis_conn, tmp_path) -> None:
    stack = build_stack(redis_conn, tmp_path, fetch={"max_speech_frames": 40})
    with client_for(stack) as client:
        body = {"125_audio": data_uri(wav_bytes(2.5), "audio/wav"), "match_audio_length": True}
        request_id = submit(client, **body)["request_id"]
    assert stack.store.get(request_id).settings.frames == 40


def test_match_audio_length_refuses_speech_shorter_than_a_frame(http, stack) -> None:
    body = {**SEED_BODY, "125_audio": data_uri(wav_bytes(0.03), "audio/wav"), "match_audio_length": True}
    error = error_of(http.post(MODEL_PATH, json=body, headers=ALPHA), 422)
    assert error["code"] == "invalid_audio" and fields_named(error) == {"125_audio"}
    assert "less than one video frame" in error["message"]
    assert stack.store.counts()[JobStatus.IN_QUEUE] == 0
    assert stack.objects("inputs/") == []


# -- status through a job's life -----------------------------------------------------------------------------


def test_queue_position_shifts_as_jobs_ahead_are_claimed_or_cancelled(http, stack) -> None:
    ids = [submit(http)["request_id"] for _ in range(4)]
    assert [status_of(http, i)["queue_position"] for i in ids] == [0, 1, 2, 3]
    queued = status_of(http, ids[3])
    assert queued["status"] == "in_queue"
    assert "started_at" not in queued and "error" not in queued
    datetime.fromisoformat(queued["created_at"])

    assert stack.store.claim_next("worker-x").request_id == ids[0]
    assert "queue_position" not in status_of(http, ids[0])
    assert [status_of(http, i)["queue_position"] for i in ids[1:]] == [0, 1, 2]

    assert http.post(f"/v1/requests/{ids[1]}/cancel", headers=ALPHA).status_code == 200
    assert [status_of(http, i)["queue_position"] for i in ids[2:]] == [0, 1]
    assert "queue_position" not in status_of(http, ids[1])


def test_in_progress_shows_progress_and_eta(redis_conn, tmp_path) -> None:
    # A short lease makes the heartbeat (every third of it) carry progress to the store quickly.
    stack = build_stack(redis_conn, tmp_path, lease_seconds=0.3)
    engine = SlowEngine(fraction=0.25, eta=30.0)
    with client_for(stack) as http:
        request_id = submit(http)["request_id"]
        thread, outcome = run_in_thread(lambda: stack.claim_and_run(engine))
        try:
            assert engine.started.wait(5)
            wait_until(lambda: status_of(http, request_id).get("progress") == 0.25)
            current = status_of(http, request_id)
            assert current["status"] == "in_progress"
            assert current["eta_seconds"] == 30.0
            assert current["attempt"] == 1
            assert "queue_position" not in current
            datetime.fromisoformat(current["started_at"])
            # The result endpoint answers the current state while the job runs.
            running = result_of(http, request_id)
            assert running["status"] == "in_progress" and "output" not in running
        finally:
            engine.release.set()
            thread.join(10)
        assert outcome == [JobStatus.COMPLETED]
        assert status_of(http, request_id)["progress"] == 1.0


def test_completed_result_and_download(http, stack) -> None:
    request_id = submit(http)["request_id"]
    engine = OkEngine()
    assert stack.claim_and_run(engine) is JobStatus.COMPLETED
    assert engine.calls == 1
    settings, inputs = engine.seen[0]
    assert settings.seed == 96860978 and inputs["image"] == (ASSETS / "portrait.png").read_bytes()

    current = status_of(http, request_id)
    assert current["status"] == "completed" and current["progress"] == 1.0
    assert "eta_seconds" not in current and "error" not in current

    result = result_of(http, request_id)
    assert result["status"] == "completed"
    video_url = result["output"]["video"]
    assert video_url.startswith(f"http://testserver/v1/outputs/alpha/{request_id}/run1/video.mp4?")
    timings = result["timings"]
    for stage in (
        "submit_inputs",
        "fetch_inputs",
        "audio_encode",
        "text_encode",
        "sampling",
        "vae_decode",
        "mux",
        "upload",
    ):
        assert timings[stage] >= 0, stage
    assert result["reproducibility"] == {"seed": 96860978, "output_size": "720x720"}
    finished = datetime.fromisoformat(result["finished_at"]).timestamp()
    expires = datetime.fromisoformat(result["expires_at"]).timestamp()
    assert expires == pytest.approx(finished + RETENTION_SECONDS, abs=1e-3)

    # The signed URL needs no token and serves the MP4 bytes.
    download = http.get(video_url)
    assert download.status_code == 200
    assert download.headers["content-type"] == "video/mp4"
    stored = stack.storage.get_bytes(f"outputs/alpha/{request_id}/run1/video.mp4")
    assert download.content == stored and download.content[4:8] == b"ftyp"
    with av.open(io.BytesIO(download.content)) as container:
        assert container.streams.video[0].codec_context.name == "h264"
        assert len(container.streams.audio) == 1


def test_download_links_are_signed_and_expire(http, stack) -> None:
    request_id = submit(http)["request_id"]
    stack.claim_and_run(OkEngine())
    url = urlsplit(result_of(http, request_id)["output"]["video"])
    query = parse_qs(url.query)
    sig, expires, kid = query["sig"][0], query["expires"][0], query["kid"][0]
    assert int(expires) == pytest.approx(stack.clock() + URL_TTL_SECONDS, abs=2)

    tampered = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    error_of(http.get(f"{url.path}?expires={expires}&kid={kid}&sig={tampered}"), 404)
    error_of(http.get(f"{url.path}?expires={int(expires) + 1000}&kid={kid}&sig={sig}"), 404)
    error_of(http.get(f"{url.path}?expires={expires}&kid={'0' * 16}&sig={sig}"), 404)
    error_of(http.get(url.path), 404)
    other = url.path.replace("video.mp4", "other.mp4")
    error_of(http.get(f"{other}?expires={expires}&kid={kid}&sig={sig}"), 404)

    stack.clock.advance(URL_TTL_SECONDS + 1)
    assert error_of(http.get(f"{url.path}?{url.query}"), 410)["code"] == "expired"


def test_failed_job_reports_its_typed_error(http, stack) -> None:
    request_id = submit(http)["request_id"]
    engine = FailingEngine(AudioError("125_audio: the speech track is silent"))
    assert stack.claim_and_run(engine) is JobStatus.FAILED
    current = status_of(http, request_id)
    assert current["status"] == "failed"
    assert current["error"] == {"code": "invalid_audio", "message": "125_audio: the speech track is silent"}
    result = result_of(http, request_id)
    assert result["status"] == "failed" and result["error"]["code"] == "invalid_audio"
    assert "output" not in result and "expires_at" in result


def test_retries_exhausted_is_a_failed_status_not_a_500(http, stack) -> None:
    request_id = submit(http)["request_id"]
    engine = CrashingEngine()
    policy = stack.store.policy
    for attempt in range(policy.max_attempts):
        assert stack.claim_and_run(engine, f"replica-1:run{attempt}") is None
        stack.clock.advance(policy.lease_seconds + 1)
        stack.store.reap()
    assert engine.calls == policy.max_attempts
    current = status_of(http, request_id)
    assert current["status"] == "failed"
    assert current["error"]["code"] == "retries_exhausted"
    # Nothing of the crash (message, path) reaches the client.
    assert "CUDA" not in json.dumps(current) and "secret" not in json.dumps(current)


def test_result_before_completion_is_the_current_state(http) -> None:
    first = submit(http)["request_id"]
    second = submit(http)["request_id"]
    result = result_of(http, second)
    assert result["status"] == "in_queue"
    assert result["queue_position"] == 1
    assert "output" not in result and "expires_at" not in result
    assert result_of(http, first)["queue_position"] == 0


def test_expired_and_deleted_jobs_answer_410(http, stack) -> None:
    # Finished "retention + 1 s ago": its expires_at is in the past.
    stack.clock.advance(-(RETENTION_SECONDS + 1))
    request_id = submit(http)["request_id"]
    stack.claim_and_run(OkEngine())
    stack.clock.advance(RETENTION_SECONDS + 1)
    for path in ("status", "result"):
        assert (
            error_of(http.get(f"/v1/requests/{request_id}/{path}", headers=ALPHA), 410)["code"] == "expired"
        )
    error_of(http.post(f"/v1/requests/{request_id}/cancel", headers=ALPHA), 410)
    # Another tenant still learns nothing.
    error_of(http.get(f"/v1/requests/{request_id}/status", headers=BETA), 404)

    # After the retention sweep deleted the record, the tombstone keeps answering 410.
    assert stack.store.expired_results() == [request_id]
    assert stack.store.delete(request_id)
    assert stack.store.get(request_id) is None
    error_of(http.get(f"/v1/requests/{request_id}/result", headers=ALPHA), 410)
    error_of(http.get(f"/v1/requests/{request_id}/result", headers=BETA), 404)


def test_download_link_never_outlives_the_result(http, stack) -> None:
    # A result read shortly before retention ends must not hand out a link valid beyond it.
    stack.clock.advance(-(RETENTION_SECONDS - 60))
    request_id = submit(http)["request_id"]
    stack.claim_and_run(OkEngine())
    stack.clock.advance(RETENTION_SECONDS - 60)
    record = stack.store.get(request_id)
    url = urlsplit(result_of(http, request_id)["output"]["video"])
    expires = int(parse_qs(url.query)["expires"][0])
    assert expires <= record.expires_at + 1
    assert expires < stack.clock() + URL_TTL_SECONDS


# -- cancel --------------------------------------------------------------------------------------------------


def test_cancel_a_queued_job(http, stack) -> None:
    request_id = submit(http)["request_id"]
    response = http.post(f"/v1/requests/{request_id}/cancel", headers=ALPHA)
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    current = status_of(http, request_id)
    assert current["status"] == "cancelled" and "finished_at" in current

    # No worker can claim it any more.
    assert stack.store.claim_next("worker-x") is None
    assert status_of(http, request_id)["status"] == "cancelled"

    again = http.post(f"/v1/requests/{request_id}/cancel", headers=ALPHA)
    assert again.status_code == 200 and again.json()["status"] == "cancelled"
    assert stack.metrics.counter("jobs") == {"cancelled": 1.0}


def test_cancel_of_a_running_job_is_accepted_and_ends_it(http, stack) -> None:
    running = submit(http)["request_id"]
    slow = SlowEngine(step_seconds=0.02)
    thread, outcome = run_in_thread(lambda: stack.claim_and_run(slow))
    try:
        assert slow.started.wait(5)
        response = http.post(f"/v1/requests/{running}/cancel", headers=ALPHA)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "in_progress" and response.json()["cancel_requested"] is True
        assert status_of(http, running)["cancel_requested"] is True
        thread.join(5)
    finally:
        slow.release.set()
        thread.join(5)
    assert outcome == [JobStatus.CANCELLED]
    current = status_of(http, running)
    assert current["status"] == "cancelled" and "cancel_requested" not in current
    assert "output" not in result_of(http, running)


def test_cancel_of_a_finished_job_is_409_with_its_state(http, stack) -> None:
    done = submit(http)["request_id"]
    stack.claim_and_run(OkEngine())
    error = error_of(http.post(f"/v1/requests/{done}/cancel", headers=ALPHA), 409)
    assert error["code"] == "not_cancellable"
    assert error["details"] == [{"request_id": done, "status": "completed"}]

    failed = submit(http)["request_id"]
    stack.claim_and_run(FailingEngine(AudioError("bad")), "replica-1:run2")
    assert error_of(http.post(f"/v1/requests/{failed}/cancel", headers=ALPHA), 409)["details"][0] == {
        "request_id": failed,
        "status": "failed",
    }
    assert stack.metrics.counter("jobs").get("cancelled", 0) == 0


def test_cancel_racing_the_retention_sweep_is_410(http, stack, monkeypatch) -> None:
    request_id = submit(http)["request_id"]
    stack.claim_and_run(OkEngine())
    cancel = stack.async_store.cancel

    async def deleted_meanwhile(request_id: str, tenant: str):
        stack.store.delete(request_id)
        return await cancel(request_id, tenant)

    monkeypatch.setattr(stack.async_store, "cancel", deleted_meanwhile)
    assert error_of(http.post(f"/v1/requests/{request_id}/cancel", headers=ALPHA), 410)["code"] == "expired"


# -- validation ----------------------------------------------------------------------------------------------

INVALID = [
    ("241_positive_prompt", 5),
    ("241_positive_prompt", ""),
    ("241_positive_prompt", "   \n\t "),
    ("241_positive_prompt", "x" * 2001),
    ("241_positive_prompt", None),
    ("284_image", 12),
    ("284_image", ""),
    ("284_image", ["a.png"]),
    ("125_audio", None),
    ("125_audio", {"url": "x"}),
    ("245_valuex246_value", "640x640 (1:1)"),
    ("245_valuex246_value", "720x720"),
    ("245_valuex246_value", 720),
    ("270_value", 100),
    ("270_value", "125"),
    ("270_value", 125.0),
    ("270_value", True),
    ("128_seed", "96860978"),
    ("128_seed", 1.5),
    ("128_seed", 2**64),
    ("128_seed", -(2**63) - 1),
    ("128_steps", 5),
    ("128_steps", 21),
    ("128_steps", 7.5),
    ("128_steps", "7"),
    ("128_steps", True),
    ("128_shift", 0.99),
    ("128_shift", 15.01),
    ("128_shift", "11"),
    ("128_cfg", 0.5),
    ("128_cfg", 2.01),
    ("128_cfg", "1"),
]


@pytest.mark.parametrize(("field", "value"), INVALID, ids=[f"{f}={str(v)[:12]}" for f, v in INVALID])
def test_invalid_field_is_422_naming_it(http, stack, field, value) -> None:
    error = error_of(http.post(MODEL_PATH, json={**SEED_BODY, field: value}, headers=ALPHA), 422)
    assert error["code"] == "validation_error"
    assert fields_named(error) == {field}
    assert field in error["message"]
    assert stack.store.counts()[JobStatus.IN_QUEUE] == 0


def test_unknown_and_missing_fields_are_422(http) -> None:
    error = error_of(http.post(MODEL_PATH, json={**SEED_BODY, "negative_prompt": "blur"}, headers=ALPHA), 422)
    assert fields_named(error) == {"negative_prompt"}
    assert error["details"][0]["message"] == "unknown field"
    body = {k: v for k, v in SEED_BODY.items() if k != "125_audio"}
    error = error_of(http.post(MODEL_PATH, json=body, headers=ALPHA), 422)
    assert fields_named(error) == {"125_audio"}
    error = error_of(http.post(MODEL_PATH, json={"128_steps": 99, "x": 1}, headers=ALPHA), 422)
    assert {"241_positive_prompt", "284_image", "125_audio", "128_steps", "x"} <= fields_named(error)


def test_malformed_or_non_object_bodies(http, stack) -> None:
    headers = {**ALPHA, "Content-Type": "application/json"}
    assert (
        error_of(http.post(MODEL_PATH, content=b'{"241_positive_prompt": ', headers=headers), 400)["code"]
        == "malformed_json"
    )
    assert error_of(http.post(MODEL_PATH, content=b"", headers=headers), 400)["code"] == "malformed_json"
    error_of(http.post(MODEL_PATH, content=b"[1, 2]", headers=headers), 422)
    error_of(http.post(MODEL_PATH, content=b'"text"', headers=headers), 422)
    assert stack.store.counts()[JobStatus.IN_QUEUE] == 0


@pytest.mark.parametrize(
    ("authorization", "challenge"),
    [
        (None, 'Bearer realm="infinitetalk"'),
        ("Bearer not-a-known-token-0123456789", 'error="invalid_token"'),
        ("Basic dXNlcjpwYXNz", 'error="invalid_token"'),
    ],
)
def test_malformed_json_from_an_unauthenticated_caller_is_401_not_400(http, stack, authorization, challenge):
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    response = http.post(MODEL_PATH, content=b'{"241_positive_prompt": ', headers=headers)
    assert error_of(response, 401)["code"] == "unauthorized"
    assert challenge in response.headers["www-authenticate"]
    assert stack.store.counts()[JobStatus.IN_QUEUE] == 0


def test_huge_prompt_is_422_not_a_crash(http) -> None:
    error = error_of(
        http.post(MODEL_PATH, json={**SEED_BODY, "241_positive_prompt": "talk " * 200_000}, headers=ALPHA),
        422,
    )
    assert fields_named(error) == {"241_positive_prompt"}
    assert len(error["message"]) < 500  # the input is not echoed


def test_body_over_the_limit_is_413_json(http) -> None:
    big = "A" * (4 * MAX_AUDIO_BYTES)
    error = error_of(http.post(MODEL_PATH, json={**SEED_BODY, "284_image": big}, headers=ALPHA), 413)
    assert error["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("field", "reference", "statuses"),
    [
        ("284_image", data_uri(b"hello, this is a text file\n" * 20, "text/plain"), {415}),
        ("284_image", data_uri(b"hello, this is a text file\n" * 20, "image/png"), {415}),
        ("125_audio", data_uri(b"just some words, not speech\n" * 20, "audio/mpeg"), {415}),
        ("125_audio", data_uri(png_bytes(), "image/png"), {415, 422}),
        ("284_image", data_uri(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "image/png"), {422}),
        ("284_image", "data:image/png;base64,%%%notbase64", {422}),
        ("284_image", "Runcomfy_example_9999_1.png", {422}),
        ("284_image", "Runcomfy_example_1278_1.mp3", {422}),
        ("125_audio", "Runcomfy_example_1278_1.png", {422}),
        ("284_image", "ftp://example.com/a.png", {422}),
        ("284_image", "http://example.com/a.png", {422}),
        ("284_image", "https://127.0.0.1/a.png", {422}),
        ("284_image", "https://169.254.169.254/latest/meta-data", {422}),
        ("284_image", "file_" + "0" * 32, {422}),
        ("284_image", "file_nothex", {422}),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None,
)
def test_bad_input_references_are_refused_at_submit(http, stack, field, reference, statuses) -> None:
    response = http.post(MODEL_PATH, json={**SEED_BODY, field: reference}, headers=ALPHA)
    assert response.status_code in statuses, response.text
    error = error_of(response, response.status_code)
    assert field in error["message"] or field in fields_named(error)
    assert stack.store.counts()[JobStatus.IN_QUEUE] == 0


def test_refused_inputs_are_counted_in_metrics(http, stack) -> None:
    http.post(MODEL_PATH, json={**SEED_BODY, "284_image": "Runcomfy_example_9999_1.png"}, headers=ALPHA)
    http.post(MODEL_PATH, json={**SEED_BODY, "284_image": data_uri(b"text" * 50, "image/png")}, headers=ALPHA)
    failures = stack.metrics.counter("input_fetch_failures")
    assert failures == {"invalid_input_reference": 1.0, "unsupported_media_type": 1.0}


# -- authentication and isolation ----------------------------------------------------------------------------


def endpoints(request_id: str) -> list[tuple[str, str, dict | None]]:
    return [
        ("POST", MODEL_PATH, SEED_BODY),
        ("GET", f"/v1/requests/{request_id}/status", None),
        ("GET", f"/v1/requests/{request_id}/result", None),
        ("POST", f"/v1/requests/{request_id}/cancel", None),
        ("POST", "/v1/files", None),
    ]


@pytest.mark.parametrize(
    ("authorization", "challenge"),
    [
        (None, 'Bearer realm="infinitetalk"'),
        ("", 'Bearer realm="infinitetalk"'),
        ("Basic YWxwaGE6cGFzcw==", 'Bearer realm="infinitetalk", error="invalid_token"'),
        ("Bearer", 'Bearer realm="infinitetalk", error="invalid_token"'),
        ("Bearer two tokens", 'Bearer realm="infinitetalk", error="invalid_token"'),
        ("Bearer alpha-token-0123456789abcdeX", 'Bearer realm="infinitetalk", error="invalid_token"'),
        ("alpha-token-0123456789abcdef", 'Bearer realm="infinitetalk", error="invalid_token"'),
    ],
)
def test_every_v1_call_needs_a_valid_token(http, stack, authorization, challenge) -> None:
    request_id = submit(http)["request_id"]
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path, body in endpoints(request_id):
        response = http.request(method, path, json=body, headers=headers)
        error = error_of(response, 401)
        assert error["code"] == "unauthorized", path
        assert response.headers["WWW-Authenticate"] == challenge, path
        assert "alpha-token" not in response.text
    assert stack.store.counts()[JobStatus.IN_QUEUE] == 1
    assert status_of(http, request_id)["status"] == "in_queue"


def test_another_tenants_request_is_404_like_an_unknown_one(http, stack) -> None:
    request_id = submit(http)["request_id"]
    unknown = "0" * 32
    for method, path in (("GET", "status"), ("GET", "result"), ("POST", "cancel")):
        theirs = http.request(method, f"/v1/requests/{request_id}/{path}", headers=BETA)
        missing = http.request(method, f"/v1/requests/{unknown}/{path}", headers=BETA)
        assert error_of(theirs, 404)["code"] == error_of(missing, 404)["code"] == "not_found"
        assert (
            theirs.json()["error"]["message"].replace(request_id, unknown)
            == missing.json()["error"]["message"]
        )
    assert status_of(http, request_id)["status"] == "in_queue"  # beta's cancel did nothing


# -- idempotency ---------------------------------------------------------------------------------------------


def test_same_idempotency_key_and_body_is_one_job(http, stack) -> None:
    headers = {**ALPHA, "Idempotency-Key": "order-17"}
    first = submit(http, headers=headers)
    second = submit(http, headers=headers)
    assert first == second
    assert stack.store.counts()[JobStatus.IN_QUEUE] == 1
    assert stack.metrics.counter("jobs_submitted") == {"": 1.0}
    # The same key of another tenant is another job.
    other = submit(http, headers={**BETA, "Idempotency-Key": "order-17"})
    assert other["request_id"] != first["request_id"]
    # A replay still answers after the job finished.
    assert stack.claim_and_run(OkEngine()) is JobStatus.COMPLETED
    assert submit(http, headers=headers) == first


def test_same_idempotency_key_with_another_body_is_409(http, stack) -> None:
    headers = {**ALPHA, "Idempotency-Key": "order-18"}
    first = submit(http, headers=headers)["request_id"]
    error = error_of(http.post(MODEL_PATH, json={**SEED_BODY, "128_seed": 1}, headers=headers), 409)
    assert error["code"] == "idempotency_conflict"
    assert error["details"] == [{"request_id": first}]
    assert stack.store.counts()[JobStatus.IN_QUEUE] == 1


@pytest.mark.parametrize("key", ["", "   "])
def test_an_empty_idempotency_key_is_no_key(http, stack, key) -> None:
    headers = {**ALPHA, "Idempotency-Key": key}
    first = submit(http, headers=headers)["request_id"]
    second = submit(http, headers=headers)["request_id"]
    third = submit(http, headers=headers, **{"128_seed": 5})["request_id"]
    assert len({first, second, third}) == 3


def test_idempotency_key_header_is_bounded(http) -> None:
    error = error_of(
        http.post(MODEL_PATH, json=SEED_BODY, headers={**ALPHA, "Idempotency-Key": "k" * 201}), 422
    )
    assert "idempotency-key" in {field.lower() for field in fields_named(error)}


# -- back-pressure and outages -------------------------------------------------------------------------------


def test_queue_full_is_429_with_retry_after(redis_conn, tmp_path) -> None:
    stack = build_stack(redis_conn, tmp_path, max_queued=2)
    with client_for(stack) as http:
        first = submit(http, headers={**ALPHA, "Idempotency-Key": "a"})
        submit(http)
        response = http.post(MODEL_PATH, json=SEED_BODY, headers=ALPHA)
        assert error_of(response, 429)["code"] == "queue_full"
        assert int(response.headers["Retry-After"]) > 0
        assert stack.store.counts()[JobStatus.IN_QUEUE] == 2
        # An idempotent replay of an accepted job still answers while the queue is full.
        assert submit(http, headers={**ALPHA, "Idempotency-Key": "a"}) == first
        # Once a sampler takes a job there is room again.
        assert stack.store.claim_next("worker-x").request_id == first["request_id"]
        submit(http)


def test_a_tenant_over_its_queued_cap_gets_429_while_another_is_admitted(redis_conn, tmp_path) -> None:
    """Defect: one tenant filling the queue got every other tenant 429s."""
    stack = build_stack(redis_conn, tmp_path, max_queued=50, queue={"tenant_max_queued": 2})
    with client_for(stack) as http:
        submit(http)
        submit(http)
        response = http.post(MODEL_PATH, json=SEED_BODY, headers=ALPHA)
        error = error_of(response, 429)
        assert error["code"] == "tenant_queue_full" and int(response.headers["Retry-After"]) > 0
        submit(http, headers=BETA)  # beta is still admitted
        assert stack.store.tenant_usage("alpha")["queued"] == 2


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_redis_unreachable_is_503_not_500(tmp_path) -> None:
    stack = build_stack(redis.Redis.from_url(f"redis://127.0.0.1:{closed_port()}/0"), tmp_path)
    with client_for(stack) as http:
        headers = {**ALPHA, "Idempotency-Key": "k1"}
        for response in (
            http.post(MODEL_PATH, json=SEED_BODY, headers=ALPHA),
            http.post(MODEL_PATH, json=SEED_BODY, headers=headers),
            http.get(f"/v1/requests/{'0' * 32}/status", headers=ALPHA),
            http.get(f"/v1/requests/{'0' * 32}/result", headers=ALPHA),
            http.post(f"/v1/requests/{'0' * 32}/cancel", headers=ALPHA),
            http.get("/healthz"),
            http.get("/metrics"),
        ):
            assert error_of(response, 503)["code"] == "not_ready", response.request.url
            assert int(response.headers["Retry-After"]) > 0


def test_redis_stopping_mid_life_is_503_then_recovers(tmp_path) -> None:
    server = EmbeddedRedis(tmp_path / "redis").start()
    restarted = None
    try:
        stack = build_stack(redis.Redis.from_url(server.url), tmp_path)
        with client_for(stack) as http:
            request_id = submit(http)["request_id"]
            port = server.port
            server.stop()
            error_of(http.get(f"/v1/requests/{request_id}/status", headers=ALPHA), 503)
            error_of(http.post(MODEL_PATH, json=SEED_BODY, headers=ALPHA), 503)
            error_of(http.get("/healthz"), 503)
            # Restarted on its port with its AOF: the job is still there.
            restarted = EmbeddedRedis(tmp_path / "redis", port=port).start()
            assert status_of(http, request_id)["status"] == "in_queue"
            assert http.get("/healthz").json() == {"status": "ok", "accepting_jobs": True, "queued": 1}
    finally:
        server.stop()
        if restarted is not None:
            restarted.stop()


# -- uploads -------------------------------------------------------------------------------------------------


def upload(http: TestClient, data: bytes, headers: dict | None = None, **params):
    return http.post(
        "/v1/files",
        content=data,
        params=params,
        headers={**(ALPHA if headers is None else headers), "Content-Type": "application/octet-stream"},
    )


def test_upload_then_submit_with_the_file_ids(http, stack) -> None:
    image, audio = png_bytes(48), wav_bytes(0.5)
    response = upload(http, image, filename="me.png")
    assert response.status_code == 201, response.text
    uploaded = response.json()
    assert re.match(r"^file_[0-9a-f]{32}$", uploaded["file_id"])
    assert uploaded["filename"] == "me.png" and uploaded["size_bytes"] == len(image)
    lifetime = datetime.fromisoformat(uploaded["expires_at"]) - datetime.fromisoformat(uploaded["created_at"])
    assert lifetime.total_seconds() == RETENTION_SECONDS  # what the retention sweep deletes it after
    audio_id = upload(http, audio).json()["file_id"]

    submit(http, **{"284_image": uploaded["file_id"], "125_audio": audio_id})
    engine = OkEngine()
    stack.claim_and_run(engine)
    _, seen = engine.seen[0]
    assert dict(seen) == {"image": image, "audio": audio}

    # Another tenant cannot use the ids.
    response = http.post(MODEL_PATH, json={**SEED_BODY, "284_image": uploaded["file_id"]}, headers=BETA)
    error = error_of(response, 422)
    assert error["code"] == "input_file_not_found" and fields_named(error) == {"284_image"}


def test_uploads_that_are_refused(http, stack) -> None:
    assert error_of(upload(http, b""), 422)["code"] == "validation_error"
    assert error_of(upload(http, b"\x00" * (MAX_AUDIO_BYTES + 1)), 413)["code"] == "payload_too_large"
    streamed = (b"\x00" * 65536 for _ in range(MAX_AUDIO_BYTES // 65536 + 1))  # chunked: no Content-Length
    assert error_of(upload(http, streamed), 413)["code"] == "payload_too_large"
    assert error_of(upload(http, b"name,age\nada,36\n" * 10), 415)["code"] == "unsupported_media_type"
    error_of(upload(http, b"\x89PNG\r\n\x1a\n" + b"\x00" * 100), 422)
    error_of(upload(http, png_bytes(), headers={}), 401)
    assert stack.objects("uploads") == [] and stack.store.tenant_usage("alpha")["upload_bytes"] == 0


# -- documents and probes ------------------------------------------------------------------------------------


def test_schema_endpoint_matches_the_seed_page(http) -> None:
    response = http.get(f"{MODEL_PATH}/schema")
    assert response.status_code == 200
    schema = response.json()
    assert schema["input"]["title"] == "Input"
    assert schema["input"]["required"] == ["241_positive_prompt", "284_image", "125_audio"]
    properties = schema["input"]["properties"]
    assert sorted(properties) == sorted([*ALIASES, *EXTENSIONS])
    assert properties["128_steps"] == {**properties["128_steps"], "minimum": 6, "maximum": 20, "default": 7}
    assert properties["128_cfg"]["type"] == "float"
    assert properties["270_value"]["enum"] == [125, 250]
    assert properties["284_image"]["default"] == "Runcomfy_example_1278_1.png"
    assert schema["output"]["output"]["properties"]["video"]["format"] == "uri"


def test_openapi_documents_the_paths_and_the_aliases(http) -> None:
    response = http.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    paths = document["paths"]
    assert "post" in paths[MODEL_PATH]
    assert {"/v1/requests/{request_id}/status", "/v1/requests/{request_id}/result"} <= set(paths)
    assert "post" in paths["/v1/requests/{request_id}/cancel"]
    submit_op = paths[MODEL_PATH]["post"]
    assert {"202", "401", "409", "422", "429", "503"} <= set(submit_op["responses"])
    model = submit_op["requestBody"]["content"]["application/json"]["schema"]
    assert set(model["properties"]) == {*ALIASES, *EXTENSIONS} and model["additionalProperties"] is False
    assert http.get("/docs").status_code == 200


def test_openapi_documents_the_non_json_bodies(http) -> None:
    paths = http.get("/openapi.json").json()["paths"]
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert "video/mp4" in paths["/v1/outputs/{path}"]["get"]["responses"]["200"]["content"]


def test_an_unknown_id_is_echoed_only_when_it_looks_like_one_of_ours(http) -> None:
    message = error_of(http.get(f"/v1/requests/{'a' * 32}/status", headers=ALPHA), 404)["message"]
    assert message == f"No request {'a' * 32}."
    for hostile in ("%3Cscript%3E", "x" * 5000):
        body = error_of(http.get(f"/v1/requests/{hostile}/result", headers=ALPHA), 404)
        assert body["message"] == "No request with that id."


def test_healthz(http) -> None:
    assert http.get("/healthz").json() == {"status": "ok", "accepting_jobs": True, "queued": 0}
    submit(http)
    response = http.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "accepting_jobs": True, "queued": 1}


def test_draining_refuses_new_jobs_with_503_and_serves_the_rest(http, stack) -> None:
    queued = submit(http, headers={**ALPHA, "Idempotency-Key": "before-drain"})["request_id"]
    stack.store.set_draining(120)
    response = http.post(MODEL_PATH, json=SEED_BODY, headers=ALPHA)
    assert error_of(response, 503)["code"] == "draining"
    assert response.headers["Retry-After"] == "120"
    assert stack.store.counts()[JobStatus.IN_QUEUE] == 1
    # What was accepted before goes on: status, result, the idempotent replay of its submit, cancel.
    assert status_of(http, queued)["status"] == "in_queue"
    assert http.get(f"/v1/requests/{queued}/result", headers=ALPHA).status_code == 200
    replay = http.post(MODEL_PATH, json=SEED_BODY, headers={**ALPHA, "Idempotency-Key": "before-drain"})
    assert replay.status_code == 202 and replay.json()["request_id"] == queued
    assert http.get("/healthz").json() == {"status": "ok", "accepting_jobs": False, "queued": 1}
    assert http.post(f"/v1/requests/{queued}/cancel", headers=ALPHA).json()["status"] == "cancelled"
    stack.store.set_draining(None)
    assert http.post(MODEL_PATH, json=SEED_BODY, headers=ALPHA).status_code == 202


def test_unknown_paths_and_methods_use_the_error_shape(http) -> None:
    assert error_of(http.get("/v1/nothing", headers=ALPHA), 404)["code"] == "not_found"
    assert error_of(http.get(MODEL_PATH, headers=ALPHA), 405)["code"] == "method_not_allowed"


def test_an_unexpected_engine_crash_leaves_status_readable(http, stack) -> None:
    request_id = submit(http)["request_id"]
    assert stack.claim_and_run(CrashingEngine()) is None
    current = status_of(http, request_id)
    assert current["status"] == "in_progress" and current["attempt"] == 1
