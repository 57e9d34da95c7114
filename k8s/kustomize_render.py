"""Renders this repository's kustomizations without the kustomize binary (for the tests and for review).

It implements exactly the subset k8s/ uses, as kustomize defines it, and refuses everything else rather
than guess:
- ``resources``: YAML files (multi-document) and directories holding a kustomization, rendered first;
- ``patches`` with a ``target`` (group/version/kind/name, names matched exactly) and an inline ``patch``
  or a ``path``: a JSON 6902 operation list (RFC 6902: add, remove, replace, move, copy, test; RFC 6901
  pointers), or a strategic-merge patch that is only ``$patch: delete`` (removes the target);
- ``configMapGenerator`` / ``secretGenerator`` with ``files`` and ``literals``, ``type`` and ``options``
  (``labels``, ``annotations``), and ``disableNameSuffixHash: true`` required: a hashed name is rewritten
  by kustomize only in built-in kinds, never inside a RayService, so the repository does not use it;
- ``namespace``: set on every (namespaced) resource.
Two resources with the same kind, name and namespace are an error, as in kustomize.

    python k8s/kustomize_render.py k8s/overlays/h100     # prints the rendered manifests
"""

from __future__ import annotations

import base64
import copy
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_FIELDS = frozenset(
    {"apiVersion", "kind", "resources", "patches", "configMapGenerator", "secretGenerator", "namespace"}
)
GENERATOR_FIELDS = frozenset({"name", "files", "literals", "options", "type", "behavior"})
CLUSTER_SCOPED_KINDS = frozenset(
    {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume"}
)


class KustomizeError(ValueError):
    """The kustomization is invalid, or uses a feature this renderer does not implement."""


def render(directory: str | Path) -> list[dict[str, Any]]:
    """The resources ``kustomize build directory`` would print (order aside)."""
    directory = Path(directory)
    kustomization = _load_kustomization(directory)
    resources: list[dict[str, Any]] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            resources.extend(render(path))
        elif path.is_file():
            resources.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None)
        else:
            raise KustomizeError(f"{directory}: resource {entry!r} does not exist")
    for generator in kustomization.get("configMapGenerator", []):
        resources.append(_generate(directory, generator, "ConfigMap"))
    for generator in kustomization.get("secretGenerator", []):
        resources.append(_generate(directory, generator, "Secret"))
    for patch in kustomization.get("patches", []):
        resources = _apply_patch(directory, patch, resources)
    if "namespace" in kustomization:
        for resource in resources:
            if resource.get("kind") not in CLUSTER_SCOPED_KINDS:
                resource.setdefault("metadata", {})["namespace"] = kustomization["namespace"]
    _check_unique(resources, directory)
    return resources


def _load_kustomization(directory: Path) -> dict[str, Any]:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            data = yaml.safe_load((directory / name).read_text()) or {}
            break
    else:
        raise KustomizeError(f"{directory}: no kustomization file")
    unsupported = set(data) - SUPPORTED_FIELDS
    if unsupported:
        raise KustomizeError(f"{directory}: unsupported kustomization fields {sorted(unsupported)}")
    if data.get("kind", "Kustomization") != "Kustomization":
        raise KustomizeError(f"{directory}: kind {data['kind']!r} (components are not supported)")
    return data


