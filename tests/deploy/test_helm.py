"""Helm chart deploy/helm/samclip: lint, render the four CI value sets, validate every manifest offline.

Needs `helm` (deploy/tools/install_ci_tools.sh puts it in .venv/bin) and the `kubernetes-validate` package
(offline JSON schemas). The ServiceMonitor is a CRD without a bundled schema: its shape is checked here instead.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "samclip"
VALUE_SETS = ("default", "gpu", "cpu", "all-options")
K8S_VERSION = "1.37.0"
HELM = shutil.which("helm") or shutil.which("helm", path=str(Path(sys.executable).parent))

pytestmark = pytest.mark.skipif(HELM is None, reason="helm not installed (deploy/tools/install_ci_tools.sh)")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=check, timeout=120)


def render(value_set: str | None = None, *extra: str) -> list[dict]:
    """`helm template` -> list of manifest dicts (empty documents dropped)."""
    args = ["template", "rel", str(CHART), "--namespace", "ml"]
    if value_set:
        args += ["-f", str(ROOT / "deploy" / "values" / f"{value_set}.yaml")]
    out = helm(*args, *extra).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


@pytest.fixture(scope="module", params=VALUE_SETS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def test_lint_strict_all_value_sets() -> None:
    for value_set in VALUE_SETS:
        result = helm(
            "lint",
            "--strict",
            str(CHART),
            "-f",
            str(ROOT / "deploy/values" / f"{value_set}.yaml"),
            check=False,
        )
        assert result.returncode == 0, f"{value_set}: {result.stdout}\n{result.stderr}"


def test_every_manifest_validates_strict(rendered: tuple[str, list[dict]]) -> None:
    value_set, docs = rendered
    validated = 0
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # CRD: no schema in kubernetes-validate; see test_servicemonitor_shape
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        validated += 1
    assert validated >= 6, f"{value_set}: only {validated} manifests rendered"


def test_validator_rejects_a_broken_manifest() -> None:
    """Guard the guard: strict validation must catch an unknown field and a wrong type."""
    deployment = copy.deepcopy(by_kind(render("default"), "Deployment")[0])
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProb"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment = copy.deepcopy(by_kind(render("default"), "Deployment")[0])
    deployment["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def pod_spec(docs: list[dict]) -> dict:
    (deployment,) = by_kind(docs, "Deployment")
    return deployment["spec"]["template"]["spec"]


def assert_restricted(spec: dict) -> None:
    """The restricted pod-security settings issue 4 requires, on the pod and on every container."""
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod_sc.get("runAsUser", 1) != 0
    containers = spec["containers"] + spec.get("initContainers", [])
    for container in containers:
        sc = container["securityContext"]
        name = container["name"]
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["runAsNonRoot"] is True, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        assert not sc["capabilities"].get("add"), name
        assert sc.get("privileged", False) is False, name
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
        mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
        assert "/tmp" in mounts, f"{name}: /tmp must be a writable emptyDir"
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert "emptyDir" in volumes["tmp"]
    assert spec["automountServiceAccountToken"] is False


def test_pod_security_settings_kept(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    assert_restricted(pod_spec(docs))


def test_security_check_catches_a_dropped_setting() -> None:
    """Render with one setting removed (bypassing values via a post-edit) and confirm the check fails."""
    spec = pod_spec(render("default"))
    for path in (("allowPrivilegeEscalation",), ("readOnlyRootFilesystem",), ("capabilities", "drop")):
        broken = copy.deepcopy(spec)
        target = broken["containers"][0]["securityContext"]
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        with pytest.raises((AssertionError, KeyError)):
            assert_restricted(broken)


@pytest.mark.parametrize(
    "override",
    [
        "securityContext.readOnlyRootFilesystem=false",
        "securityContext.allowPrivilegeEscalation=true",
        "securityContext.runAsNonRoot=false",
        "podSecurityContext.runAsNonRoot=false",
        "securityContext.capabilities.add[0]=SYS_ADMIN",
    ],
)
def test_schema_refuses_weakened_security(override: str) -> None:
    result = helm("template", "rel", str(CHART), "--set", override, check=False)
    assert result.returncode != 0 and "values don't meet the specifications" in result.stderr, result.stderr


def test_schema_refuses_unknown_and_bad_values() -> None:
    for override in (
        "replicas=2",
        "bundle.source=s3",
        "gpu.count=0",
        "config.bundle=/x",
        "ingress.affinity.mode=ip",
    ):
        result = helm("template", "rel", str(CHART), "--set", override, check=False)
        assert result.returncode != 0, override


def container(docs: list[dict]) -> dict:
    return pod_spec(docs)["containers"][0]


def test_probes_and_drain_budget() -> None:
    docs = render("all-options")
    main = container(docs)
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert main["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "10"]
    (configmap,) = by_kind(docs, "ConfigMap")
    drain = float(configmap["data"]["SAMCLIP_DRAIN_TIMEOUT_S"])
    grace = pod_spec(docs)["terminationGracePeriodSeconds"]
    assert grace == 10 + 40 + 15 and grace > 10 + drain  # preStop sleep + drain + margin


def test_configmap_maps_values_to_settings() -> None:
    docs = render("gpu")
    data = by_kind(docs, "ConfigMap")[0]["data"]
    assert data["SAMCLIP_BUNDLE"] == "/models/bundle"
    assert data["SAMCLIP_MAX_BATCH_SIZE"] == "8"
    assert data["SAMCLIP_CACHE_BYTES"] == "8589934592"
    assert data["SAMCLIP_PROVIDERS"] == '["CUDAExecutionProvider","CPUExecutionProvider"]'
    assert all(key.startswith("SAMCLIP_") for key in data)
    assert (
        container(docs)["envFrom"][0]["configMapRef"]["name"]
        == by_kind(docs, "ConfigMap")[0]["metadata"]["name"]
    )


def test_settings_class_reads_the_configmap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rendered env must parse with the service's real Settings class (names and types line up)."""
    settings_mod = pytest.importorskip("service.settings")
    for value_set in VALUE_SETS:
        data = by_kind(render(value_set), "ConfigMap")[0]["data"]
        for key, value in data.items():
            monkeypatch.setenv(key, value)
        settings = settings_mod.Settings()
        assert str(settings.bundle) == "/models/bundle"
        assert settings.host == "0.0.0.0"
        assert settings.max_batch_size == int(data["SAMCLIP_MAX_BATCH_SIZE"])
        assert settings.providers == yaml.safe_load(data["SAMCLIP_PROVIDERS"])
        for key in data:
            monkeypatch.delenv(key)
        known = {f"SAMCLIP_{name.upper()}" for name in settings_mod.Settings.model_fields}
        assert set(data) <= known, f"{value_set}: unknown settings {set(data) - known}"


