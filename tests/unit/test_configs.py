"""Every Serve config in configs/ is valid for Ray, for the app's AppConfig, and has no unknown key."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "k8s"))

from serve_config_check import problems, unknown_keys  # noqa: E402

from serve.config import AppConfig  # noqa: E402

CONFIGS = ("local.yaml", "gpu.yaml", "gpu-h200.yaml", "cpu-demo.yaml")


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / name).read_text())


def deployment(config: dict, name: str) -> dict:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == name)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_valid(name):
    assert problems(load(name)) == []


def test_every_serve_config_in_configs_is_checked():
    serve_configs = {p.name for p in (ROOT / "configs").glob("*.yaml") if "applications" in p.read_text()}
    assert serve_configs == set(CONFIGS)


@pytest.mark.parametrize(
    ("path", "key"),
    [
        ((), "proxy_locaton"),
        (("http_options",), "prot"),
        (("logging_config",), "level"),
        (("applications", 0), "route_prefx"),
        (("applications", 0, "deployments", 2), "max_ongoing_request"),
        (("applications", 0, "deployments", 2, "ray_actor_options"), "num_gpu"),
        (("applications", 0, "deployments", 2, "autoscaling_config"), "max_replica"),
        (("applications", 0, "args"), "modle"),
        (("applications", 0, "args", "storage"), "bucket_name"),
        (("applications", 0, "args", "model", "loras", 0), "strength"),
    ],
)
def test_unknown_key_anywhere_is_reported_with_its_path(path, key):
    config = load("gpu.yaml")
    node = config
    for part in path:
        node = node[part]
    node[key] = 1
    found = problems(config)
    dotted = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in (*path, key)).replace(".[", "[")
    assert any(dotted in problem and "unknown key" in problem for problem in found), found


def test_http_options_extras_are_rejected_although_ray_allows_them():
    config = load("gpu.yaml")
    config["http_options"]["keep_alive_timeout_s"] = 5  # a real HTTPOptionsSchema field: fine
    assert problems(config) == []
    config["http_options"]["keep_alive_timeout"] = 5
    assert problems(config) == [
        "http_options.keep_alive_timeout: unknown key (not a field of HTTPOptionsSchema)"
    ]


def test_unknown_deployment_and_duplicates_are_reported():
    config = load("gpu.yaml")
    deployments = config["applications"][0]["deployments"]
    deployments.append(copy.deepcopy(deployments[0]))
    deployments.append({"name": "Sampller"})
    found = problems(config)
    assert any("'Sampller' is not a deployment" in p for p in found)
    assert any("'Ingress' is listed twice" in p for p in found)


def test_wrong_import_path_is_reported():
    config = load("local.yaml")
    config["applications"][0]["import_path"] = "serve.app:app"
    assert any("import_path" in p for p in problems(config))


@pytest.mark.parametrize(
    ("section", "values", "expected"),
    [
        ("model", {"preset": "huge"}, "unknown preset"),
        ("model", {"preset": "infinitetalk-14b", "weights_dir": None}, "needs weights_dir"),
        ("storage", {"kind": "s3", "bucket": None}, "needs storage.bucket"),
        ("storage", {"kind": "gcs"}, "storage.kind"),
        ("queue", {"max_attempts": 0}, "queue.max_attempts"),
        ("model", {"warmup_sizes": ["720*720"]}, "must look like WIDTHxHEIGHT"),
        ("model", {"warmup_sizes": ["721x720"]}, "must be even"),
        ("model", {"attention": "flash9"}, "model.attention"),
        ("model", {"fp8": "fp4"}, "model.fp8"),
    ],
)
def test_invalid_app_args_are_reported(section, values, expected):
    config = load("gpu.yaml")
    config["applications"][0]["args"][section].update(values)
    assert any(expected in p for p in problems(config)), problems(config)


def test_ray_schema_errors_are_reported():
    config = load("gpu.yaml")
    deployment(config, "Sampler")["ray_actor_options"]["num_cpus"] = -1
    assert any(p.startswith("Ray schema:") and "num_cpus" in p for p in problems(config))
    del config["applications"]
    assert any("applications" in p for p in problems(config))


def test_a_non_mapping_document_is_refused():
    assert problems(["applications"]) == ["a Serve config must be a mapping, got list"]


def test_unknown_keys_walks_lists_of_models():
    args = {"model": {"preset": "tiny", "loras": [{"path": "a"}, {"path": "b", "scal": 2}]}, "extra": 1}
    assert unknown_keys(AppConfig, args, "args") == [
        "args.model.loras[1].scal: unknown key (not a field of LoraConfig)",
        "args.extra: unknown key (not a field of AppConfig)",
    ]


@pytest.mark.parametrize("name", CONFIGS)
def test_sampler_shutdown_outlasts_its_drain(name):
    """Serve kills a replica after graceful_shutdown_timeout_s; the sampler hands its job back after
    queue.drain_seconds, which must come first or the hand-back never happens."""
    config = load(name)
    sampler = deployment(config, "Sampler")
    drain = AppConfig.model_validate(config["applications"][0]["args"]).queue.drain_seconds
    if "graceful_shutdown_timeout_s" in sampler:
        assert sampler["graceful_shutdown_timeout_s"] > drain
    assert sampler["max_ongoing_requests"] == 1


def test_the_gpu_configs_run_the_fast_path_and_warm_up_every_api_size():
    from serve.api.schemas import SIZES

    for name in ("gpu.yaml", "gpu-h200.yaml"):
        model = AppConfig.model_validate(load(name)["applications"][0]["args"]).model
        assert (model.fp8.value, model.attention.value, model.compile) == ("dynamic", "auto", True), name
        assert sorted(model.warmup_shapes()) == sorted(SIZES.values()), name


@pytest.mark.parametrize("name", ["local.yaml", "gpu.yaml"])
def test_an_idempotency_key_is_kept_as_long_as_its_job(name):
    config = AppConfig.model_validate(load(name)["applications"][0]["args"])
    policy = config.queue.policy()
    assert policy.idempotency_seconds > policy.retention_seconds == config.queue.retention_seconds