def _generate(directory: Path, generator: dict[str, Any], kind: str) -> dict[str, Any]:
    unsupported = set(generator) - GENERATOR_FIELDS
    if unsupported:
        raise KustomizeError(f"{kind} generator: unsupported fields {sorted(unsupported)}")
    if generator.get("behavior", "create") != "create":
        raise KustomizeError(f"{kind} generator {generator['name']}: only behavior 'create' is supported")
    options = generator.get("options", {})
    if set(options) - {"disableNameSuffixHash", "labels", "annotations"}:
        raise KustomizeError(f"{kind} generator {generator['name']}: unsupported options {sorted(options)}")
    if options.get("disableNameSuffixHash") is not True:
        raise KustomizeError(
            f"{kind} generator {generator['name']}: set options.disableNameSuffixHash: true (kustomize does "
            "not rewrite hashed names inside custom resources such as the RayService)"
        )
    data: dict[str, str] = {}
    for entry in generator.get("files", []):
        key, _, source = entry.partition("=") if "=" in entry else (Path(entry).name, "", entry)
        data[key] = (directory / source).read_text()
    for entry in generator.get("literals", []):
        key, separator, value = entry.partition("=")
        if not separator:
            raise KustomizeError(f"{kind} generator {generator['name']}: literal {entry!r} has no '='")
        data[key] = value
    metadata: dict[str, Any] = {"name": generator["name"]}
    for field in ("labels", "annotations"):
        if options.get(field):
            metadata[field] = dict(options[field])
    resource: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": metadata}
    if kind == "Secret":
        resource["type"] = generator.get("type", "Opaque")
        resource["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        resource["data"] = data
    return resource


def _apply_patch(directory: Path, spec: dict[str, Any], resources: list[dict[str, Any]]) -> list[dict]:
    if set(spec) - {"path", "patch", "target"} or ("path" in spec) == ("patch" in spec):
        raise KustomizeError(f"{directory}: a patch needs a target and exactly one of 'path' or 'patch'")
    target = spec.get("target")
    if not target or set(target) - {"group", "version", "kind", "name"}:
        raise KustomizeError(f"{directory}: patch targets select by group/version/kind/name only: {target}")
    text = (directory / spec["path"]).read_text() if "path" in spec else spec["patch"]
    patch = yaml.safe_load(text)
    matched = [r for r in resources if _matches(r, target)]
    if not matched:
        raise KustomizeError(f"{directory}: patch target {target} matches no resource")
    if isinstance(patch, list):
        for resource in matched:
            patched = apply_json_patch(resource, patch)
            resource.clear()
            resource.update(patched)
        return resources
    if isinstance(patch, dict) and patch.get("$patch") == "delete":
        return [r for r in resources if not any(r is m for m in matched)]
    raise KustomizeError(f"{directory}: only JSON 6902 patches and '$patch: delete' are supported")


def _matches(resource: dict[str, Any], target: dict[str, str]) -> bool:
    group, _, version = resource.get("apiVersion", "").rpartition("/")
    wanted = {
        "group": group,
        "version": version,
        "kind": resource.get("kind"),
        "name": resource.get("metadata", {}).get("name"),
    }
    return all(wanted[field] == value for field, value in target.items())


def _check_unique(resources: Iterable[dict[str, Any]], directory: Path) -> None:
    seen = set()
    for resource in resources:
        metadata = resource.get("metadata", {})
        key = (resource.get("kind"), metadata.get("namespace"), metadata.get("name"))
        if key in seen:
            raise KustomizeError(f"{directory}: resource {key} defined twice")
        seen.add(key)


# --- JSON Patch (RFC 6902) over JSON Pointers (RFC 6901) -------------------------------------------------


def _tokens(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise KustomizeError(f"JSON pointer {pointer!r} must start with '/'")
    return [token.replace("~1", "/").replace("~0", "~") for token in pointer[1:].split("/")]


def _index(container: list, token: str, pointer: str, *, append: bool = False) -> int:
    if append and token == "-":
        return len(container)
    if not token.isdigit() or (token != "0" and token.startswith("0")):
        raise KustomizeError(f"{pointer}: {token!r} is not an array index")
    index = int(token)
    if index > len(container) or (index == len(container) and not append):
        raise KustomizeError(f"{pointer}: index {index} out of range")
    return index


def _resolve(document: Any, pointer: str) -> Any:
    node = document
    for token in _tokens(pointer):
        if isinstance(node, dict):
            if token not in node:
                raise KustomizeError(f"{pointer}: no member {token!r}")
            node = node[token]
        elif isinstance(node, list):
            node = node[_index(node, token, pointer)]
        else:
            raise KustomizeError(f"{pointer}: cannot descend into a {type(node).__name__}")
    return node


def _parent(document: Any, pointer: str) -> tuple[Any, str]:
    tokens = _tokens(pointer)
    if not tokens:
        raise KustomizeError("operations on the whole document are not supported")
    parent_pointer = "".join("/" + t.replace("~", "~0").replace("/", "~1") for t in tokens[:-1])
    return _resolve(document, parent_pointer), tokens[-1]


def _add(document: Any, pointer: str, value: Any) -> None:
    parent, token = _parent(document, pointer)
    if isinstance(parent, dict):
        parent[token] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, token, pointer, append=True), value)
    else:
        raise KustomizeError(f"{pointer}: parent is a {type(parent).__name__}")


def _remove(document: Any, pointer: str) -> Any:
    parent, token = _parent(document, pointer)
    if isinstance(parent, dict):
        if token not in parent:
            raise KustomizeError(f"{pointer}: no member {token!r} to remove")
        return parent.pop(token)
    if isinstance(parent, list):
        return parent.pop(_index(parent, token, pointer))
    raise KustomizeError(f"{pointer}: parent is a {type(parent).__name__}")


def apply_json_patch(document: Any, operations: list[dict[str, Any]]) -> Any:
    """A patched deep copy of ``document``; a failed ``test`` or a missing path raises ``KustomizeError``."""
    document = copy.deepcopy(document)
    for operation in operations:
        op, path = operation.get("op"), operation.get("path")
        if not isinstance(path, str):
            raise KustomizeError(f"operation {operation} has no path")
        if op == "add":
            _add(document, path, copy.deepcopy(operation["value"]))
        elif op == "remove":
            _remove(document, path)
        elif op == "replace":
            _remove(document, path)
            _add(document, path, copy.deepcopy(operation["value"]))
        elif op in ("move", "copy"):
            source = operation["from"]
            if op == "move" and (path + "/").startswith(source + "/"):
                raise KustomizeError(f"cannot move {source} into itself ({path})")
            value = _remove(document, source) if op == "move" else copy.deepcopy(_resolve(document, source))
            _add(document, path, value)
        elif op == "test":
            actual = _resolve(document, path)
            if actual != operation["value"]:
                raise KustomizeError(
                    f"test failed at {path}: expected {operation['value']!r}, got {actual!r}"
                )
        else:
            raise KustomizeError(f"unknown JSON patch operation {op!r}")
    return document


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python k8s/kustomize_render.py DIRECTORY", file=sys.stderr)
        return 2
    yaml.safe_dump_all(render(argv[0]), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
