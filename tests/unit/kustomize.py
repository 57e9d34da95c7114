"""Render a kustomization with ``kubectl kustomize`` (kustomize v5, installed on the development and CI
machines), as ``kubectl apply -k`` would apply it. Without kubectl the k8s tests are skipped, saying so."""

from __future__ import annotations

import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

KUBECTL_MISSING = "kubectl is not installed: the k8s/ manifests are rendered with `kubectl kustomize`"


def kubectl() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip(KUBECTL_MISSING)
    return found


class KustomizeError(Exception):
    """kubectl refused to render the kustomization (its message says why)."""


@cache
def _render_text(directory: Path) -> str:
    result = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    if result.returncode != 0:
        raise KustomizeError(result.stderr.strip())
    return result.stdout


def render(directory: Path) -> list[dict]:
    """The rendered documents of the kustomization in ``directory`` (a fresh copy each call)."""
    return [doc for doc in yaml.safe_load_all(_render_text(Path(directory).resolve())) if doc is not None]
