"""The typed client (``serve.client``) and the server-sent status stream on the whole local stack.

One job, watched three ways at once while it runs: by the client's ``wait`` (events, with a progress
callback), by a raw stream that drops after its first event and resumes with ``Last-Event-ID``, and by an
uninterrupted stream the resumed one is compared to; meanwhile 50 more streams stay open and a poller times
``/status``. Then the async client runs a second job end to end, and the CLI verb a third.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import av
import httpx
import pytest
from httpx_sse import EventSource

from loadtest.stack import OTHER_TOKEN, REPO_ROOT, TOKEN
from serve.client import AsyncClient, Client, ImageToVideo, InvalidRequest, NotFound, StatusResponse

pytestmark = pytest.mark.e2e

ASSETS = REPO_ROOT / "pipeline" / "assets"
JOB_TIMEOUT_S = 300
OPEN_STREAMS = 50
POLL_P99_LIMIT_S = 1.0


def _cheap(**fields) -> ImageToVideo:
    return ImageToVideo(prompt="a woman is talking", size="480x480 (1:1)", steps=6, **fields)


def _stream_ids(base_url: str, request_id: str, last_event_id: str | None = None, first_only: bool = False):
    """(event name, id) of one raw event stream, to its end (or its first event)."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    seen = []
    with (
        httpx.Client(base_url=base_url, timeout=httpx.Timeout(30.0, read=None)) as http,
        http.stream("GET", f"/v1/requests/{request_id}/events", headers=headers) as response,
    ):
        assert response.status_code == 200, response.read()
        for event in EventSource(response).iter_sse():
            seen.append((event.event, event.id))
            if first_only or event.event == "result":
                break
    return seen


def test_the_client_streams_a_job_to_its_video(idle_stack, tmp_path: Path) -> None:
    base = idle_stack.base_url
    with Client(base, TOKEN) as api, Client(base, OTHER_TOKEN) as other:
        job = api.submit(_cheap(image=str(ASSETS / "portrait.png"), audio="Runcomfy_example_1278_1.mp3"))
        with pytest.raises(NotFound):
            other.status(job)
        first = _stream_ids(base, job.request_id, first_only=True)
        assert first[0][0] == "status"

        seen: list[StatusResponse] = []
        done = threading.Event()
        latencies: list[float] = []

        def poll() -> None:
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
                while not done.is_set():
                    started = time.perf_counter()
                    assert http.get(f"/v1/requests/{job.request_id}/status").status_code == 200
                    latencies.append(time.perf_counter() - started)
                    time.sleep(0.1)

        with ThreadPoolExecutor(OPEN_STREAMS + 3) as pool:
            crowd = [pool.submit(_stream_ids, base, job.request_id) for _ in range(OPEN_STREAMS)]
            whole = pool.submit(_stream_ids, base, job.request_id)
            poller = pool.submit(poll)
            result = api.wait(job, on_progress=seen.append, timeout=JOB_TIMEOUT_S)
            resumed = _stream_ids(base, job.request_id, last_event_id=first[0][1])
            done.set()
            poller.result()
            uninterrupted = whole.result(timeout=60)
            assert all(stream.result(timeout=60)[-1][0] == "result" for stream in crowd)

    statuses = [s.status for s in seen]
    assert statuses[0] in ("in_queue", "in_progress") and statuses[-1] == "completed"
    assert any(s.status == "in_progress" and (s.progress or 0) > 0 for s in seen), statuses
    # Dropped after its first event and resumed: exactly the events an unbroken stream saw after it.
    assert resumed == uninterrupted[uninterrupted.index(first[0]) + 1 :]
    p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 2 else latencies[0]
    assert p99 < POLL_P99_LIMIT_S, f"status p99 {p99:.3f} s with {OPEN_STREAMS} streams open"

    out = tmp_path / "client.mp4"
    with Client(base, TOKEN) as api:
        api.download(result, out)
        with pytest.raises(InvalidRequest) as refused:
            api.submit(_cheap(image="Runcomfy_example_1278_1.png", audio=str(ASSETS / "portrait.png")))
        assert refused.value.fields == {"125_audio"}
    with av.open(str(out)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 125


def test_the_async_client_and_the_cli(idle_stack, tmp_path: Path) -> None:
    async def run() -> Path:
        async with AsyncClient(idle_stack.base_url, TOKEN) as api:
            job = await api.submit(
                _cheap(image="Runcomfy_example_1278_1.png", audio=str(ASSETS / "speech.wav"))
            )
            result = await api.wait(job, timeout=JOB_TIMEOUT_S)
            return await api.download(result, tmp_path / "async.mp4")

    assert anyio.run(run).read_bytes()[4:8] == b"ftyp"
    out = tmp_path / "cli.mp4"
    command = [
        *(sys.executable, "-m", "serve", "submit", "--url", idle_stack.base_url, "--token", TOKEN),
        *("--image", str(ASSETS / "portrait.png"), "--audio", str(ASSETS / "speech.mp3")),
        *("--size", "480x480 (1:1)", "--steps", "6", "--out", str(out)),
    ]
    run_cli = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
    assert run_cli.returncode == 0, run_cli.stderr[-2000:]
    assert f"wrote {out}" in run_cli.stderr and out.read_bytes()[4:8] == b"ftyp"
