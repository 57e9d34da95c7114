"""Writes the Serve config files into the manifests that embed them, so the two can never drift.

A RayService carries its Serve config as a string (``serveConfigV2``). Rather than a hand-kept copy, each
target below names a manifest, the key of its block scalar and the config file it must hold; this script
rewrites those blocks with the config file's text, verbatim (comments included). The rest of the manifest
is left byte for byte as it was.

    python k8s/render_serve_config.py          # rewrite the blocks
    python k8s/render_serve_config.py --check  # exit 1 when a block differs from its config (CI, tests)

A config is checked (``serve_config_check.problems``) before it is embedded: an invalid one is refused.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml
from serve_config_check import problems

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Target:
    manifest: str  # relative to the repository root
    key: str  # the mapping key whose value is the `|` block scalar
    config: str  # the Serve config file it embeds


TARGETS = (
    Target("k8s/base/rayservice.yaml", "serveConfigV2", "configs/gpu.yaml"),
    Target("k8s/overlays/cpu-demo/serve-config-patch.yaml", "value", "configs/cpu-demo.yaml"),
    Target("k8s/overlays/h200/serve-config-patch.yaml", "value", "configs/gpu-h200.yaml"),
)


class RenderError(ValueError):
    """A manifest has no (or more than one) block for the key, or the config is invalid."""


def replace_block(manifest_text: str, key: str, content: str) -> str:
    """``manifest_text`` with the literal block scalar of ``key`` replaced by ``content``."""
    lines = manifest_text.splitlines(keepends=True)
    pattern = re.compile(rf"^(?P<indent> *)(?:- )?{re.escape(key)}: *\|[-+]?[ \t]*(?:#.*)?$")
    starts = [i for i, line in enumerate(lines) if pattern.match(line.rstrip("\n"))]
    if len(starts) != 1:
        raise RenderError(f"expected exactly one '{key}: |' block, found {len(starts)}")
    start = starts[0]
    key_column = len(lines[start]) - len(lines[start].lstrip(" "))
    if lines[start].lstrip(" ").startswith("- "):
        key_column += 2
    end = start + 1
    for i in range(start + 1, len(lines)):
        stripped = lines[i].strip()
        if not stripped:
            continue
        if len(lines[i]) - len(lines[i].lstrip(" ")) <= key_column:
            break
        end = i + 1
    indent = " " * (key_column + 2)
    body = "".join(f"{indent}{line}\n" if line else "\n" for line in content.rstrip("\n").split("\n"))
    head = lines[start].rstrip("\n")
    head = head[: head.index(f"{key}:")] + f"{key}: |\n"
    return "".join(lines[:start]) + head + body + "".join(lines[end:])


def embedded_text(target: Target, root: Path = ROOT) -> str:
    """The config file's text as the manifest must hold it (one trailing newline)."""
    return (root / target.config).read_text().rstrip("\n") + "\n"


def render(target: Target, root: Path = ROOT) -> str:
    text = embedded_text(target, root)
    found = problems(yaml.safe_load(text))
    if found:
        raise RenderError(f"{target.config} is not a valid Serve config: " + "; ".join(found))
    return replace_block((root / target.manifest).read_text(), target.key, text)


def stale(root: Path = ROOT, targets: tuple[Target, ...] = TARGETS) -> list[str]:
    """Manifests whose embedded block differs from the current config file."""
    return [t.manifest for t in targets if (root / t.manifest).read_text() != render(t, root)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report manifests that are out of date")
    args = parser.parse_args(argv)
    if args.check:
        outdated = stale(ROOT)
        for manifest in outdated:
            print(f"{manifest} is out of date: run python k8s/render_serve_config.py", file=sys.stderr)
        return 1 if outdated else 0
    for target in TARGETS:
        (ROOT / target.manifest).write_text(render(target, ROOT))
    return 0


if __name__ == "__main__":
    sys.exit(main())
