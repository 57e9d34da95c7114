"""The RayService's serveConfigV2 is the config file, verbatim, and the cluster around it fits that config."""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "k8s"))

import render_serve_config as rsc  # noqa: E402
from kustomize import render  # noqa: E402
from serve_config_check import problems  # noqa: E402

from serve.auth import AuthenticationFailed, Authenticator  # noqa: E402
from serve.config import AppConfig, AuthConfig  # noqa: E402

# The base alone lacks its Secrets (the overlays add them), so the overlays are what is checked.
OVERLAY_CONFIGS = {
    "overlays/h100": "configs/gpu.yaml",
    "overlays/h100-s3-weights": "configs/gpu.yaml",
    "overlays/h200": "configs/gpu-h200.yaml",
    "overlays/cpu-demo": "configs/cpu-demo.yaml",
}
BODY_SLACK_BYTES = 64 * 1024  # serve.api.routes: the app's body limit = 2 * 4/3 * largest input cap + slack


@pytest.fixture(scope="module", params=sorted(OVERLAY_CONFIGS))
def rendered(request):
    return request.param, render(ROOT / "k8s" / request.param)


def one(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def serve_config(docs) -> dict:
    return yaml.safe_load(one(docs, "RayService")["spec"]["serveConfigV2"])


def app_config(config: dict) -> AppConfig:
    return AppConfig.model_validate(config["applications"][0]["args"])


def deployment(config: dict, name: str) -> dict:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == name)


