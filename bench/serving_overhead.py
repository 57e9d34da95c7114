"""What the serving layer costs on top of the model, on the local stack (tiny preset, CPU).

1. **End to end**: the same job (the API's cheapest body: 480x480, 125 frames, 6 steps) submitted over HTTP
   and polled to completion, with the MP4 downloaded, versus ``generate_to_file`` called in this process on
   the same inputs. The stack's sampler replica has one CPU (Ray gives it one torch thread), so the direct
   run uses one torch thread too. After a warm-up of each, the two alternate (direct, HTTP, direct, HTTP
   ...) and each figure is the median; target ratio HTTP / direct ≤ 1.10.
2. **Status polls**: requests/s that concurrent pollers get from ``GET /v1/requests/{id}/status`` (FastAPI,
   bearer auth, the job record from Redis) versus a bare Ray Serve deployment answering a status-sized JSON
   (``bench.bare_endpoint``) behind the same HTTP front; target app / bare ≥ 0.8. Also against the same
   answer from a bare FastAPI ingress, and from one that awaits once before answering (see
   ``bench.bare_endpoint`` for why that matters). A short warm-up of each, then rounds in rotating order,
   medians.

Each HTTP front (``serve.ingress_proxy``) gets a stack of its own, one after the other in one run: HAProxy,
which ``python -m serve up`` and the Kubernetes manifests run; Serve's proxy actor, Serve's default; and on
request ``haproxy-throughput``, Ray's whole high-throughput mode. The jobs run on the first. The stacks are
private (``loadtest.stack``: their own ports, Redis and scratch directory), started and stopped here.

    python -m bench.serving_overhead [--repeats 2] [--poll-rounds 3] [--poll-seconds 15] [--concurrency 16]
                                     [--fronts haproxy,proxy]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

from bench.report import bench_parser, table, write_result
from loadtest.client import TERMINAL, ApiClient, job_body
from loadtest.stack import TOKEN, LocalStack, StackSettings, free_port
from pipeline.audio import decode_audio
from pipeline.components import load_components
from pipeline.conditioning import load_image
from pipeline.pipeline import GenerationRequest, InfiniteTalkPipeline
from serve.ingress_proxy import HAPROXY_SWITCH, haproxy_binary, uses_haproxy
from serve.inputs.references import EXAMPLE_ASSETS_DIR

BARE_PREFIX = "/bare"
BARE_FASTAPI_PREFIX = "/bare-fastapi"
BARE_APPLICATIONS = (
    {"name": "bare", "route_prefix": BARE_PREFIX, "import_path": "bench.bare_endpoint:app"},
    {
        "name": "bare-fastapi",
        "route_prefix": BARE_FASTAPI_PREFIX,
        "import_path": "bench.bare_endpoint:fastapi_app",
    },
)
# The HTTP fronts a stack can run (serve/ingress_proxy.py), by what each sets in the stack's environment.
# "haproxy-throughput" adds the rest of Ray's high-throughput mode (gRPC between deployments, user code on
# the replica's event loop, buffered logs), which the project does not run: measured, not adopted.
FRONTS = {
    "haproxy": {HAPROXY_SWITCH: "1"},
    "proxy": {HAPROXY_SWITCH: "0"},
    "haproxy-throughput": {HAPROXY_SWITCH: "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
}
DEFAULT_FRONTS = ("haproxy", "proxy")
# What the app's status polls are compared with: the bare endpoints' names in the table, and the target.
FLOORS = {
    "bare_serve": ("bare Serve", ">= 0.8"),
    "bare_fastapi_ingress": ("bare FastAPI ingress", "-"),
    "bare_fastapi_after_await": ("bare FastAPI ingress, one await", "-"),
}
POLL_INTERVAL_S = 0.25
# The stages a job's timings name that are the serving layer's, not the pipeline's.
SERVING_STAGES = ("fetch_inputs", "upload")
WARM_UP_POLL_SECONDS = 3.0
JOB_TIMEOUT_S = 900.0


def http_job(client: ApiClient, body: dict) -> dict[str, float]:
    """Seconds from submit to the downloaded MP4 (``total``), and where they went: the submit request, the
    job's wait in the queue and its run on the sampler (the server's clock, same machine), of which the
    pipeline's own stages, how long after it finished a poll saw it, result + download, and all that is not
    the pipeline's stages."""
    started = time.perf_counter()
    request_id = client.submit_accepted(body)
    submitted = time.perf_counter()
    outcome = client.wait_until(request_id, TERMINAL, timeout=JOB_TIMEOUT_S, poll=POLL_INTERVAL_S)
    seen = time.time()
    if outcome.status != "completed":
        raise RuntimeError(f"benchmark job {request_id} ended {outcome.status}")
    fetching = time.perf_counter()
    result = client.result(request_id)
    if result.output is None or result.timings is None:
        raise RuntimeError(f"benchmark job {request_id} completed without a video or timings")
    client.http.get(result.output.video).raise_for_status()
    done = time.perf_counter()
    timings = result.timings.model_dump(exclude_none=True)
    stages = sum(seconds for stage, seconds in timings.items() if stage not in SERVING_STAGES)
    created, run_from, finished = (
        moment.timestamp() for moment in (outcome.created_at, outcome.started_at, outcome.finished_at)
    )
    return {
        "total": done - started,
        "submit": submitted - started,
        "queued": run_from - created,
        "running": finished - run_from,
        "pipeline_stages": stages,
        # What the serving layer adds (submit, queue, claim, upload, the poll's lag, the download), and the
        # inputs' decoding, which the direct run does too.
        "outside_pipeline": done - started - stages,
        "seen_after_finish": seen - finished,
        "result_and_download": done - fetching,
    }


