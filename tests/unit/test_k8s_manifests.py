"""The Kubernetes manifests in k8s/: they render, validate strictly, refer only to what exists, and are safe.

Rendering is `kubectl kustomize`'s (what `kubectl apply -k` applies; the tests skip without kubectl); core
kinds are validated by
kubernetes-validate in strict mode, the RayService against KubeRay's CRD schema from ../shared/kuberay-crds
with unknown fields rejected, as the API server's strict field validation does. The NetworkPolicies are
evaluated connection by connection for the pods they concern.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
import subprocess
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kustomize import render

from serve.config import StorageConfig
from serve.ingress_proxy import HAPROXY_SWITCH

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
CRDS = Path(__file__).parents[2].parent / "shared" / "kuberay-crds"

OVERLAYS = ("overlays/h100", "overlays/cpu-demo", "overlays/h100-s3-weights", "overlays/h200")
K8S_VERSION = "1.34"
CORE_API_VERSIONS = frozenset({"v1", "apps/v1", "networking.k8s.io/v1", "batch/v1", "policy/v1"})
CUSTOM_KINDS = frozenset({"RayService", "PodMonitor", "ServiceMonitor", "PrometheusRule"})
RAY_IMAGE = "ghcr.io/OWNER/infinitetalk-serve:"


@cache
def rendered(overlay: str) -> tuple[dict, ...]:
    return tuple(render(K8S / overlay))


@pytest.fixture(params=OVERLAYS)
def docs(request) -> list[dict]:
    return copy.deepcopy(list(rendered(request.param)))


def of_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


def named(docs, kind, name):
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_templates(docs):
    """(owner, pod template) of everything that creates pods: StatefulSets and the RayService's groups."""
    for doc in docs:
        if doc["kind"] in ("StatefulSet", "Deployment", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]
        elif doc["kind"] == "RayService":
            cluster = doc["spec"]["rayClusterConfig"]
            yield "ray-head", cluster["headGroupSpec"]["template"]
            for group in cluster.get("workerGroupSpecs", []):
                yield f"ray-{group['groupName']}", group["template"]


def containers(pod_spec):
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def ray_groups(docs):
    cluster = named(docs, "RayService", "infinitetalk")["spec"]["rayClusterConfig"]
    return [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]


# --- everything parses and renders ----------------------------------------------------------------------


def test_every_yaml_file_under_k8s_parses():
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 15
    for path in files:
        assert [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None], path
    for path in K8S.rglob("*.json"):
        json.loads(path.read_text())


def test_every_overlay_renders_the_whole_application(docs):
    kinds = {d["kind"] for d in docs}
    assert {"RayService", "StatefulSet", "Service", "Secret", "ConfigMap", "Ingress"} <= kinds
    assert {"PodMonitor", "ServiceMonitor", "PrometheusRule", "NetworkPolicy"} <= kinds
    assert {d["metadata"].get("namespace") for d in docs} == {"infinitetalk"}


def test_every_kind_is_validated_somewhere(docs):
    unchecked = {d["kind"] for d in docs if d["apiVersion"] not in CORE_API_VERSIONS} - CUSTOM_KINDS
    assert unchecked == set()


@pytest.mark.parametrize("overlay", ("base", *OVERLAYS))
def test_core_kinds_validate_strictly_against_kubernetes(overlay):
    for doc in render(K8S / overlay):
        if doc["apiVersion"] in CORE_API_VERSIONS:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_kubernetes_validation_rejects_unknown_fields():
    statefulset = copy.deepcopy(named(rendered(OVERLAYS[0]), "StatefulSet", "infinitetalk-redis"))
    statefulset["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(statefulset, K8S_VERSION, strict=True)


# --- KubeRay's CRD schema -------------------------------------------------------------------------------


def strict_schema(node, path=""):
    """The CRD schema with unknown fields rejected wherever the API server would prune them."""
    if isinstance(node, list):
        return [strict_schema(item, path) for item in node]
    if not isinstance(node, dict):
        return node
    result = {key: strict_schema(value, f"{path}/{key}") for key, value in node.items()}
    open_object = "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields")
    # The top-level metadata is ObjectMeta, validated by the API server itself, not by the CRD.
    if node.get("type") == "object" and not open_object and path != "/properties/metadata":
        result["additionalProperties"] = False
    return result


@cache
def crd_validator(kind: str) -> jsonschema.Draft202012Validator:
    if not CRDS.is_dir():
        pytest.skip(f"KubeRay CRD schemas not found at {CRDS} (shared/ is not checked out beside the repo)")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # the CRDs are ~1 MB each
    crd = yaml.load((CRDS / f"ray.io_{kind.lower()}s.yaml").read_text(), Loader=loader)
    version = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return jsonschema.Draft202012Validator(strict_schema(version["schema"]["openAPIV3Schema"]))


def crd_errors(kind: str, document: dict) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in crd_validator(kind).iter_errors(document)
    ]


def as_raycluster(rayservice: dict) -> dict:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": rayservice["metadata"]["name"]},
        "spec": rayservice["spec"]["rayClusterConfig"],
    }


def test_rayservice_and_its_raycluster_validate_against_the_crds(docs):
    rayservice = named(docs, "RayService", "infinitetalk")
    assert crd_errors("RayService", rayservice) == []
    assert crd_errors("RayCluster", as_raycluster(rayservice)) == []