def groups(docs):
    """(name, group spec, pod spec) of the head and every worker group."""
    cluster = one(docs, "RayService")["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    yield "head", head, head["template"]["spec"]
    for group in cluster.get("workerGroupSpecs", []):
        yield group["groupName"], group, group["template"]["spec"]


def quantity(value) -> float:
    """A Kubernetes quantity as a number (CPU cores, bytes)."""
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    number, suffix = float(match[1]), match[2]
    factors = {
        "": 1,
        "m": 1e-3,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "Ki": 2**10,
        "Mi": 2**20,
        "Gi": 2**30,
        "Ti": 2**40,
    }
    return number * factors[suffix]


# --- the embedded config is the config file ------------------------------------------------------------


def test_no_manifest_is_out_of_date():
    assert rsc.stale() == []


def test_embedded_config_is_the_config_file_verbatim(rendered):
    name, docs = rendered
    text = one(docs, "RayService")["spec"]["serveConfigV2"]
    config_file = ROOT / OVERLAY_CONFIGS[name]
    assert text == config_file.read_text().rstrip("\n") + "\n"
    assert yaml.safe_load(text) == yaml.safe_load(config_file.read_text())


def test_embedded_config_is_valid(rendered):
    _, docs = rendered
    assert problems(serve_config(docs)) == []


@pytest.fixture
def repo_copy(tmp_path):
    for target in rsc.TARGETS:
        for relative in (target.manifest, target.config):
            (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / relative, tmp_path / relative)
    return tmp_path


def test_a_changed_config_makes_its_manifest_stale_until_rendered(repo_copy):
    config_path = repo_copy / "configs/gpu.yaml"
    manifest_path = repo_copy / "k8s/base/rayservice.yaml"
    before = manifest_path.read_text()
    config_path.write_text(config_path.read_text().replace("max_replicas: 8", "max_replicas: 6"))
    assert rsc.stale(repo_copy) == ["k8s/base/rayservice.yaml"]
    manifest_path.write_text(rsc.render(rsc.TARGETS[0], repo_copy))
    assert rsc.stale(repo_copy) == []
    after = manifest_path.read_text()
    assert yaml.safe_load(after)["spec"]["serveConfigV2"] == config_path.read_text()
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert changed == [("              max_replicas: 8", "              max_replicas: 6")]


def test_a_hand_edit_of_the_embedded_block_is_detected(repo_copy):
    manifest_path = repo_copy / "k8s/overlays/cpu-demo/serve-config-patch.yaml"
    manifest_path.write_text(manifest_path.read_text().replace("max_queued: 50", "max_queued: 51"))
    assert rsc.stale(repo_copy) == ["k8s/overlays/cpu-demo/serve-config-patch.yaml"]


def test_an_invalid_config_is_not_embedded(repo_copy):
    config_path = repo_copy / "configs/gpu.yaml"
    config_path.write_text(config_path.read_text().replace("max_queued:", "max_queue:"))
    with pytest.raises(rsc.RenderError, match="max_queue: unknown key"):
        rsc.render(rsc.TARGETS[0], repo_copy)


def test_replace_block_keeps_everything_else():
    manifest = "a: 1\nspec:\n  conf: |-\n    old: 1\n\n    more: 2\n  next: 3\n# tail\n"
    assert rsc.replace_block(manifest, "conf", "x: 1\n\ny: 2\n") == (
        "a: 1\nspec:\n  conf: |\n    x: 1\n\n    y: 2\n  next: 3\n# tail\n"
    )
    patch = "- op: replace\n  path: /spec/x\n  value: |\n    old\n"
    assert (
        rsc.replace_block(patch, "value", "new: 1\n")
        == "- op: replace\n  path: /spec/x\n  value: |\n    new: 1\n"
    )


@pytest.mark.parametrize("manifest", ["a: 1\n", "conf: |\n  x\nb:\n  conf: |\n    y\n", "conf: plain\n"])
def test_replace_block_needs_exactly_one_block(manifest):
    with pytest.raises(rsc.RenderError, match="exactly one"):
        rsc.replace_block(manifest, "conf", "x: 1\n")


def test_check_mode_exit_code(monkeypatch, repo_copy):
    monkeypatch.setattr(rsc, "ROOT", repo_copy)
    assert rsc.main(["--check"]) == 0
    config_path = repo_copy / "configs/cpu-demo.yaml"
    config_path.write_text(config_path.read_text().replace("prefix: demo/", "prefix: demo2/"))
    assert rsc.main(["--check"]) == 1
    assert rsc.main([]) == 0
    assert rsc.main(["--check"]) == 0


# --- the cluster fits the config ------------------------------------------------------------------------


def test_cluster_config_keeps_secrets_out_and_auth_on(rendered):
    _, docs = rendered
    config = app_config(serve_config(docs))
    assert config.auth.mode == "tokens"
    assert config.redis.url is None
    assert config.storage.kind == "s3"
    assert config.fetch.allow_http_and_private is False


def test_every_env_var_the_config_names_is_set_in_every_ray_container(rendered):
    _, docs = rendered
    config = app_config(serve_config(docs))
    wanted = {config.redis.url_env, config.storage.access_key_env, config.storage.secret_key_env}
    # Read only with storage.kind local, but passed everywhere so switching to it needs no manifest change.
    wanted |= {config.storage.signing_key_env, config.storage.previous_signing_keys_env}
    for name, _, pod in groups(docs):
        env = {e["name"] for e in pod["containers"][0]["env"]}
        assert wanted <= env, (name, wanted - env)


def test_the_redis_url_points_at_the_redis_service_db_1(rendered):
    _, docs = rendered
    for _, _, pod in groups(docs):
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        url = urlsplit(env["INFINITETALK_REDIS_URL"]["value"])
        service = one(docs, "Service", url.hostname)
        assert url.port in [p["port"] for p in service["spec"]["ports"]]
        # DB 0 holds Ray's GCS state (gcsFaultToleranceOptions cannot select another).
        assert url.path == "/1"
        assert url.password == "$(INFINITETALK_REDIS_PASSWORD)"
        assert env["INFINITETALK_REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "infinitetalk-redis"


def mounts(pod: dict) -> dict[str, dict]:
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in pod["containers"][0]["volumeMounts"]}


def test_tokens_file_is_a_key_of_the_mounted_tokens_secret(rendered):
    _, docs = rendered
    tokens_file = PurePosixPath(app_config(serve_config(docs)).auth.tokens_file)
    for name, _, pod in groups(docs):
        volume = mounts(pod)[str(tokens_file.parent)]
        secret = one(docs, "Secret", volume["secret"]["secretName"])
        assert tokens_file.name in secret.get("stringData", secret.get("data", {})), name


def test_tokens_secret_is_mounted_as_a_directory_so_updates_reach_the_pods(rendered):
    """A subPath mount is bound once at start and never sees a changed Secret; a directory mount does."""
    _, docs = rendered
    tokens_file = PurePosixPath(app_config(serve_config(docs)).auth.tokens_file)
    for name, _, pod in groups(docs):
        secret_volumes = {v["name"] for v in pod["volumes"] if "secret" in v}
        for container in pod["containers"]:
            for mount in container.get("volumeMounts", []):
                if mount["name"] in secret_volumes:
                    assert "subPath" not in mount and "subPathExpr" not in mount, (name, mount)
        volume = mounts(pod)[str(tokens_file.parent)]
        assert "items" not in volume["secret"], "every key, as the kubelet updates them"


def kubelet_write(directory: Path, files: dict[str, str], generation: int) -> None:
    """What the kubelet's AtomicWriter does to a Secret volume: the files in a new hidden directory, the
    ``..data`` link swapped to it by a rename, each key a link through ``..data``, the old directory gone."""
    directory.mkdir(parents=True, exist_ok=True)
    old = os.readlink(directory / "..data") if (directory / "..data").is_symlink() else None
    payload = directory / f"..2026_01_01_00_00_0{generation}.000000001"
    payload.mkdir()
    for name, text in files.items():
        (payload / name).write_text(text)
    os.symlink(payload.name, directory / "..data_tmp")
    os.replace(directory / "..data_tmp", directory / "..data")
    for name in files:
        if not (directory / name).is_symlink():
            os.symlink(f"..data/{name}", directory / name)
    if old is not None:
        shutil.rmtree(directory / old)


def test_a_changed_tokens_secret_takes_effect_without_a_restart(tmp_path):
    docs = render(ROOT / "k8s/overlays/h100")
    tokens_file = PurePosixPath(app_config(serve_config(docs)).auth.tokens_file)
    mount = tmp_path / tokens_file.parent.relative_to("/")
    old_token, new_token = "a" * 32, "b" * 32
    kubelet_write(mount, {tokens_file.name: f"{old_token}: acme\n"}, 1)
    config = AuthConfig(mode="tokens", tokens_file=str(mount / tokens_file.name))
    authenticator = Authenticator.from_config(config, environ={})
    assert authenticator.authenticate(f"Bearer {old_token}") == "acme"
    assert authenticator.refresh() is False
    updated = f"tokens:\n  {new_token}: beta\ntenants:\n  beta: {{max_queued: 3, max_running: 1}}\n"
    kubelet_write(mount, {tokens_file.name: updated}, 2)
    assert authenticator.refresh() is True
    with pytest.raises(AuthenticationFailed):
        authenticator.authenticate(f"Bearer {old_token}")
    assert authenticator.authenticate(f"Bearer {new_token}") == "beta"
    assert authenticator.limits["beta"].max_queued == 3


def test_weights_and_loras_are_under_the_weights_mount(rendered):
    _, docs = rendered
    model = app_config(serve_config(docs)).model
    paths = [model.weights_dir, *(lora.path for lora in model.loras)]
    for name, _, pod in groups(docs):
        volume_mounts = pod["containers"][0]["volumeMounts"]
        models = next(m for m in volume_mounts if m["mountPath"] == "/models")
        assert models["readOnly"] is True, name
        for path in filter(None, paths):
            assert PurePosixPath(path).is_relative_to("/models"), path


def start_param(group: dict, key: str, default: float = 0.0) -> float:
    return float(group["rayStartParams"].get(key, default))


def gpus(pod: dict) -> float:
    return quantity(pod["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))


def test_the_sampler_fits_its_worker_group_at_max_replicas(rendered):
    _, docs = rendered
    sampler = deployment(serve_config(docs), "Sampler")
    options, scaling = sampler["ray_actor_options"], sampler["autoscaling_config"]
    fitting = [
        (group, pod)
        for name, group, pod in groups(docs)
        if name != "head"
        and gpus(pod) >= options["num_gpus"]
        and start_param(group, "num-cpus") >= options["num_cpus"]
    ]
    assert fitting, "no worker group can hold a Sampler replica"
    capacity = sum(
        group["maxReplicas"] * (math.floor(gpus(pod) / options["num_gpus"]) if options["num_gpus"] else 1)
        for group, pod in fitting
    )
    assert capacity >= scaling["max_replicas"]
    if options["num_gpus"]:
        for group, pod in fitting:
            assert group["minReplicas"] == 0, "GPU pods should scale to zero with the Sampler"
            assert pod["tolerations"] and pod["nodeSelector"]


def test_audio_encoder_and_ingress_fit_the_cpu_pods(rendered):
    _, docs = rendered
    config = serve_config(docs)
    by_name = {name: group for name, group, _ in groups(docs)}
    audio = deployment(config, "AudioEncoder")["ray_actor_options"]["num_cpus"]
    ingress = deployment(config, "Ingress")["ray_actor_options"]["num_cpus"]
    assert start_param(by_name["cpu"], "num-cpus") >= audio
    assert start_param(by_name["head"], "num-cpus") >= ingress
    assert by_name["head"]["rayStartParams"]["num-gpus"] == "0"


def test_worker_pods_outlast_the_samplers_graceful_shutdown(rendered):
    _, docs = rendered
    config = serve_config(docs)
    sampler = deployment(config, "Sampler")
    graceful = sampler.get("graceful_shutdown_timeout_s", app_config(config).queue.drain_seconds + 30)
    for name, _, pod in groups(docs):
        if name != "head":
            assert pod["terminationGracePeriodSeconds"] >= graceful + 60, name


def test_serve_port_agrees_everywhere(rendered):
    _, docs = rendered
    port = serve_config(docs)["http_options"]["port"]
    service = one(docs, "RayService")["spec"]["serveService"]
    assert [p["port"] for p in service["spec"]["ports"] if p["name"] == "serve"] == [port]
    for name, _, pod in groups(docs):
        ports = {p["name"]: p["containerPort"] for p in pod["containers"][0]["ports"]}
        assert ports["serve"] == port, name


def test_ingress_lets_the_largest_request_body_through(rendered):
    _, docs = rendered
    fetch = app_config(serve_config(docs)).fetch
    app_limit = (fetch.max_image_bytes + 2 * fetch.max_audio_bytes) * 4 // 3 + BODY_SLACK_BYTES
    annotations = one(docs, "Ingress")["metadata"]["annotations"]
    nginx_limit = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert quantity(nginx_limit.replace("m", "Mi")) >= app_limit
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= fetch.timeout_seconds * 2


def test_cpu_demo_has_no_gpu_anywhere():
    docs = render(ROOT / "k8s/overlays/cpu-demo")
    for name, _, pod in groups(docs):
        assert gpus(pod) == 0, name
        assert "nodeSelector" not in pod, name
    assert deployment(serve_config(docs), "Sampler")["ray_actor_options"]["num_gpus"] == 0
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]


def test_h100_overlay_selects_h100_nodes_with_one_gpu_per_sampler():
    docs = render(ROOT / "k8s/overlays/h100")
    gpu = next(pod for name, _, pod in groups(docs) if name == "gpu")
    assert gpu["nodeSelector"]["nvidia.com/gpu.product"].startswith("NVIDIA-H100")
    assert gpus(gpu) == deployment(serve_config(docs), "Sampler")["ray_actor_options"]["num_gpus"] == 1
    assert {t["key"] for t in gpu["tolerations"]} == {"nvidia.com/gpu", "nvidia.com/gpu.product"}
    base_gpu = next(pod for name, _, pod in groups(render(ROOT / "k8s/base")) if name == "gpu")
    for resource in ("cpu", "memory"):
        h100 = quantity(gpu["containers"][0]["resources"]["requests"][resource])
        assert h100 > quantity(base_gpu["containers"][0]["resources"]["requests"][resource])


def test_h200_overlay_shares_each_h200_between_two_samplers():
    docs = render(ROOT / "k8s/overlays/h200")
    gpu_group, gpu = next((group, pod) for name, group, pod in groups(docs) if name == "gpu")
    sampler = deployment(serve_config(docs), "Sampler")["ray_actor_options"]
    assert gpu["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-H200"
    assert gpus(gpu) == 1 and sampler["num_gpus"] == 0.5
    # Both Samplers' CPUs, and no room for a CPU-only replica to settle on the GPU pod.
    assert start_param(gpu_group, "num-cpus") == 2 * sampler["num_cpus"]
    assert quantity(gpu["containers"][0]["resources"]["limits"]["cpu"]) >= start_param(gpu_group, "num-cpus")


def test_the_h200_config_is_the_gpu_config_but_for_the_samplers_placement():
    gpu = yaml.safe_load((ROOT / "configs/gpu.yaml").read_text())
    h200 = yaml.safe_load((ROOT / "configs/gpu-h200.yaml").read_text())
    gpu_sampler, h200_sampler = (deployment(config, "Sampler") for config in (gpu, h200))
    assert h200_sampler["ray_actor_options"]["num_gpus"] * 2 == gpu_sampler["ray_actor_options"]["num_gpus"]
    # As many GPUs at the most: twice the replicas.
    assert (
        h200_sampler["autoscaling_config"]["max_replicas"]
        == 2 * gpu_sampler["autoscaling_config"]["max_replicas"]
    )
    for sampler in (gpu_sampler, h200_sampler):
        del sampler["ray_actor_options"]["num_gpus"], sampler["autoscaling_config"]["max_replicas"]
    assert h200 == gpu


def test_gpu_pods_keep_compiled_kernels_in_a_volume(rendered):
    overlay, docs = rendered
    gpu_pods = [(name, pod) for name, _, pod in groups(docs) if gpus(pod) > 0]
    assert bool(gpu_pods) == (overlay != "overlays/cpu-demo")
    for name, pod in gpu_pods:
        container = pod["containers"][0]
        cache = next(env["value"] for env in container["env"] if env["name"] == "TORCHINDUCTOR_CACHE_DIR")
        mount = next(m for m in container["volumeMounts"] if m["mountPath"] == cache)
        volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
        assert "emptyDir" in volume and not mount.get("readOnly"), name