def direct_job(pipe: InfiniteTalkPipeline, body: dict, out: Path) -> float:
    """Seconds for the same generation in this process, from the same files (decode included)."""
    width, height = (int(part) for part in body["245_valuex246_value"].split()[0].split("x"))
    started = time.perf_counter()
    request = GenerationRequest(
        image=load_image(EXAMPLE_ASSETS_DIR / "portrait.png"),
        speech=decode_audio(EXAMPLE_ASSETS_DIR / "speech.mp3"),
        prompt=body["241_positive_prompt"],
        width=width,
        height=height,
        frames=body["270_value"],
        steps=body["128_steps"],
    )
    pipe.generate_to_file(request, out)
    return time.perf_counter() - started


async def _poll_rate(url: str, headers: dict[str, str], concurrency: int, seconds: float) -> float:
    """Successful GETs per second from ``concurrency`` keep-alive pollers over ``seconds``."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30.0) as client:
        deadline = time.perf_counter() + seconds
        done = 0

        async def poller() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                response = await client.get(url)
                if response.status_code != 200:
                    raise RuntimeError(f"GET {url}: {response.status_code} {response.text[:200]}")
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(poller() for _ in range(concurrency)))
        return done / (time.perf_counter() - started)


def poll_rate(url: str, headers: dict[str, str], concurrency: int, seconds: float) -> float:
    return asyncio.run(_poll_rate(url, headers, concurrency, seconds))


def compare_jobs(client: ApiClient, pipe: InfiniteTalkPipeline, body: dict, out: Path, repeats: int) -> dict:
    """Warm-up of each path, then ``repeats`` alternating timed jobs of each."""
    warm_up = {"http": http_job(client, body)["total"], "direct": direct_job(pipe, body, out)}
    direct, over_http = [], []
    for index in range(repeats):
        direct.append(direct_job(pipe, body, out))
        over_http.append(http_job(client, body))
        print(
            f"job {index + 1}: direct {direct[-1]:.1f} s, HTTP {over_http[-1]['total']:.1f} s",
            file=sys.stderr,
        )
    http_totals = [job["total"] for job in over_http]
    return {
        "warm_up_seconds": warm_up,
        "end_to_end_seconds": {"direct": direct, "http": http_totals},
        "end_to_end_median": {"direct": statistics.median(direct), "http": statistics.median(http_totals)},
        "http_over_direct": statistics.median(http_totals) / statistics.median(direct),
        "http_breakdown_median": {
            part: statistics.median(job[part] for job in over_http) for part in over_http[0]
        },
    }


def compare_polls(
    client: ApiClient, base_url: str, body: dict, rounds: int, concurrency: int, seconds: float
) -> dict:
    """A warm-up of each target, then rounds over the bare Serve endpoint, the bare FastAPI ingress (with and
    without one await) and the app's status of a real job."""
    request_id = client.submit_accepted(body)
    client.cancel(request_id)  # a cancelled job's record is what a poller reads most of the time too
    targets = {
        "bare_serve": (f"{base_url}{BARE_PREFIX}", {}),
        "bare_fastapi_ingress": (f"{base_url}{BARE_FASTAPI_PREFIX}/status", {}),
        "bare_fastapi_after_await": (f"{base_url}{BARE_FASTAPI_PREFIX}/status-after-await", {}),
        "app": (f"{base_url}/v1/requests/{request_id}/status", {"Authorization": f"Bearer {TOKEN}"}),
    }
    for url, headers in targets.values():
        poll_rate(url, headers, concurrency, WARM_UP_POLL_SECONDS)
    rates: dict[str, list[float]] = {name: [] for name in targets}
    names = list(targets)
    for index in range(rounds):
        # Each round starts with the next target, so a drift of the machine's speed favours none.
        for name in names[index % len(names) :] + names[: index % len(names)]:
            url, headers = targets[name]
            rates[name].append(poll_rate(url, headers, concurrency, seconds))
    medians = {name: statistics.median(values) for name, values in rates.items()}
    return {
        "status_polls_per_second": rates,
        "status_polls_median": medians,
        "status_poll_concurrency": concurrency,
        "app_over": {floor: medians["app"] / medians[floor] for floor in FLOORS},
    }


