"""Helpers shared by the Helm chart tests: run `helm`, render value sets, pick objects out of the output."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "samclip"
VALUES = ROOT / "deploy" / "values"
VALUE_SETS = tuple(sorted(path.stem for path in VALUES.glob("*.yaml")))
HELM = shutil.which("helm") or shutil.which("helm", path=str(Path(sys.executable).parent))
# API groups of CRDs (no schema in kubernetes-validate): their shape is asserted by the tests instead.
CRD_GROUPS = ("monitoring.coreos.com", "keda.sh", "networking.istio.io")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    assert HELM is not None
    return subprocess.run([HELM, *args], capture_output=True, text=True, check=check, timeout=120)


def template_args(value_set: str | None, *extra: str) -> list[str]:
    args = ["template", "rel", str(CHART), "--namespace", "ml"]
    if value_set:
        args += ["-f", str(VALUES / f"{value_set}.yaml")]
    return [*args, *extra]


def render(value_set: str | None = None, *extra: str) -> list[dict]:
    """`helm template` -> list of manifest dicts (empty documents dropped)."""
    out = helm(*template_args(value_set, *extra)).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def render_error(*extra: str, value_set: str | None = None) -> str:
    """stderr of a `helm template` that must fail (asserts that it does)."""
    result = helm(*template_args(value_set, *extra), check=False)
    assert result.returncode != 0, f"rendered although it must fail: {extra}"
    return result.stderr


def sets(*pairs: str) -> list[str]:
    """`--set a=b --set c=d` arguments."""
    return [arg for pair in pairs for arg in ("--set", pair)]


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[dict], kind: str, name: str) -> dict:
    (doc,) = [doc for doc in by_kind(docs, kind) if doc["metadata"]["name"] == name]
    return doc


def is_crd(doc: dict) -> bool:
    return doc["apiVersion"].split("/")[0] in CRD_GROUPS


def deployment(docs: list[dict], name: str | None = None) -> dict:
    """The Deployment called `name`; by default the server's (its first container is `samclip`)."""
    if name is not None:
        return named(docs, "Deployment", name)
    (found,) = [
        doc
        for doc in by_kind(docs, "Deployment")
        if doc["spec"]["template"]["spec"]["containers"][0]["name"] == "samclip"
    ]
    return found


def pod_spec(docs: list[dict], name: str | None = None) -> dict:
    return deployment(docs, name)["spec"]["template"]["spec"]


def container(docs: list[dict], name: str | None = None) -> dict:
    return pod_spec(docs, name)["containers"][0]


def env_of(item: dict) -> dict[str, dict]:
    """A container's `env` as {name: entry}."""
    return {entry["name"]: entry for entry in item.get("env", [])}


def config_data(docs: list[dict]) -> dict[str, str]:
    """The SAMCLIP_* settings ConfigMap the server reads (its envFrom)."""
    return named(docs, "ConfigMap", container(docs)["envFrom"][0]["configMapRef"]["name"])["data"]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


def service_metric_names() -> set[str]:
    """Every series name the service exports (from its real registry): counters with _total, histograms with
    _bucket/_sum/_count. The alert rules and the dashboard may only use these."""
    from service.metrics import Metrics

    names = set()
    for family in Metrics().registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(
            family.type, ("",)
        )
        names.update(family.name + suffix for suffix in suffixes)
    return names


def metric_names_in(promql: str) -> set[str]:
    """samclip_* metric names a PromQL expression reads."""
    return set(re.findall(r"\bsamclip_[a-z_]+\b", promql))
