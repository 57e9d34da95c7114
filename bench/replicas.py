"""Phase 5 of ``bench.gpu_sampler``: sampler replicas as separate processes sharing one device, as
``num_gpus: 0.5`` Serve replicas do (Ray itself is not needed for what is measured, and its wheel does not fit
the lent GPU machine's transfer limit).

The orchestrator writes ``spec.json`` into a scratch directory and starts the workers
(``python -m bench.replicas DIR INDEX``). Each, held to its share of the device's memory as a replica is
(``pipeline.gpu_memory``), builds a sampler on the fast path, warms it up and writes ``ready-<i>.json``; it
then runs one job per round the orchestrator releases by creating ``go-<round>``: worker 0 alone (``solo``),
then every worker at once (``shared``), each writing ``<round>-<i>.json``. A worker gives up when the
orchestrator's deadline passes or the orchestrator is gone, so none is left holding the device.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.jobs import psnr_db, run_job, seed_request
from pipeline.components import apply_options, random_components
from pipeline.gpu_memory import GIB, cap_to_share
from pipeline.sizes import parse_size
from pipeline.warmup import warm_up

ROUNDS = ("solo", "shared")
_POLL_SECONDS = 0.05


class ReplicasFailed(RuntimeError):
    """A worker exited with an error, or the deadline passed, before the figures were in."""


def run_replicas(
    scratch: Path, spec: dict[str, Any], deadline: float, say: Callable[[str], None]
) -> dict[str, Any]:
    """Start the workers, let worker 0 run a job alone, then all of them at once; their figures.

    ``deadline`` is a ``time.monotonic()`` instant: past it the workers are stopped and what is in is kept.
    """
    (scratch / "spec.json").write_text(json.dumps({**spec, "deadline_epoch": _epoch(deadline)}))
    root = Path(__file__).resolve().parents[1]
    workers = [
        subprocess.Popen([sys.executable, "-m", "bench.replicas", str(scratch), str(index)], cwd=root)
        for index in range(spec["replicas"])
    ]
    figures: dict[str, Any] = {"spec": spec}
    try:
        figures["ready"] = _wait_for(scratch, [f"ready-{i}" for i in range(len(workers))], workers, deadline)
        say("replicas ready; worker 0 runs the seed job alone")
        (scratch / "go-solo").touch()
        (solo,) = _wait_for(scratch, ["solo-0"], workers, deadline)
        figures["solo"] = solo
        say(f"one replica alone: {solo['seconds']:.1f} s per job; now {len(workers)} at once")
        started = time.perf_counter()
        (scratch / "go-shared").touch()
        shared = _wait_for(scratch, [f"shared-{i}" for i in range(len(workers))], workers, deadline)
        wall = time.perf_counter() - started
        figures["shared"] = {"wall_seconds": wall, "jobs": shared}
        figures["jobs_per_hour_one_replica"] = 3600.0 / solo["seconds"]
        figures["jobs_per_hour_shared"] = 3600.0 * len(workers) / wall
        figures["shared_over_one"] = figures["jobs_per_hour_shared"] / figures["jobs_per_hour_one_replica"]
    except ReplicasFailed as error:
        figures["error"] = str(error)
        say(f"replicas: {error}")
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
    return figures


def _epoch(monotonic_instant: float) -> float:
    return time.time() + (monotonic_instant - time.monotonic())


def _wait_for(
    scratch: Path, names: list[str], workers: list[subprocess.Popen], deadline: float
) -> list[dict[str, Any]]:
    while True:
        if all((scratch / f"{name}.json").exists() for name in names):
            return [json.loads((scratch / f"{name}.json").read_text()) for name in names]
        failed = [i for i, worker in enumerate(workers) if worker.poll() not in (None, 0)]
        if failed:
            raise ReplicasFailed(f"worker(s) {failed} exited with an error while waiting for {names}")
        if time.monotonic() > deadline:
            raise ReplicasFailed(f"the deadline passed while waiting for {names}")
        time.sleep(0.2)


def worker(scratch: Path, index: int) -> int:
    """One sampler replica: build on the fast path, warm up, then run the jobs the orchestrator releases."""
    parent = os.getppid()
    spec = json.loads((scratch / "spec.json").read_text())
    # Held to its share of the device's memory, as the Sampler replica is (serve.deployments.sampler).
    memory_cap = cap_to_share(torch.device(spec["device"]), 1 / spec["replicas"])
    started = time.perf_counter()
    components = apply_options(
        random_components(spec["preset"], device=spec["device"]),
        fp8=spec["fp8"],
        attention=spec["attention"],
        compile=True,
        compile_tuning=spec["compile_tuning"],
    )
    built = time.perf_counter() - started
    warmed = warm_up(components, [parse_size(spec["size"])])
    ready = {"build_seconds": built, "warmup_seconds": warmed}
    if memory_cap is not None:
        ready["memory_cap_gib"] = round(memory_cap / GIB, 2)
    _write(scratch, f"ready-{index}", ready)
    request = seed_request(spec["size"], spec["frames"])
    reference_file = scratch / "reference.npy"
    reference = np.load(reference_file) if reference_file.exists() else None  # None: its job failed
    for name in ROUNDS if index == 0 else ROUNDS[1:]:
        while not (scratch / f"go-{name}").exists():
            if os.getppid() != parent or time.time() > spec["deadline_epoch"]:
                return 1  # the orchestrator is gone or has given up: free the device
            time.sleep(_POLL_SECONDS)
        figures, frames = run_job(components, request, scratch / f"{name}-{index}.mp4")
        if reference is not None:
            figures["psnr_db_vs_reference"] = psnr_db(frames, reference)
        _write(scratch, f"{name}-{index}", figures)
    return 0


def _write(scratch: Path, name: str, figures: dict[str, Any]) -> None:
    temporary = scratch / f"{name}.json.tmp"
    temporary.write_text(json.dumps(figures))
    temporary.rename(scratch / f"{name}.json")


if __name__ == "__main__":
    sys.exit(worker(Path(sys.argv[1]), int(sys.argv[2])))
