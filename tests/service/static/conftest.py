"""Fixtures of the demo-page tests: one real server process on the demo bundle (with an API key), one headless
Chromium, a fresh page per test with the key typed in, and a generated shapes scene to open."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from demo_browser import API_KEY, CHROMIUM, CHROMIUM_ARGS, IDLE, DemoPage, Recorder
from PIL import Image

from loadtests.run import serve_ready, stop_server
from samclip_bundle.manifest import Manifest
from service.settings import DEFAULT_BUNDLE_DIR
from training.data.shapes import Scene, make_scene

SCENE_SEED = 9  # a green triangle, a blue square, a blue circle and a red square on a plain background


@pytest.fixture(scope="package")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of `python -m service` on the demo bundle, SAMCLIP_API_KEY set."""
    if not Manifest.exists(DEFAULT_BUNDLE_DIR):
        pytest.skip("demo bundle not built (python -m training.demo)")
    env = {"SAMCLIP_API_KEY": API_KEY, "SAMCLIP_BACKEND": "onnxruntime", "SAMCLIP_LOG_LEVEL": "WARNING"}
    proc, url = serve_ready(DEFAULT_BUNDLE_DIR, env, tmp_path_factory.mktemp("demo_server"))
    yield url
    stop_server(proc, 30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium for one test module. Module scope on purpose: the sync Playwright API keeps an asyncio
    loop running on this thread while it lives, and every asyncio-based test run after it on the same worker
    would fail ("asyncio.run() cannot be called from a running event loop")."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (deploy/tools/install_ci_tools.sh --system installs chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def demo(browser: Any, demo_server: str) -> Iterator[DemoPage]:
    """The demo page with the API key typed in. Fails the test on any page error or console error (a CSP
    violation, a failed request), except HTTP errors a test provokes on purpose (`allow_http_errors`)."""
    context = browser.new_context(viewport={"width": 1280, "height": 800}, accept_downloads=True)
    page = context.new_page()
    demo = DemoPage(page, Recorder(page), demo_server)
    page.on("pageerror", lambda exc: demo.problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: msg.type == "error" and demo.problems.append(f"console: {msg.text}"))
    page.goto(demo_server + "/")
    page.wait_for_selector("body[data-ready='1']", state="attached")
    page.fill("[data-testid=api-key]", API_KEY)
    yield demo
    context.close()
    http = "Failed to load resource: the server responded with a status of"
    problems = [p for p in demo.problems if not (demo.allow_http_errors and http in p)]
    assert not problems, problems


@pytest.fixture(scope="package")
def scene() -> Scene:
    return make_scene(SCENE_SEED, min_objects=3, max_objects=4)


@pytest.fixture(scope="package")
def scene_png(scene: Scene, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("scene") / "shapes.png"
    buf = io.BytesIO()
    Image.fromarray(scene.image).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())
    return path


@pytest.fixture
def opened(demo: DemoPage, scene_png: Path) -> DemoPage:
    """The demo page with the scene opened through the file input (and embedded)."""
    demo.page.set_input_files("[data-testid=image-input]", str(scene_png))
    sha = hashlib.sha256(scene_png.read_bytes()).hexdigest()
    demo.page.wait_for_selector(f"body[data-image-id='{sha}']", state="attached")
    demo.page.wait_for_selector(IDLE, state="attached")
    return demo
