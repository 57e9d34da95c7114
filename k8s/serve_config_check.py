"""Offline checks of a Serve config file (configs/*.yaml, or a RayService's serveConfigV2).

Ray's ``ServeDeploySchema`` accepts unknown keys on purpose (forward compatibility), so a misspelt option
(``max_ongoing_request``, ``autoscaling_conifg``) would be ignored silently on the cluster. ``problems``
runs Ray's schema, validates each application's ``args`` with the app's own ``AppConfig``, and then walks
the document against the pydantic models' declared fields, so an unknown key anywhere is reported with its
path. Used by the tests and by ``render_serve_config.py`` before it embeds a config in a manifest.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError
from ray.serve.schema import ServeDeploySchema

from serve.config import AppConfig

IMPORT_PATH = "serve.app:build_app"
# The deployments serve.app:build_app binds; Ray refuses a config that names any other.
DEPLOYMENTS = frozenset({"Ingress", "AudioEncoder", "Sampler"})


def problems(document: Any) -> list[str]:
    """Every reason the document is not a valid config of this app; empty when it is."""
    if not isinstance(document, Mapping):
        return [f"a Serve config must be a mapping, got {type(document).__name__}"]
    found: list[str] = []
    try:
        ServeDeploySchema.model_validate(document)
    except ValidationError as error:
        found.extend(f"Ray schema: {_location(e['loc'])}: {e['msg']}" for e in error.errors())
    found.extend(unknown_keys(ServeDeploySchema, document, "", skip={"args"}))
    applications = document.get("applications")
    for index, app in enumerate(applications if isinstance(applications, list) else []):
        if isinstance(app, Mapping):
            found.extend(_application_problems(app, f"applications[{index}]"))
    return found


def _application_problems(app: Mapping[str, Any], where: str) -> list[str]:
    found: list[str] = []
    if app.get("import_path") != IMPORT_PATH:
        found.append(f"{where}.import_path: expected {IMPORT_PATH!r}, got {app.get('import_path')!r}")
    args = app.get("args", {})
    if not isinstance(args, Mapping):
        found.append(f"{where}.args: must be a mapping")
    else:
        try:
            AppConfig.model_validate(args)
        except ValidationError as error:
            found.extend(f"{where}.args: {_location(e['loc'])}: {e['msg']}" for e in error.errors())
        found.extend(unknown_keys(AppConfig, args, f"{where}.args"))
    deployments = app.get("deployments", [])
    names = [d.get("name") for d in deployments if isinstance(d, Mapping)]
    for name in names:
        if name not in DEPLOYMENTS:
            found.append(f"{where}.deployments: {name!r} is not a deployment of {IMPORT_PATH}")
    for name in {n for n in names if names.count(n) > 1}:
        found.append(f"{where}.deployments: {name!r} is listed twice")
    return found


def unknown_keys(
    model: type[BaseModel], data: Mapping[str, Any], path: str, skip: frozenset[str] | set[str] = frozenset()
) -> list[str]:
    """Keys of ``data`` (recursively) that ``model`` does not declare, as dotted paths."""
    fields = {}
    for name, field in model.model_fields.items():
        fields[name] = field
        if isinstance(field.alias, str):
            fields[field.alias] = field
    found = []
    for key, value in data.items():
        where = f"{path}.{key}" if path else str(key)
        field = fields.get(key)
        if field is None:
            found.append(f"{where}: unknown key (not a field of {model.__name__})")
        elif key not in skip:
            found.extend(_walk(field.annotation, value, where))
    return found


def _walk(annotation: Any, value: Any, path: str) -> list[str]:
    branches = list(_branches(annotation))
    if isinstance(value, Mapping):
        for branch in branches:
            if isinstance(branch, type) and issubclass(branch, BaseModel):
                return unknown_keys(branch, value, path)
        return []  # a free-form dict (runtime_env, user_config ...)
    if isinstance(value, Sequence) and not isinstance(value, str):
        for branch in branches:
            if typing.get_origin(branch) in (list, Sequence, tuple) and typing.get_args(branch):
                item = typing.get_args(branch)[0]
                return [p for i, v in enumerate(value) for p in _walk(item, v, f"{path}[{i}]")]
    return []


def _branches(annotation: Any):
    """The alternatives of an annotation, with Optional/Union/Annotated unwrapped."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _branches(typing.get_args(annotation)[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _branches(arg)
    else:
        yield annotation


def _location(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"
