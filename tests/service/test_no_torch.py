"""service/ must run without torch: import the app, routes and the ONNX Runtime backend in a fresh interpreter
where any `torch*` import raises ImportError, load the real tiny bundle and serve requests."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys, time

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0].startswith("torch"):
                raise ImportError(f"torch is blocked in this test: {name}")
            return None

    sys.meta_path.insert(0, BlockTorch())
    try:
        import torch  # noqa: F401
        raise SystemExit("the blocker did not work")
    except ImportError:
        pass

    import io
    import numpy as np
    from PIL import Image
    from fastapi.testclient import TestClient
    import service.routes.classify, service.routes.embed, service.routes.health, service.routes.segment
    import service.runtime.onnxruntime
    from service.main import create_app
    from service.settings import Settings

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)).save(buf, "PNG")
    with TestClient(create_app(Settings(bundle=sys.argv[1]))) as client:
        deadline = time.monotonic() + 120
        while client.get("/readyz").json()["status"] == "loading" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/readyz").status_code == 200, client.get("/readyz").text
        r = client.post("/segment?text=dog", files={"image": ("x.png", buf.getvalue(), "image/png")})
        assert r.status_code == 200, r.text
        assert len(r.json()["masks"]) == 1
        r = client.post("/classify?labels=dog&labels=cat", files={"image": ("x.png", buf.getvalue(), "image/png")})
        assert r.status_code == 200 and r.json()["cached"] is True, r.text
    leaked = sorted(m for m in sys.modules if m.split(".")[0].startswith("torch"))
    assert not leaked, leaked
    print("NO_TORCH_OK")
    """
)


def test_service_serves_without_torch(tiny_bundle: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_bundle)],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "NO_TORCH_OK" in proc.stdout
