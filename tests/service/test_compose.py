"""docker-compose.yml and the Dockerfile, checked without a Docker engine (structure, not a schema validator)."""

from __future__ import annotations

import json
import re
import shlex

import yaml

from service.framing import HTTP_ARG
from tests.worker.conftest import ROOT

SERVICE_KEYS = {"image", "build", "command", "environment", "ports", "depends_on", "healthcheck", "restart", "volumes",
                "deploy", "stop_signal", "stop_grace_period"}


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_structure():
    c = compose()
    assert set(c) <= {"name", "services", "volumes", "x-glimpse-env"}
    services = c["services"]
    assert set(services) == {"redis", "api", "worker"}
    for name, s in services.items():
        assert set(s) <= SERVICE_KEYS, (name, set(s) - SERVICE_KEYS)
        assert "container_name" not in s  # would block --scale
        for dep, cond in (s.get("depends_on") or {}).items():
            assert dep in services and cond["condition"] in ("service_started", "service_healthy")
    for v in services["redis"]["volumes"]:
        assert v.split(":")[0] in c["volumes"]


def test_redis_durable_and_never_evicts():
    r = compose()["services"]["redis"]
    assert re.match(r"redis:7(\.|$)", r["image"])
    cmd = r["command"]
    assert cmd[0] == "redis-server"
    assert cmd[cmd.index("--appendonly") + 1] == "yes"
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert re.fullmatch(r"\d+[gm]b", cmd[cmd.index("--maxmemory") + 1])  # a memory budget: docs/api.md "Limits"
    assert r["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")


def test_api_and_worker_commands_and_env():
    s = compose()["services"]
    for name in ("api", "worker"):
        assert s[name]["build"] == "." and (ROOT / "Dockerfile").is_file()
        assert s[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert s["api"]["command"][:5] == ["uvicorn", "--factory", "service.main:create_app", "--http", HTTP_ARG]
    assert "8000:8000" in s["api"]["ports"]
    assert s["worker"]["command"] == ["python", "-m", "worker"]
    assert "ports" not in s["worker"]  # scalable: no host port to collide on


def test_worker_reserves_a_gpu():
    dev = compose()["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert dev == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_dockerfile_builds_what_compose_runs():
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines() if ln.strip()
             and not ln.strip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    runs = " ".join(ln for ln in lines if ln.startswith("RUN "))
    assert "pip install torch==2.13.0" in runs
    assert runs.index("torch==2.13.0") < runs.index("pip install .")
    for pkg in ("fastapi", "uvicorn", "prometheus-client"):
        assert pkg in runs
    for ln in lines:
        if ln.startswith("COPY "):
            for src in shlex.split(ln)[1:-1]:
                assert (ROOT / src).exists(), f"COPY source {src} missing"
    cmd = next(ln for ln in lines if ln.startswith("CMD "))
    assert json.loads(cmd.removeprefix("CMD "))[:5] == ["uvicorn", "--factory", "service.main:create_app", "--http",
                                                        HTTP_ARG]  # the problem protocol, as compose and serve run
