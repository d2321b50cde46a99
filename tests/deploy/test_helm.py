"""Helm chart deploy/helm/samclip: lint, render every value set in deploy/values, validate every manifest offline
(kubernetes-validate --strict on the newest schema it ships), scan with checkov (documented skips only), keep the
restricted pod security, and map `config` onto the service's real Settings class.

Needs `helm` and checkov (deploy/tools/install_ci_tools.sh puts them in .venv/bin and .venv/tools/checkov) and
the `kubernetes-validate` package. The behaviours issue 13 asks of the chart are in test_helm_features.py.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

from tests.deploy.chart import (  # noqa: E402
    CHART,
    HELM,
    ROOT,
    VALUE_SETS,
    VALUES,
    by_kind,
    config_data,
    container,
    env_of,
    helm,
    is_crd,
    pod_spec,
    render,
    render_error,
    template_args,
)

K8S_VERSION = kubernetes_validate.utils.latest_version()
CHECKOV = shutil.which("checkov", path=str(ROOT / ".venv" / "tools" / "checkov" / "bin")) or shutil.which(
    "checkov"
)
# Every checkov finding the chart accepts, with the reason (also in deploy/helm/samclip/README.md, "Checks").
CHECKOV_SKIPS = {
    "CKV_K8S_11": "no CPU limit by default: CFS throttling adds tail latency; threads follow the CPU request",
    "CKV_K8S_15": "pullPolicy IfNotPresent with immutable version tags or digests (image.pullPolicy to change)",
    "CKV_K8S_43": "tags by default because a digest exists only per build; image.digest / redis.image.digest",
    "CKV_K8S_35": "the service reads SAMCLIP_* env (pydantic-settings); secrets come via secretKeyRef only",
    "CKV2_K8S_6": "NetworkPolicy is opt-in (networkPolicy.enabled): the ingress controller's namespace is site-specific",
}

pytestmark = pytest.mark.skipif(HELM is None, reason="helm not installed (deploy/tools/install_ci_tools.sh)")


@pytest.fixture(scope="module", params=VALUE_SETS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def test_value_sets_present() -> None:
    assert {"default", "cpu", "gpu", "keda", "all-options"} <= set(VALUE_SETS)


def test_lint_strict_all_value_sets() -> None:
    for value_set in VALUE_SETS:
        result = helm("lint", "--strict", str(CHART), "-f", str(VALUES / f"{value_set}.yaml"), check=False)
        assert result.returncode == 0, f"{value_set}: {result.stdout}\n{result.stderr}"


def test_every_manifest_validates_strict(rendered: tuple[str, list[dict]]) -> None:
    value_set, docs = rendered
    validated = 0
    for doc in docs:
        if is_crd(doc):
            continue  # no schema in kubernetes-validate; test_helm_features asserts their shape
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


def checkov_failures(manifest: Path) -> set[str]:
    """IDs of the checks checkov fails on `manifest`, offline (--skip-download), no skips applied."""
    result = subprocess.run(
        [CHECKOV, "-f", str(manifest), "--framework", "kubernetes", "--skip-download", "--output", "json",
         "--quiet", "--compact"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout) if result.stdout.strip() else {}
    if isinstance(report, list):  # one report per framework
        (report,) = report
    return {check["check_id"] for check in report.get("results", {}).get("failed_checks", [])}


@pytest.mark.skipif(CHECKOV is None, reason="checkov not installed (deploy/tools/install_ci_tools.sh)")
def test_checkov_only_documented_skips(tmp_path: Path) -> None:
    """checkov finds nothing outside CHECKOV_SKIPS in any value set, and every skip is still needed somewhere."""
    seen: set[str] = set()
    for value_set in VALUE_SETS:
        manifest = tmp_path / f"{value_set}.yaml"
        manifest.write_text(helm(*template_args(value_set)).stdout)
        failed = checkov_failures(manifest)
        assert failed <= set(CHECKOV_SKIPS), (
            f"{value_set}: undocumented checkov findings {failed - set(CHECKOV_SKIPS)}"
        )
        seen |= failed
    assert seen == set(CHECKOV_SKIPS), f"skips no value set needs any more: {set(CHECKOV_SKIPS) - seen}"
    readme = (CHART / "README.md").read_text()
    assert all(check in readme for check in CHECKOV_SKIPS), "document every skip in the chart README"


@pytest.mark.skipif(CHECKOV is None, reason="checkov not installed")
def test_checkov_catches_a_privileged_pod(tmp_path: Path) -> None:
    docs = render("all-options")
    for doc in by_kind(docs, "Deployment"):
        doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]["privileged"] = True
    manifest = tmp_path / "broken.yaml"
    manifest.write_text(yaml.safe_dump_all(docs))
    assert "CKV_K8S_16" in checkov_failures(manifest)  # "Container should not be privileged"


def assert_restricted(spec: dict) -> None:
    """The restricted pod-security settings issue 4 requires, on the pod and on every container."""
    pod_sc = spec["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod_sc.get("runAsUser", 1) != 0
    for item in spec["containers"] + spec.get("initContainers", []):
        sc, name = item["securityContext"], item["name"]
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["runAsNonRoot"] is True, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        assert not sc["capabilities"].get("add"), name
        assert sc.get("privileged", False) is False, name
        assert sc["seccompProfile"]["type"] == "RuntimeDefault", name
        mounts = {mount["mountPath"] for mount in item["volumeMounts"]}
        assert {"/tmp", "/data"} & mounts, f"{name}: needs a writable emptyDir"
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert all("emptyDir" in volumes[name] for name in ("tmp", "data") if name in volumes)
    assert spec["automountServiceAccountToken"] is False


def test_pod_security_settings_kept(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    for deployment in by_kind(docs, "Deployment"):  # the server and, when enabled, Redis
        assert_restricted(deployment["spec"]["template"]["spec"])


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
    assert "values don't meet the specifications" in render_error("--set", override)


@pytest.mark.parametrize(
    "override",
    [
        "replicas=2",
        "bundle.source=s3",
        "gpu.count=0",
        "gpu.backend=openvino",
        "config.bundle=/x",
        "config.redis_url=redis://cache:6379/0",
        "config.backend=tensorflow",
        "ingress.routing.mode=cookie",
        "ingress.affinity.mode=cookie",
        "autoscaling.mode=memory",
        "podDisruptionBudget.unhealthyPodEvictionPolicy=Never",
    ],
)
def test_schema_refuses_unknown_and_bad_values(override: str) -> None:
    assert "values don't meet the specifications" in render_error("--set", override)


def test_configmap_maps_values_to_settings() -> None:
    docs = render("gpu")
    data = config_data(docs)
    assert data["SAMCLIP_BUNDLE"] == "/models/bundle"
    assert data["SAMCLIP_MAX_BATCH_SIZE"] == "8"
    assert data["SAMCLIP_PROVIDERS"] == '["CUDAExecutionProvider","CPUExecutionProvider"]'
    assert all(key.startswith("SAMCLIP_") for key in data)


def test_settings_class_reads_the_configmap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The rendered env (ConfigMap and the container's own env names) must parse with the service's real
    Settings class: names and types line up."""
    settings_mod = pytest.importorskip("service.settings")
    known = {f"SAMCLIP_{name.upper()}" for name in settings_mod.Settings.model_fields}
    for value_set in VALUE_SETS:
        docs = render(value_set)
        data = config_data(docs)
        for key, value in data.items():
            monkeypatch.setenv(key, value)
        settings = settings_mod.Settings()
        assert str(settings.bundle) == "/models/bundle"
        assert settings.host == "0.0.0.0"
        assert settings.max_batch_size == int(data["SAMCLIP_MAX_BATCH_SIZE"])
        assert settings.drain_timeout_s == float(data["SAMCLIP_DRAIN_TIMEOUT_S"])
        assert settings.device == data["SAMCLIP_DEVICE"]
        for key in data:
            monkeypatch.delenv(key)
        assert set(data) <= known, f"{value_set}: unknown settings {set(data) - known}"
        env_names = {name for name in env_of(container(docs)) if name.startswith("SAMCLIP_")}
        assert env_names <= known, f"{value_set}: unknown settings in the container env {env_names - known}"
