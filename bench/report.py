"""What every benchmark writes: a JSON result in ``bench/results/`` (figures, device, versions, commit) and a
short table on stdout."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import subprocess
import time
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]
_SOURCE_FOLDERS = ("pipeline", "serve", "bench")
_PACKAGES = ("torch", "diffusers", "transformers", "ray", "xformers", "flash-attn", "torchao")


def commit() -> str:
    """The checked-out commit, with ``-dirty`` when the tree has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head


def source_digest() -> str:
    """SHA-256 over the project's Python sources as they are on disk (``pipeline/``, ``serve/``, ``bench/``):
    names the code a result came from even where the checkout's git metadata is stale (the lent GPU machine
    gets the working tree, not the commit). Recompute it on a checkout to find the matching commit."""
    digest = hashlib.sha256()
    for path in sorted(p for folder in _SOURCE_FOLDERS for p in (REPO_ROOT / folder).rglob("*.py")):
        digest.update(path.relative_to(REPO_ROOT).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in _PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def device_description() -> dict[str, Any]:
    import torch

    described: dict[str, Any] = {
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    with contextlib.suppress(OSError):  # not every platform has a load average
        described["load_average"] = os.getloadavg()
    if torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        described.update(
            gpu=properties.name,
            gpu_memory_gib=round(properties.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
        )
    return described


def bench_parser(prog: str, doc: str | None) -> argparse.ArgumentParser:
    """A benchmark's command line: its module docstring as help, and where its JSON result goes."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--results", type=Path, default=RESULTS_DIR, help="results directory (default bench/results)"
    )
    return parser


def write_result(name: str, figures: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """``bench/results/<name>-<UTC time>.json`` with the figures and where they were measured."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = results_dir / f"{name}-{stamp}.json"
    document = {
        "benchmark": name,
        "measured_at": stamp,
        "commit": commit(),
        "source_digest": source_digest(),
        "versions": versions(),
        "device": device_description(),
        "figures": figures,
    }
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return path


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table (numbers to 3 significant figures, None as a dash)."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(str(h)), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
