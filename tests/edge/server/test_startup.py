"""What `edge serve` imports before its first answer: FastAPI without its OpenAPI validators built
or pydantic.v1 imported, and those still working when something does use them."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
from edge.server import import_fastapi
import_fastapi()
import fastapi.openapi.models as m
assert not m.OpenAPI.__pydantic_complete__, "OpenAPI's validator was built at import"
from edge.config import Settings
from edge.server.app import create_app
create_app(Settings(), opener=lambda *a, **k: None)
assert "pydantic.v1" not in sys.modules, "route registration imported pydantic.v1"
doc = m.OpenAPI.model_validate({"openapi": "3.1.0", "info": {"title": "t", "version": "1"}, "paths": {}})
assert doc.info.title == "t"
from fastapi._compat import shared
from pydantic import v1
class Old(v1.BaseModel):
    x: int
assert shared.is_pydantic_v1_model_class(Old) and not shared.is_pydantic_v1_model_class(int)
print("ok")
"""


def test_serve_imports_fastapi_without_openapi_validators_or_pydantic_v1():
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


UVICORN_PROBE = """
import sys
from edge.lightimport import submodule
config = submodule("uvicorn", "config")
import uvicorn.lifespan.on  # what uvicorn's startup imports: `from uvicorn import Config`
from uvicorn import Config, Server
assert Config is config.Config and Server is submodule("uvicorn", "server").Server
assert "uvicorn.main" not in sys.modules and "click" not in sys.modules, "uvicorn's command line was imported"
import uvicorn
assert callable(uvicorn.run) and "uvicorn.main" in sys.modules  # any other name: the real __init__
print("ok")
"""


def test_uvicorn_starts_without_importing_its_command_line():
    r = subprocess.run([sys.executable, "-c", UVICORN_PROBE], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


FIRST_REQUEST_PROBE = """
import warnings
import fastapi  # before edge.server.import_fastapi, as when the app is made inside another program
from fastapi.testclient import TestClient
from edge.config import Settings
from edge.server.app import create_app
with warnings.catch_warnings(record=True) as seen:
    client = TestClient(create_app(Settings(), opener=lambda *a, **k: None), base_url="http://127.0.0.1")
    r = client.post("/v1/chat/completions", json={"model": "none-such", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404, r.text  # the body was validated (its deferred schema built), then the model looked up
print([str(w.message)[:80] for w in seen if "pydantic" in str(w.category)])
"""


def test_the_first_request_prints_no_pydantic_warning():
    """Request models build their validators at the first request (defer_build); FastAPI's body adapters
    then warn about an alias that FastAPI itself silences when it builds them eagerly."""
    r = subprocess.run(
        [sys.executable, "-W", "default", "-c", FIRST_REQUEST_PROBE], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and r.stdout.strip() == "[]", (r.stdout, r.stderr)
    assert "UnsupportedFieldAttributeWarning" not in r.stderr