def test_gpu_request_and_limit() -> None:
    resources = container(render("gpu"))["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 and resources["requests"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in str(container(render("cpu"))["resources"])
    spec = pod_spec(render("gpu"))
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert container(render("gpu"))["image"] == "registry.example.com/samclip-serve:0.1.0-gpu"


def test_bundle_sources() -> None:
    pvc_spec = pod_spec(render("default"))
    assert {v["name"]: v for v in pvc_spec["volumes"]}["bundle"]["persistentVolumeClaim"]["readOnly"] is True
    url_docs = render("cpu")
    url_spec = pod_spec(url_docs)
    (init,) = url_spec["initContainers"]
    env = {item["name"]: item.get("value") for item in init["env"]}
    assert env["BUNDLE_URL"].startswith("https://") and len(env["BUNDLE_SHA256"]) == 64
    assert {v["name"]: v for v in url_spec["volumes"]}["bundle"]["emptyDir"]["sizeLimit"] == "4Gi"
    script = by_kind(url_docs, "ConfigMap")[1]["data"]["fetch_bundle.py"]
    assert script == (CHART / "files" / "fetch_bundle.py").read_text()
    baked = pod_spec(render(None, "--set", "bundle.source=image"))
    assert "bundle" not in {v["name"] for v in baked["volumes"]}
    assert helm("template", "rel", str(CHART), "--set", "bundle.source=url", check=False).returncode != 0


def test_hpa_pdb_and_queue_depth_metric() -> None:
    docs = render("all-options")
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert metrics["Resource"]["resource"]["name"] == "cpu"
    assert metrics["Pods"]["pods"]["metric"]["name"] == "samclip_queue_depth"
    assert "replicas" not in by_kind(docs, "Deployment")[0]["spec"]  # the HPA owns the replica count
    (pdb,) = by_kind(docs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    default_hpa = by_kind(render("default"), "HorizontalPodAutoscaler")[0]
    assert [m["type"] for m in default_hpa["spec"]["metrics"]] == ["Resource"]


def test_servicemonitor_shape() -> None:
    docs = render("all-options")
    (monitor,) = by_kind(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor["spec"]) == {"selector", "namespaceSelector", "endpoints"}
    (service,) = by_kind(docs, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics" and endpoint["interval"] == "10s"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert not by_kind(render("default"), "ServiceMonitor")


def test_ingress_session_affinity() -> None:
    annotations = by_kind(render("all-options"), "Ingress")[0]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    hashed = render(None, "--set", "ingress.enabled=true", "--set", "ingress.affinity.mode=hash")
    annotations = by_kind(hashed, "Ingress")[0]["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/upstream-hash-by"] == "$http_x_samclip_affinity"
    assert "nginx.ingress.kubernetes.io/affinity" not in annotations


def test_network_policy_and_selectors_match() -> None:
    docs = render("all-options")
    (policy,) = by_kind(docs, "NetworkPolicy")
    pod_labels = by_kind(docs, "Deployment")[0]["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert by_kind(docs, "Service")[0]["spec"]["selector"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert len(policy["spec"]["ingress"][0]["from"]) == 2


def test_hpa_on_queue_depth_alone_and_guard() -> None:
    docs = render(
        None,
        "--set",
        "autoscaling.targetCPUUtilizationPercentage=null",
        "--set",
        "autoscaling.queueDepth.enabled=true",
    )
    (hpa,) = by_kind(docs, "HorizontalPodAutoscaler")
    assert [m["type"] for m in hpa["spec"]["metrics"]] == ["Pods"]
    kubernetes_validate.validate(hpa, K8S_VERSION, strict=True)
    result = helm(
        "template", "rel", str(CHART), "--set", "autoscaling.targetCPUUtilizationPercentage=null", check=False
    )
    assert result.returncode != 0 and "autoscaling needs" in result.stderr
    no_hpa = render(None, "--set", "autoscaling.enabled=false", "--set", "replicaCount=3")
    assert not by_kind(no_hpa, "HorizontalPodAutoscaler")
    assert by_kind(no_hpa, "Deployment")[0]["spec"]["replicas"] == 3