def run_stack(
    front: str,
    scratch: Path,
    body: dict,
    *,
    jobs: int,
    poll_rounds: int,
    concurrency: int,
    poll_seconds: float,
) -> dict:
    """Start a private stack with this HTTP front, measure it (``jobs`` timed jobs of each kind, 0: polls
    only), stop it."""
    settings = StackSettings(
        workdir=scratch / f"stack-{front}",
        http_port=free_port(8400),
        redis_port=free_port(6440),
        extra_applications=BARE_APPLICATIONS,
        environment=FRONTS[front],
    )
    stack = LocalStack(settings)
    print(f"starting the stack ({front}) on {settings.base_url} ...", file=sys.stderr)
    startup = time.perf_counter()
    stack.start(timeout=600)
    figures: dict = {"environment": FRONTS[front], "stack_startup_seconds": time.perf_counter() - startup}
    try:
        with ApiClient(stack.base_url, TOKEN) as client:
            if jobs > 0:
                pipe = InfiniteTalkPipeline(load_components("tiny", device="cpu"))
                figures |= compare_jobs(client, pipe, body, scratch / "direct.mp4", jobs)
            figures |= compare_polls(client, stack.base_url, body, poll_rounds, concurrency, poll_seconds)
    finally:
        stack.stop()
    return figures


def result_rows(fronts: dict[str, dict]) -> list[tuple]:
    rows: list[tuple] = []
    for front, measured in fronts.items():
        if "end_to_end_median" in measured:
            jobs = measured["end_to_end_median"]
            ratio = measured["http_over_direct"]
            rows.append((f"{front}: job end to end (s)", jobs["direct"], jobs["http"], ratio, "<= 1.10"))
        polls = measured["status_polls_median"]
        for floor, (name, target) in FLOORS.items():
            label = f"{front}: status polls (req/s) vs {name}"
            rows.append((label, polls[floor], polls["app"], measured["app_over"][floor], target))
    first, *others = fronts
    app = {front: measured["status_polls_median"]["app"] for front, measured in fronts.items()}
    for other in others:
        rows.append(
            (f"app status polls: {first} vs {other}", app[other], app[first], app[first] / app[other], "-")
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("python -m bench.serving_overhead", __doc__)
    parser.add_argument("--repeats", type=int, default=2, help="timed jobs of each kind (0: polls only)")
    parser.add_argument("--poll-seconds", type=float, default=15.0, help="length of one polling round")
    parser.add_argument("--poll-rounds", type=int, default=3, help="polling rounds of each endpoint")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent pollers")
    parser.add_argument(
        "--fronts",
        default=",".join(DEFAULT_FRONTS),
        help=f"HTTP fronts to measure, one stack each, from {', '.join(FRONTS)}; the jobs run on the first",
    )
    args = parser.parse_args(argv)
    fronts = list(dict.fromkeys(front.strip() for front in args.fronts.split(",") if front.strip()))
    unknown = sorted(set(fronts) - set(FRONTS))
    if unknown or not fronts:
        parser.error(f"--fronts: {', '.join(unknown) or 'none given'}; choose from {', '.join(FRONTS)}")
    if any(uses_haproxy(FRONTS[front]) for front in fronts) and haproxy_binary() is None:
        parser.error(
            "--fronts: no HAProxy binary for the haproxy fronts (ray[serve] on Linux x86-64, or haproxy)"
        )
    torch.set_num_threads(1)
    body = job_body()
    inherited = {name: value for name, value in os.environ.items() if name.startswith("RAY_SERVE_")}
    figures: dict = {"job": body, "torch_threads": 1, "inherited_environment": inherited, "fronts": {}}
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as scratch:
        for index, front in enumerate(fronts):
            figures["fronts"][front] = run_stack(
                front,
                Path(scratch),
                body,
                jobs=args.repeats if index == 0 else 0,
                poll_rounds=args.poll_rounds,
                concurrency=args.concurrency,
                poll_seconds=args.poll_seconds,
            )
    path = write_result("serving_overhead", figures, args.results)
    print(
        table(
            ["measure", "direct / floor", "through the app", "ratio", "target"],
            result_rows(figures["fronts"]),
        )
    )
    for front, measured in figures["fronts"].items():
        if "http_breakdown_median" in measured:
            parts = ", ".join(
                f"{part} {seconds:.2f}" for part, seconds in measured["http_breakdown_median"].items()
            )
            print(f"{front}: HTTP job, medians (s): {parts}")
    print(f"result: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
