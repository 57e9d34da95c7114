"""The job API on the real app: submit → status → result → MP4; two replicas on one GPU; cancelling."""

from __future__ import annotations

import io
import time
from fractions import Fraction

import av
import httpx
import pytest

from .integration_stack import (
    OTHER_TOKEN,
    SAMPLER_GPUS,
    SAMPLER_REPLICAS,
    Observation,
    Stack,
    observe,
    production_sampler_policy,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST = {"128_steps": 6}  # the fewest steps the API allows: these jobs only need to run, not look good
STAGES = {"fetch_inputs", "audio_encode", "sampling", "vae_decode", "mux", "upload"}


def test_submit_poll_result_and_decode_the_mp4(stack: Stack) -> None:
    submitted = time.monotonic()
    request_id = stack.submit()
    history: list[Observation] = []
    final = stack.wait_terminal(request_id, history=history, interval_s=0.25)
    elapsed = time.monotonic() - submitted

    assert final["status"] == "completed", final
    assert final["attempt"] == 1
    assert final["progress"] == 1.0
    assert {o.status for o in history} <= {"in_queue", "in_progress", "completed"}, history
    queued = [o for o in history if o.status == "in_queue"]
    assert all(o.queue_position is not None and o.queue_position >= 0 for o in queued)
    running = [o.progress for o in history if o.status == "in_progress"]
    assert running == sorted(running), "progress went backwards within one attempt"
    assert any(0.0 < p < 1.0 for p in running), f"no intermediate progress seen in {running}"
    foreign = httpx.get(
        f"{stack.base_url}/v1/requests/{request_id}/status",
        headers={"Authorization": f"Bearer {OTHER_TOKEN}"},
        timeout=10.0,
    )
    assert foreign.status_code == 404, "another tenant's job must look like an unknown one"

    result = stack.result(request_id)
    assert result["status"] == "completed"
    assert set(result["timings"]) >= STAGES
    assert result["reproducibility"]["output_size"] == "480x480"
    assert result["reproducibility"]["frames"] == 125
    video_url = result["output"]["video"]
    assert video_url.startswith(stack.base_url + "/v1/outputs/")
    download = httpx.get(video_url, timeout=30.0)  # the signed URL alone grants it: no token
    assert download.status_code == 200, download.text
    assert download.headers["content-type"] == "video/mp4"

    with av.open(io.BytesIO(download.content)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio
        assert video.codec_context.name == "h264"
        assert (video.codec_context.width, video.codec_context.height) == (480, 480)
        assert video.average_rate == Fraction(25)
        assert len(audio) == 1 and audio[0].codec_context.name == "aac"
        frames = list(container.decode(video=0))
    assert len(frames) == 125
    assert {(f.width, f.height, f.format.name) for f in frames} == {(480, 480, "yuv420p")}
    key = stack.assert_single_output(request_id)
    assert video_url.split("?")[0] == f"{stack.base_url}/v1/{key}", "the URL names the winning run"
    print(f"\nHTTP submit → completed: {elapsed:.1f}s; stage timings: {result['timings']}")


def test_sampler_replicas_share_one_fake_gpu(stack: Stack) -> None:
    import ray
    from ray import serve

    sampler = serve.status().applications["infinitetalk"].deployments["Sampler"]
    assert sampler.status == "HEALTHY"
    assert dict(sampler.replica_states) == {"RUNNING": SAMPLER_REPLICAS}
    assert len({r.pid for r in stack.replicas("Sampler")}) == SAMPLER_REPLICAS
    assert stack.deployment_config("Sampler")["ray_actor_options"]["num_gpus"] == SAMPLER_GPUS
    # The cluster has one GPU and the two replicas hold half of it each: all of it is taken.
    assert ray.cluster_resources()["GPU"] == 1.0
    assert ray.available_resources().get("GPU", 0.0) == pytest.approx(1.0 - SAMPLER_REPLICAS * SAMPLER_GPUS)


def test_sampler_runs_the_configured_backlog_policy(stack: Stack) -> None:
    """The policy block of configs/gpu.yaml deploys as written: Serve imports and instantiates it.

    A config's ``autoscaling_config`` replaces the code's whole, so the policy must be named in the file;
    Serve's default policy counts handle requests, and none reach the Sampler (its jobs come from the queue).
    """
    deployed = stack.deployment_config("Sampler")["autoscaling_config"]["policy"]
    assert deployed == production_sampler_policy()
    assert deployed["policy_function"] == "serve.autoscaling:BacklogPolicy"


def test_jobs_run_concurrently_and_a_queued_job_is_cancelled(stack: Stack) -> None:
    running_ids = [stack.submit(**FAST, **{"128_seed": seed}) for seed in (1, 2)]
    queued_id = stack.submit(**FAST, **{"128_seed": 3})

    # Both replicas take one job each, at the same time; the third job waits first in line.
    deadline = time.monotonic() + 120.0
    while not all(stack.status(i)["status"] == "in_progress" for i in running_ids):
        assert time.monotonic() < deadline, [stack.status(i) for i in running_ids]
        time.sleep(0.25)
    owners = {stack.record(i).lease_owner.split(":")[0] for i in running_ids}
    assert owners == {r.replica_id for r in stack.replicas("Sampler")}, "one job per replica"
    queued = stack.status(queued_id)
    assert (queued["status"], queued["queue_position"], queued["attempt"]) == ("in_queue", 0, 0), queued

    cancelled = stack.cancel(queued_id)
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    again = stack.cancel(queued_id)
    assert again.status_code == 200 and again.json()["status"] == "cancelled", "cancelling twice is harmless"

    # Watch the cancelled job while both replicas finish and go idle: neither may pick it up.
    history: list[Observation] = []
    deadline = time.monotonic() + 300.0
    while any(stack.status(i)["status"] not in {"completed", "failed"} for i in running_ids):
        history.append(observe(stack.status(queued_id)))
        assert time.monotonic() < deadline, "the running jobs did not finish"
        time.sleep(0.5)
    # A stale wake-up or a requeue of the cancelled job would have been claimed within a lease.
    idle_until = time.monotonic() + stack.store.policy.lease_seconds
    while time.monotonic() < idle_until:
        history.append(observe(stack.status(queued_id)))
        time.sleep(0.5)

    assert [stack.status(i)["status"] for i in running_ids] == ["completed", "completed"]
    assert {o.status for o in history} == {"cancelled"}, history
    assert {o.attempt for o in history} == {0}
    record = stack.record(queued_id)
    assert record.started_at is None and record.lease_owner is None and record.output_key is None
    assert record.cancel_requested
    assert stack.output_files(queued_id) == []
    result = stack.result(queued_id)
    assert result["status"] == "cancelled" and "output" not in result
    assert len({stack.assert_single_output(request_id) for request_id in running_ids}) == 2
    # A finished job can no longer be cancelled (a running one can: test_job_core.py).
    refused = stack.cancel(running_ids[0])
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "not_cancellable"
    assert stack.status(running_ids[0])["status"] == "completed"