@pytest.mark.parametrize(
    ("where", "key", "value"),
    [
        (("spec",), "serveConfig", "x"),
        (("spec", "rayClusterConfig"), "gcsFaultToleranceOption", {}),
        (("spec", "rayClusterConfig", "headGroupSpec"), "rayStartParam", {}),
        (
            ("spec", "rayClusterConfig", "headGroupSpec", "template", "spec", "containers", 0),
            "imagePull",
            "x",
        ),
        (("spec", "rayClusterConfig", "workerGroupSpecs", 0), "maxReplica", 1),
        (("spec", "rayClusterConfig", "autoscalerOptions"), "idleTimeoutSecond", 1),
        (("spec", "rayClusterConfig", "headGroupSpec", "template", "metadata"), "label", {}),
    ],
)
def test_crd_validation_rejects_unknown_fields(where, key, value):
    rayservice = copy.deepcopy(named(rendered(OVERLAYS[0]), "RayService", "infinitetalk"))
    node = rayservice
    for part in where:
        node = node[part]
    node[key] = value
    errors = crd_errors("RayService", rayservice)
    assert any(repr(key) in error for error in errors), errors


def test_crd_validation_rejects_wrong_types_and_values():
    rayservice = copy.deepcopy(named(rendered(OVERLAYS[0]), "RayService", "infinitetalk"))
    rayservice["spec"]["rayClusterConfig"]["autoscalerOptions"]["upscalingMode"] = "Eager"
    rayservice["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["maxReplicas"] = "8"
    assert len(crd_errors("RayService", rayservice)) == 2


def test_rayservice_passes_kuberays_own_spec_checks(docs):
    """The checks of KubeRay's ValidateRayServiceSpec / ValidateRayClusterSpec that apply to this spec."""
    rayservice = named(docs, "RayService", "infinitetalk")
    assert len(rayservice["metadata"]["name"]) <= 47
    spec = rayservice["spec"]
    assert spec["upgradeStrategy"]["type"] in ("NewCluster", "NewClusterWithIncrementalUpgrade", "None")
    cluster = spec["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    assert "name" not in head.get("headService", {}).get("metadata", {})
    names = [g["groupName"] for g in cluster["workerGroupSpecs"]]
    assert len(names) == len(set(names))
    for group in cluster["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["maxReplicas"]
        assert "idleTimeoutSeconds" not in group or cluster["autoscalerOptions"]["version"] == "v2"
    for group in ray_groups(docs):
        assert group["template"]["spec"]["containers"], "the Ray container is containers[0]"
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    head_env = {e["name"] for e in head["template"]["spec"]["containers"][0]["env"]}
    assert not head_env & {"REDIS_PASSWORD", "RAY_REDIS_ADDRESS", "REDIS_USERNAME"}
    assert "redis-password" not in head["rayStartParams"]
    assert "ray.io/ft-enabled" not in rayservice["metadata"].get("annotations", {})
    ports = {p["name"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert "serve" in ports, "without a port named serve KubeRay creates no Serve Service"


def test_autoscaling_and_gcs_fault_tolerance(docs):
    cluster = named(docs, "RayService", "infinitetalk")["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    options = cluster["autoscalerOptions"]
    assert 60 <= options["idleTimeoutSeconds"] <= 1800
    assert options["upscalingMode"] in ("Default", "Aggressive", "Conservative")
    ft = cluster["gcsFaultToleranceOptions"]
    # A fixed namespace would make the old and new RayCluster of an upgrade share (and corrupt) GCS state.
    assert "externalStorageNamespace" not in ft
    host, port = ft["redisAddress"].split(":")
    service = named(docs, "Service", host)
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    assert ft["redisPassword"]["valueFrom"]["secretKeyRef"] == {
        "name": "infinitetalk-redis",
        "key": "password",
    }


def test_every_ray_pod_runs_haproxy_as_its_http_front(docs):
    # Every Ray process reads the switch from its own environment: the controller picks HAProxy for every
    # node, and each node's HAProxy manager and ingress replicas must agree with it.
    groups = ray_groups(docs)
    assert len(groups) > 1
    for group in groups:
        env = {e["name"]: e.get("value") for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env.get(HAPROXY_SWITCH) == "1", group.get("groupName", "head")


def test_ray_version_matches_the_image_and_the_installed_ray(docs):
    rayservice = named(docs, "RayService", "infinitetalk")
    ray_version = rayservice["spec"]["rayClusterConfig"]["rayVersion"]
    assert ray_version == importlib.metadata.version("ray")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG BASE_IMAGE=rayproject/ray:{ray_version}-py311-gpu" in dockerfile
    project_version = importlib.metadata.version("infinitetalk-serve")
    images = {c["image"] for group in ray_groups(docs) for c in group["template"]["spec"]["containers"]}
    assert images == {RAY_IMAGE + project_version}


# --- cross-references -----------------------------------------------------------------------------------


def services(docs):
    """Services by name: the rendered ones and the Serve Service KubeRay creates from the RayService."""
    found = {d["metadata"]["name"]: d for d in of_kind(docs, "Service")}
    for rayservice in of_kind(docs, "RayService"):
        serve_service = rayservice["spec"]["serveService"]
        found[serve_service["metadata"]["name"]] = serve_service
    return found


def secret_keys(docs, name):
    secret = named(docs, "Secret", name)
    return set(secret.get("data", {})) | set(secret.get("stringData", {}))


def check_key_ref(docs, kind, ref, where):
    keys = secret_keys(docs, ref["name"]) if kind == "Secret" else set(named(docs, kind, ref["name"])["data"])
    assert ref.get("optional") or ref["key"] in keys, f"{where}: {kind} {ref['name']} has no key {ref['key']}"


def container_references(docs, owner, container):
    defined = set()
    for env in container.get("env", []):
        for reference in re.findall(r"\$\((\w+)\)", env.get("value", "")):
            assert reference in defined, f"{owner}: $({reference}) is used before it is defined"
        defined.add(env["name"])
        source = env.get("valueFrom", {})
        if "secretKeyRef" in source:
            check_key_ref(docs, "Secret", source["secretKeyRef"], owner)
        if "configMapKeyRef" in source:
            check_key_ref(docs, "ConfigMap", source["configMapKeyRef"], owner)
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            named(docs, "Secret", source["secretRef"]["name"])
        if "configMapRef" in source:
            named(docs, "ConfigMap", source["configMapRef"]["name"])


def test_every_named_object_exists(docs):
    for owner, template in pod_templates(docs):
        spec = template["spec"]
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for doc in of_kind(docs, "StatefulSet"):
            if template is doc["spec"]["template"]:
                volumes.update(
                    {c["metadata"]["name"]: {} for c in doc["spec"].get("volumeClaimTemplates", [])}
                )
        for volume in volumes.values():
            if "secret" in volume:
                keys = secret_keys(docs, volume["secret"]["secretName"])
                assert {item["key"] for item in volume["secret"].get("items", [])} <= keys
            if "configMap" in volume:
                named(docs, "ConfigMap", volume["configMap"]["name"])
            if "persistentVolumeClaim" in volume:
                named(docs, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        if "serviceAccountName" in spec:
            named(docs, "ServiceAccount", spec["serviceAccountName"])
        for container in containers(spec):
            container_references(docs, owner, container)
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{owner}: mount of undeclared volume {mount['name']}"
    for rayservice in of_kind(docs, "RayService"):
        password = rayservice["spec"]["rayClusterConfig"]["gcsFaultToleranceOptions"]["redisPassword"]
        check_key_ref(docs, "Secret", password["valueFrom"]["secretKeyRef"], "gcsFaultToleranceOptions")


def test_ingress_routes_to_the_serve_service_with_tls(docs):
    known = services(docs)
    for ingress in of_kind(docs, "Ingress"):
        paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
        assert {p["path"] for p in paths} >= {"/v1", "/healthz"}
        assert not {p["path"] for p in paths} & {"/", "/metrics"}, "/metrics is unauthenticated"
        for path in paths:
            backend = path["backend"]["service"]
            service = known[backend["name"]]
            assert backend["port"]["name"] in [p["name"] for p in service["spec"]["ports"]]
        hosts = {rule["host"] for rule in ingress["spec"]["rules"]}
        for tls in ingress["spec"]["tls"]:
            assert set(tls["hosts"]) == hosts
            # The TLS Secret is cert-manager's to create, from the issuer annotation.
            assert "cert-manager.io/cluster-issuer" in ingress["metadata"]["annotations"] or named(
                docs, "Secret", tls["secretName"]
            )
        assert ingress["spec"]["ingressClassName"] == "nginx"


def selects(selector: dict, labels: dict) -> bool:
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        present, value = expression["key"] in labels, labels.get(expression["key"])
        operator = expression["operator"]
        if operator == "In" and value not in expression["values"]:
            return False
        if (operator == "NotIn" and value in expression["values"]) or (
            operator == "DoesNotExist" and present
        ):
            return False
        if operator == "Exists" and not present:
            return False
    return bool(selector)


def test_labels_match_selectors(docs):
    templates = dict(pod_templates(docs))
    for statefulset in of_kind(docs, "StatefulSet"):
        spec = statefulset["spec"]
        assert selects(spec["selector"], spec["template"]["metadata"]["labels"])
        governing = named(docs, "Service", spec["serviceName"])
        assert governing["spec"]["clusterIP"] == "None"
    for service in of_kind(docs, "Service"):
        matched = [
            o
            for o, t in templates.items()
            if selects({"matchLabels": service["spec"]["selector"]}, t["metadata"]["labels"])
        ]
        assert matched, f"Service {service['metadata']['name']} selects no pods"
        for port in service["spec"]["ports"]:
            for owner in matched:
                names = {
                    p["name"] for c in templates[owner]["spec"]["containers"] for p in c.get("ports", [])
                }
                assert port["targetPort"] in names or isinstance(port["targetPort"], int)
    for policy in of_kind(docs, "NetworkPolicy"):
        assert any(
            selects(policy["spec"]["podSelector"], t["metadata"]["labels"]) for t in templates.values()
        )
        for rule in policy["spec"]["ingress"]:
            for peer in rule.get("from", []):
                if "namespaceSelector" in peer:
                    continue  # pods of other components (Prometheus, the KubeRay operator): network policies
                allowed = [
                    o for o, t in templates.items() if selects(peer["podSelector"], t["metadata"]["labels"])
                ]
                assert sorted(o for o in templates if o.startswith("ray-")) == sorted(allowed)


def test_monitors_select_what_they_scrape(docs):
    templates = dict(pod_templates(docs))
    ray_pods = sorted(o for o in templates if o.startswith("ray-"))
    monitors = {m["metadata"]["name"]: m for m in of_kind(docs, "PodMonitor")}
    for monitor in monitors.values():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selected = [
            o for o, t in templates.items() if selects(monitor["spec"]["selector"], t["metadata"]["labels"])
        ]
        assert selected
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            for owner in selected:
                ports = {p["name"] for p in templates[owner]["spec"]["containers"][0]["ports"]}
                assert endpoint["port"] in ports, (monitor["metadata"]["name"], owner, endpoint["port"])
    all_ray = monitors["infinitetalk-ray"]
    assert (
        sorted(
            o for o, t in templates.items() if selects(all_ray["spec"]["selector"], t["metadata"]["labels"])
        )
        == ray_pods
    )
    assert all(p["port"] == "metrics" for p in all_ray["spec"]["podMetricsEndpoints"])
    for group in ray_groups(docs):
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
    (service_monitor,) = of_kind(docs, "ServiceMonitor")
    serve_service = named(docs, "RayService", "infinitetalk")["spec"]["serveService"]
    assert selects(service_monitor["spec"]["selector"], serve_service["metadata"]["labels"])
    assert [(e["port"], e["path"]) for e in service_monitor["spec"]["endpoints"]] == [("serve", "/metrics")]


# --- network policies -----------------------------------------------------------------------------------
#
# The policies are evaluated as Kubernetes does (networking.k8s.io/v1 semantics: a pod selected by some
# Ingress policy is isolated, and admits a connection that a rule of any policy selecting it allows) for the
# pods the policies are about, with the labels their creators give them.

ALL_RENDERINGS = ("base", *OVERLAYS)
RAY_PORTS_ELSEWHERE = {
    # Ports a Ray pod listens on that no container declares: the dashboard agent, the raylet, the object
    # manager, the runtime-env agent, worker and Serve replica ports, HAProxy's stats and metrics.
    52365,
    8076,
    8077,
    10002,
    19999,
    30000,
    30500,
    30999,
    8404,
    9101,
}


@dataclass(frozen=True)
class Pod:
    name: str
    namespace: str
    labels: dict
    ports: dict = field(default_factory=dict)  # port name -> number
    ray: bool = False

    @property
    def namespace_labels(self) -> dict:
        return {"kubernetes.io/metadata.name": self.namespace}


OUTSIDE = None  # a client outside the cluster (the Ingress controller's own clients, say)


def namespace_of(docs) -> str:
    return next(iter({d["metadata"].get("namespace", "default") for d in docs}))


def kuberay_pod_labels(template_labels: dict, node_type: str, group: str) -> dict:
    """The labels KubeRay puts on a Ray pod (common/pod.go labelPod: user labels win, but for these three)."""
    labels = {
        "ray.io/is-ray-node": "yes",
        "ray.io/cluster": "infinitetalk-x7k2p",
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
        **template_labels,
    }
    labels.update({"ray.io/node-type": node_type, "ray.io/group": group})
    return labels


def app_pods(docs) -> list[Pod]:
    """The pods the rendered manifests make, KubeRay's GCS cleanup Job (the head's template) included."""
    namespace = namespace_of(docs)
    pods = []
    for owner, template in pod_templates(docs):
        ports = {
            p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])
        }
        labels = template["metadata"]["labels"]
        if owner == "ray-head":
            pods.append(Pod(owner, namespace, kuberay_pod_labels(labels, "head", "headgroup"), ports, True))
            cleanup = kuberay_pod_labels(labels, "redis-cleanup", "headgroup")
            pods.append(Pod("redis-cleanup-job", namespace, cleanup))
        elif owner.startswith("ray-"):
            group = owner.removeprefix("ray-")
            pods.append(Pod(owner, namespace, kuberay_pod_labels(labels, "worker", group), ports, True))
        else:
            pods.append(Pod(owner, namespace, labels, ports))
    return pods


def other_pods(docs) -> dict[str, Pod]:
    """Pods of other components, with the labels their installers give them."""
    namespace = namespace_of(docs)
    return {
        "ingress-nginx": Pod(
            "ingress-nginx",
            "ingress-nginx",
            {"app.kubernetes.io/name": "ingress-nginx", "app.kubernetes.io/component": "controller"},
        ),
        # prometheus-operator's pod labels (kube-prometheus-stack's Prometheus).
        "prometheus": Pod(
            "prometheus",
            "monitoring",
            {
                "app.kubernetes.io/name": "prometheus",
                "app.kubernetes.io/managed-by": "prometheus-operator",
                "prometheus": "kube-prometheus-stack-prometheus",
                "operator.prometheus.io/name": "kube-prometheus-stack-prometheus",
            },
        ),
        # The KubeRay Helm chart's operator pod (its kustomize install: name kuberay, same component).
        "kuberay-operator": Pod(
            "kuberay-operator",
            "kuberay-system",
            {
                "app.kubernetes.io/name": "kuberay-operator",
                "app.kubernetes.io/instance": "kuberay-operator",
                "app.kubernetes.io/component": "kuberay-operator",
            },
        ),
        "neighbour": Pod("neighbour", namespace, {"app": "debug"}),
        "stranger": Pod("stranger", "default", {"app": "debug"}),
        # Ray pods' labels in another namespace are not Ray pods of this one.
        "impostor": Pod(
            "impostor",
            "elsewhere",
            {"app.kubernetes.io/name": "infinitetalk", "app.kubernetes.io/component": "ray-head"},
        ),
    }


def matches(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector; the empty selector matches everything."""
    if not set(selector) <= {"matchLabels", "matchExpressions"}:
        raise AssertionError(f"unknown selector fields {selector}")
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        result = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not result:
            return False
    return True


def peer_admits(peer: dict, policy_namespace: str, source: Pod | None) -> bool:
    if not set(peer) <= {"podSelector", "namespaceSelector"}:
        raise AssertionError(f"peer {peer} is not modelled here (ipBlock?)")
    if source is OUTSIDE:
        return False
    if "namespaceSelector" in peer:
        in_namespace = matches(peer["namespaceSelector"], source.namespace_labels)
    else:
        in_namespace = source.namespace == policy_namespace
    return in_namespace and matches(peer.get("podSelector", {}), source.labels)


def port_admits(rule_ports: list | None, destination: Pod, port: int) -> bool:
    if not rule_ports:
        return True
    for entry in rule_ports:
        if entry.get("protocol", "TCP") != "TCP":
            continue
        wanted = entry.get("port")
        if wanted is None:
            return True
        if isinstance(wanted, str):
            if destination.ports.get(wanted) == port:
                return True
        elif wanted <= port <= entry.get("endPort", wanted):
            return True
    return False


def admits(docs, source: Pod | None, destination: Pod, port: int) -> bool:
    """Whether a TCP connection from source to destination:port gets through the rendered NetworkPolicies."""
    isolating = []
    for policy in of_kind(docs, "NetworkPolicy"):
        spec = policy["spec"]
        types = spec.get("policyTypes", ["Ingress", *(["Egress"] if "egress" in spec else [])])
        namespace = policy["metadata"].get("namespace", "default")
        selected = namespace == destination.namespace and matches(spec["podSelector"], destination.labels)
        if "Ingress" in types and selected:
            isolating.append((namespace, spec))
    if not isolating:
        return True
    for namespace, spec in isolating:
        for rule in spec.get("ingress", []):
            peers = rule.get("from")
            peer_ok = not peers or any(peer_admits(peer, namespace, source) for peer in peers)
            if peer_ok and port_admits(rule.get("ports"), destination, port):
                return True
    return False


def candidate_ports(pods: list[Pod]) -> set[int]:
    return {port for pod in pods for port in pod.ports.values()} | RAY_PORTS_ELSEWHERE


@cache
def rendered_with_pods(overlay: str):
    docs = rendered(overlay)
    return docs, app_pods(docs), other_pods(docs)


def test_policy_evaluator_follows_kubernetes_semantics():
    destination = Pod("d", "ns", {"app": "d"}, {"web": 80})
    inside, outside_ns = Pod("s", "ns", {"app": "s"}), Pod("s", "other", {"app": "s"})

    def policy(*rules, selector=None):
        return {
            "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"podSelector": selector or {}, "policyTypes": ["Ingress"], "ingress": list(rules)},
        }

    assert admits([], outside_ns, destination, 1), "no policy: not isolated"
    assert not admits([policy()], inside, destination, 80), "selected with no rules: isolated"
    assert admits([policy(selector={"matchLabels": {"app": "x"}})], inside, destination, 1)
    same_ns = policy({"from": [{"podSelector": {"matchLabels": {"app": "s"}}}]})
    assert admits([same_ns], inside, destination, 5) and not admits([same_ns], outside_ns, destination, 5)
    any_ns = policy(
        {
            "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "s"}}}],
            "ports": [{"port": 7}],
        }
    )
    assert admits([any_ns], outside_ns, destination, 7) and not admits([any_ns], outside_ns, destination, 8)
    named_port = policy({"ports": [{"protocol": "TCP", "port": "web"}]})
    assert admits([named_port], OUTSIDE, destination, 80) and not admits(
        [named_port], OUTSIDE, destination, 81
    )
    assert admits([policy({"ports": [{"port": 30000, "endPort": 30010}]})], OUTSIDE, destination, 30005)
    assert not admits([policy({"ports": [{"protocol": "UDP", "port": 80}]})], inside, destination, 80)
    not_in = {"matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["x"]}]}
    assert admits([policy({"from": [{"podSelector": not_in}]})], inside, destination, 1)


@pytest.mark.parametrize("overlay", ALL_RENDERINGS)
def test_every_pod_is_isolated_by_a_network_policy(overlay):
    docs, pods, _ = rendered_with_pods(overlay)
    for pod in pods:
        if pod.ports:  # the cleanup Job listens on nothing
            assert not admits(docs, OUTSIDE, pod, 1), f"{pod.name} is not selected by any NetworkPolicy"
    ray_policy = named(docs, "NetworkPolicy", "infinitetalk-ray")
    selected = {p.name for p in pods if matches(ray_policy["spec"]["podSelector"], p.labels)}
    assert selected - {"redis-cleanup-job"} == {p.name for p in pods if p.ray}
    assert {p.name for p in pods if p.ray} >= {"ray-head", "ray-cpu"}


@pytest.mark.parametrize("overlay", ALL_RENDERINGS)
def test_ray_pods_reach_each_other_on_every_port(overlay):
    docs, pods, _ = rendered_with_pods(overlay)
    ray_pods = [p for p in pods if p.ray]
    for source in ray_pods:
        for destination in ray_pods:
            for port in candidate_ports(ray_pods) | {1, 6379, 8265, 10001, 65535}:
                assert admits(docs, source, destination, port), (source.name, destination.name, port)


@pytest.mark.parametrize("overlay", ALL_RENDERINGS)
def test_from_outside_the_ray_pods_only_serve_metrics_and_the_operators_dashboard(overlay):
    docs, pods, others = rendered_with_pods(overlay)
    ray_pods = [p for p in pods if p.ray]
    # The GCS cleanup Job is the head's template, labels included: a Ray pod as far as the policies know.
    non_ray = [*others.values(), *(p for p in pods if not p.ray and p.name != "redis-cleanup-job")]
    ports = candidate_ports(ray_pods) | {6379, 8265, 10001}
    for destination in ray_pods:
        head = destination.name == "ray-head"
        expected = {
            "prometheus": {8000, 8080} | ({44217, 44227} if head else set()),
            "kuberay-operator": {8000} | ({8265} if head else set()),
        }
        for source in [*non_ray, OUTSIDE]:
            name = "outside" if source is OUTSIDE else source.name
            admitted = {port for port in ports if admits(docs, source, destination, port)}
            assert admitted == expected.get(name, {8000}), (name, destination.name)
        for port in (8265, 10001, 6379, 52365):
            assert not admits(docs, others["neighbour"], destination, port)
            assert not admits(docs, others["ingress-nginx"], destination, port)
            assert not admits(docs, others["prometheus"], destination, port)
            assert not admits(docs, others["impostor"], destination, port)


@pytest.mark.parametrize("overlay", ALL_RENDERINGS)
def test_what_must_reach_the_ray_pods_does(overlay):
    docs, pods, others = rendered_with_pods(overlay)
    ray_pods = {p.name: p for p in pods if p.ray}
    # ingress-nginx: the Ingress backends are the Serve Service's port, on whichever Ray pod it selects.
    serve_service = named(docs, "RayService", "infinitetalk")["spec"]["serveService"]
    service_ports = {p["name"]: p["targetPort"] for p in serve_service["spec"]["ports"]}
    for ingress in of_kind(docs, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for path in rule["http"]["paths"]:
                target = service_ports[path["backend"]["service"]["port"]["name"]]
                for pod in ray_pods.values():
                    assert admits(docs, others["ingress-nginx"], pod, target), pod.name
                    assert admits(docs, OUTSIDE, pod, target), pod.name
    # Prometheus: every PodMonitor endpoint on every pod it selects, and the ServiceMonitor's port.
    for monitor in of_kind(docs, "PodMonitor"):
        for pod in ray_pods.values():
            if matches(monitor["spec"]["selector"], pod.labels):
                for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                    port = pod.ports[endpoint["port"]]
                    assert admits(docs, others["prometheus"], pod, port), (pod.name, endpoint["port"])
    for monitor in of_kind(docs, "ServiceMonitor"):
        for endpoint in monitor["spec"]["endpoints"]:
            for pod in ray_pods.values():
                assert admits(docs, others["prometheus"], pod, service_ports[endpoint["port"]])
    # The KubeRay operator: the head's port named dashboard (what it sends the Serve config to).
    head = ray_pods["ray-head"]
    assert admits(docs, others["kuberay-operator"], head, head.ports["dashboard"])


@pytest.mark.parametrize("overlay", ALL_RENDERINGS)
def test_redis_admits_only_the_ray_pods(overlay):
    docs, pods, others = rendered_with_pods(overlay)
    (redis,) = [p for p in pods if p.name == "StatefulSet/infinitetalk-redis"]
    port = redis.ports["redis"]
    cluster = named(docs, "RayService", "infinitetalk")["spec"]["rayClusterConfig"]
    assert int(cluster["gcsFaultToleranceOptions"]["redisAddress"].rsplit(":", 1)[1]) == port
    clients = [p for p in pods if p.ray or p.name == "redis-cleanup-job"]
    assert len(clients) >= 3
    for source in clients:
        assert admits(docs, source, redis, port), source.name
    for source in [*others.values(), OUTSIDE]:
        for candidate in (port, 1, 8000, 16379):
            assert not admits(docs, source, redis, candidate), (source, candidate)
    for source in clients:
        assert not admits(docs, source, redis, 16379), "only the Redis port"


def test_the_policies_would_fail_a_policy_that_opens_the_dashboard():
    docs = copy.deepcopy(list(rendered(OVERLAYS[0])))
    head_policy = named(docs, "NetworkPolicy", "infinitetalk-ray-head")
    head_policy["spec"]["ingress"][1]["from"][0]["podSelector"] = {}
    _, pods, others = rendered_with_pods(OVERLAYS[0])
    head = next(p for p in pods if p.name == "ray-head")
    assert admits(docs, others["stranger"], head, 8265)
    assert not admits(list(rendered(OVERLAYS[0])), others["stranger"], head, 8265)


# --- Celery, signing keys ------------------------------------------------------------


@pytest.mark.parametrize("overlay", ALL_RENDERINGS)
def test_no_celery_anywhere(overlay):
    assert "celery" not in yaml.safe_dump_all(rendered(overlay)).lower()


def test_no_celery_in_the_sources_of_the_manifests_or_their_docs():
    files = [p for p in K8S.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    for path in [*files, ROOT / "docs" / "kubernetes.md"]:
        assert "celery" not in path.read_text().lower(), path


@pytest.mark.parametrize("overlay", ALL_RENDERINGS)
def test_every_container_with_the_signing_key_also_gets_the_previous_keys(overlay):
    storage = StorageConfig()
    found = 0
    for owner, _, container in all_containers(rendered(overlay)):
        env = {e["name"]: e for e in container.get("env", [])}
        if storage.signing_key_env not in env:
            assert storage.previous_signing_keys_env not in env, owner
            continue
        found += 1
        current = env[storage.signing_key_env]["valueFrom"]["secretKeyRef"]
        previous = env[storage.previous_signing_keys_env]["valueFrom"]["secretKeyRef"]
        assert previous == {"name": current["name"], "key": "previous-signing-keys", "optional": True}, owner
    assert found >= 2


# --- security, resources, probes ------------------------------------------------------------------------


def all_containers(docs):
    for owner, template in pod_templates(docs):
        for container in containers(template["spec"]):
            yield owner, template["spec"], container
    for rayservice in of_kind(docs, "RayService"):
        autoscaler = rayservice["spec"]["rayClusterConfig"]["autoscalerOptions"]
        yield "autoscaler", {}, {"name": "autoscaler", **autoscaler}


def test_every_container_runs_restricted_and_non_root(docs):
    for owner, pod, container in all_containers(docs):
        pod_context, context = pod.get("securityContext", {}), container["securityContext"]
        where = f"{owner}/{container['name']}"
        assert context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is True, where
        assert context.get("runAsUser", pod_context.get("runAsUser", 0)) != 0, where
        assert context["allowPrivilegeEscalation"] is False, where
        assert context["capabilities"]["drop"] == ["ALL"], where
        assert "add" not in context["capabilities"], where
        assert context.get("seccompProfile", pod_context.get("seccompProfile")) == {
            "type": "RuntimeDefault"
        }, where
        assert not context.get("privileged"), where
    for owner, template in pod_templates(docs):
        spec = template["spec"]
        assert not (spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC")), owner
        assert not [v for v in spec.get("volumes", []) if "hostPath" in v], owner
        if owner.startswith("ray-"):
            assert spec["securityContext"]["runAsUser"] == 1000, "the ray image's user"


def test_every_container_has_requests_and_limits(docs):
    for owner, _, container in all_containers(docs):
        resources = container["resources"]
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[kind]), f"{owner}/{container['name']} {kind}"
        gpus = {kind: resources[kind].get("nvidia.com/gpu") for kind in ("requests", "limits")}
        assert gpus["requests"] in (None, gpus["limits"])


def test_long_running_containers_have_probes(docs):
    for owner, template in pod_templates(docs):
        for container in template["spec"]["containers"]:
            assert container["livenessProbe"] and container["readinessProbe"], owner


def test_gpu_only_where_intended(docs):
    for group in ray_groups(docs):
        spec = group["template"]["spec"]
        limits = spec["containers"][0]["resources"]["limits"]
        if group.get("groupName") == "gpu":
            assert limits["nvidia.com/gpu"] == "1"
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec[
                "tolerations"
            ]
        else:
            assert "nvidia.com/gpu" not in limits
            assert "tolerations" not in spec


def test_weights_are_read_only_at_models(docs):
    for group in ray_groups(docs):
        spec = group["template"]["spec"]
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["mountPath"] == "/models"]
        assert mount["readOnly"] is True
        volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["readOnly"] is True
        for init in spec.get("initContainers", []):
            assert init["args"][:2] == ["s3", "sync"] and "/models" in init["args"]
    for claim in of_kind(docs, "PersistentVolumeClaim"):
        assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]


def test_redis_persists_and_keeps_its_password_out_of_manifests(docs):
    (statefulset,) = of_kind(docs, "StatefulSet")
    config = named(docs, "ConfigMap", "infinitetalk-redis-config")["data"]["redis.conf"]
    settings = [line.split(None, 1) for line in config.splitlines() if line and not line.startswith("#")]
    settings = {key: value for key, value in settings}
    assert settings["appendonly"] == "yes" and settings["appendfsync"] == "everysec"
    assert settings["maxmemory-policy"] == "noeviction"
    assert "requirepass" not in settings, "the password comes from the Secret at start"
    spec = statefulset["spec"]
    (claim,) = spec["volumeClaimTemplates"]
    container = spec["template"]["spec"]["containers"][0]
    assert {"name": claim["metadata"]["name"], "mountPath": settings["dir"]} in container["volumeMounts"]
    env = {e["name"]: e for e in container["env"]}
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "infinitetalk-redis"
    assert "$REDIS_PASSWORD" in container["args"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_redis_refuses_a_placeholder_password(tmp_path):
    (statefulset,) = of_kind(rendered(OVERLAYS[0]), "StatefulSet")
    script = statefulset["spec"]["template"]["spec"]["containers"][0]["args"][0]
    script = script.replace("/run/redis/", f"{tmp_path}/").replace("exec redis-server", "echo started")
    for password, started in (("REPLACE-with-openssl-rand-hex-32", False), ("", False), ("ab12" * 16, True)):
        result = subprocess.run(
            ["/bin/sh", "-c", script], env={"REDIS_PASSWORD": password}, capture_output=True, text=True
        )
        assert (result.returncode == 0) is started, (password, result.stderr)
    assert (tmp_path / "auth.conf").read_text() == f"requirepass {'ab12' * 16}\n"
    assert oct((tmp_path / "auth.conf").stat().st_mode & 0o777) == "0o600"


def test_example_secrets_hold_placeholders_only(docs):
    for secret in of_kind(docs, "Secret"):
        assert "data" not in secret, "example Secrets use readable stringData placeholders"
        for key, value in secret.get("stringData", {}).items():
            assert "REPLACE" in value or value.strip() == "{}", f"{secret['metadata']['name']}/{key}"


def test_ray_pods_drain_before_they_stop(tmp_path):
    """The preStop hook drains the Ray node and waits while a Sampler runs there and the head answers."""
    worker = next(g for g in ray_groups(rendered(OVERLAYS[0])) if g.get("groupName") == "gpu")
    command = worker["template"]["spec"]["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[:2] == ["/bin/bash", "-c"] and "/proc/[0-9]*/cmdline" in command[2]
    # A fake /proc (Ray replicas of other test runs may be alive on this machine) and a fake `ray`.
    proc = tmp_path / "proc"
    script = command[2].replace("/proc/", f"{proc}/")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    (bin_dir / "ray").write_text(
        f'#!/bin/bash\necho "$@" >> {log}\n'
        # health-check answers twice, then the head is "gone"; drain-node fails when DRAIN_FAILS is set
        f'if [ "$1" = health-check ]; then [ $(grep -c health-check {log}) -lt 3 ]; '
        f'else [ -z "$DRAIN_FAILS" ]; fi\n'
    )
    (bin_dir / "sleep").write_text("#!/bin/bash\n")
    for tool in ("ray", "sleep"):
        (bin_dir / tool).chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOSTNAME": "pod-1"}

    def run_hook(**extra_env) -> list[str]:
        log.unlink(missing_ok=True)
        subprocess.run([*command[:2], script], env={**env, **extra_env}, check=True, timeout=30)
        return log.read_text().splitlines()

    (proc / "12").mkdir(parents=True)
    (proc / "12" / "cmdline").write_bytes(b"ray::ServeReplica:infinitetalk:Sampler\0")
    calls = run_hook()
    assert calls[0] == (
        "drain-node --reason DRAIN_NODE_REASON_PREEMPTION --reason-message pod pod-1 terminating "
        "--deadline-remaining-seconds 900"
    )
    assert calls[1:] == ["health-check"] * 3, "waits while the head answers, stops when it does not"
    assert run_hook(DRAIN_FAILS="1") == [calls[0]], "no drain accepted: nothing to wait for"
    (proc / "12" / "cmdline").write_bytes(b"ray::ServeReplica:infinitetalk:AudioEncoder\0")
    assert run_hook() == [calls[0]], "no Sampler on the node: stop at once"


# --- monitoring -----------------------------------------------------------------------------------------


def app_metric_names() -> set[str]:
    """The sample names the app's /metrics exports, from its own collector."""
    from serve.jobs import JobStatus
    from serve.metrics import JOB_BUCKETS, STAGE_BUCKETS, JobMetricsCollector

    class Store:
        def counts(self):
            return {status: 1 for status in JobStatus}

        def webhook_backlog(self):
            return 0

    class Recorder:
        def counter(self, name):
            return {"x": 1.0}

        def histogram(self, name, buckets):
            bounds = JOB_BUCKETS if name == "job_duration_seconds" else STAGE_BUCKETS
            return {"sampling": ([(repr(float(b)), 1.0) for b in bounds] + [("+Inf", 1.0)], 1.0)}

    return {s.name for family in JobMetricsCollector(Store(), Recorder()).collect() for s in family.samples}


@cache
def ray_sources() -> str:
    serve_dir = Path(importlib.util.find_spec("ray.serve").origin).parent
    return "\n".join(p.read_text() for p in serve_dir.rglob("*.py"))


def check_metric_names(expression: str):
    app = app_metric_names()
    sampler_source = (ROOT / "serve/deployments/sampler.py").read_text()
    for name in set(re.findall(r"\b(?:infinitetalk|ray|DCGM)_\w+", expression)):
        if name.startswith("infinitetalk_"):
            assert name in app, f"{name} is not exported by serve.metrics"
        elif name.startswith("ray_infinitetalk_"):
            assert f'"{name.removeprefix("ray_")}"' in sampler_source, name
        elif name.startswith("ray_"):
            assert f'"{name.removeprefix("ray_")}"' in ray_sources(), f"{name} is not a Ray Serve metric"
        else:
            assert name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED"), name
    depth = 0
    for char in expression:
        depth += {"(": 1, ")": -1}.get(char, 0)
        assert depth >= 0, expression
    assert depth == 0 and expression.count("{") == expression.count("}"), expression


def dashboard(docs) -> dict:
    config_map = named(docs, "ConfigMap", "infinitetalk-grafana-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    return json.loads(config_map["data"]["infinitetalk.json"])


def test_dashboard_has_the_panels_an_operator_needs(docs):
    board = dashboard(docs)
    expressions = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in board["panels"]}
    wanted = {
        "Queue depth": "infinitetalk_queue_depth",
        "Jobs by state": "infinitetalk_jobs_total",
        "End-to-end latency (submit to completed)": "histogram_quantile(0.95, sum by (le) (rate("
        "infinitetalk_job_duration_seconds_bucket",
        "Per-stage latency p95": "infinitetalk_stage_duration_seconds_bucket",
        "Serve replicas": 'ray_serve_deployment_replica_healthy{application="infinitetalk"}',
        "GPU utilisation": "DCGM_FI_DEV_GPU_UTIL",
        "GPU memory used": "DCGM_FI_DEV_FB_USED",
    }
    for title, fragment in wanted.items():
        assert fragment in expressions[title], title
    assert 'deployment="Sampler"' in expressions["Serve replicas"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for expression in expressions.values():
        check_metric_names(expression)


def test_alerts_cover_queue_failures_and_missing_samplers(docs):
    (rule,) = of_kind(docs, "PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert {
        "InfiniteTalkQueueGrowing",
        "InfiniteTalkJobsFailing",
        "InfiniteTalkNoSamplerForQueuedJobs",
    } <= set(alerts)
    assert 'deployment="Sampler"' in alerts["InfiniteTalkNoSamplerForQueuedJobs"]["expr"]
    assert 'state="failed"' in alerts["InfiniteTalkJobsFailing"]["expr"]
    for alert in alerts.values():
        assert alert["labels"]["severity"] in ("warning", "critical")
        assert re.fullmatch(r"\d+[smh]", alert["for"])
        assert alert["annotations"]["summary"]
        check_metric_names(alert["expr"])


def test_metric_name_check_catches_typos():
    with pytest.raises(AssertionError, match="not exported"):
        check_metric_names("max(infinitetalk_queue_dept)")
    with pytest.raises(AssertionError, match="not a Ray Serve metric"):
        check_metric_names("sum(ray_serve_num_replicas_healthy)")
    with pytest.raises(AssertionError):
        check_metric_names("max(infinitetalk_queue_depth")
