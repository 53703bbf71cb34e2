"""The built wheels, each installed alone into a fresh virtual environment, as a user would.

Every workspace distribution is built once (``uv build --all-packages --wheel``, as ``make dist``
does). Each wheel is then installed by itself into a new venv: the other cloudlog distributions
come from the built wheels (``--find-links``), everything else from the package index through
uv's cache. What it pulls in is checked against what it must not (a Flask app must not get
FastAPI or moto, say), every module of every cloudlog package in it must import, and the README's
Flask example runs in the venv that holds only Flask-CloudLog, against the real pipeline.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
import tomllib
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloudlog_devtools.localpipeline import LocalPipeline
from tests.conftest import read_stream, wait_for

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
UV = Path(sys.executable).with_name("uv")
DEVTOOLS = "cloudlog-devtools"
# Top-level import names the split retired: no wheel may bring them back.
RETIRED_TOP_LEVEL = {"clients", "services", "cloudlog"}

# Distributions that are deployed, and what each must not pull in. moto, the emulator, is for
# development only: no deployable distribution may depend on it, nor on cloudlog-devtools.
NEVER_DEPLOYED = {"moto", DEVTOOLS}
FORBIDDEN: dict[str, set[str]] = {
    "cloudlog-core": set(),
    "cloudlog-wire": set(),
    "cloudlog-writer": set(),
    # Any Python process: no web framework, and its integrations (structlog, OpenTelemetry)
    # are optional extras, never pulled in.
    "cloudlog-logging": {
        "flask",
        "flask-cloudlog",
        "fastapi",
        "uvicorn",
        "starlette",
        "structlog",
        "opentelemetry-api",
        "opentelemetry-sdk",
        "prometheus-client",
        "cloudlog-ingest",
        "cloudlog-writer",
        "cloudlog-worker",
        "cloudlog-cli",
    },
    "flask-cloudlog": {
        "fastapi",
        "uvicorn",
        "starlette",
        "cloudlog-ingest",
        "cloudlog-writer",
        "cloudlog-worker",
        "cloudlog-cli",
    },
    "cloudlog-ingest": {"flask", "flask-cloudlog", "celery"},
    "cloudlog-worker": {"flask", "flask-cloudlog", "fastapi", "uvicorn", "cloudlog-ingest"},
    "cloudlog-cli": {"flask", "flask-cloudlog"},
}
DEPLOYABLE = sorted(FORBIDDEN)

# Run in a venv: import every module of the given packages (but no ``__main__``, which would run
# the command), and say where each package was imported from.
IMPORT_ALL = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys
    failed, files = {}, {}
    for top in sys.argv[1:]:
        package = importlib.import_module(top)
        files[top] = package.__file__
        for info in pkgutil.walk_packages(package.__path__, top + "."):
            if info.name.rsplit(".", 1)[-1] == "__main__":
                continue
            try:
                importlib.import_module(info.name)
            except Exception as exc:
                failed[info.name] = repr(exc)
    print(json.dumps({"failed": failed, "files": files}))
    """
)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment for a child in a venv: nothing of the dev venv or of this checkout."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "UV_PROJECT_ENVIRONMENT")
    }
    env.update(extra)
    return env


def run(
    args: list[str | Path],
    *,
    cwd: Path,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(arg) for arg in args],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result


@dataclass(frozen=True)
class Wheel:
    dist: str  # canonical distribution name
    path: Path
    top_level: frozenset[str]  # the top-level names in the zip, less the .dist-info folder


@dataclass(frozen=True)
class Venv:
    root: Path
    python: Path
    installed: dict[str, str]  # canonical name -> version


def workspace_members() -> dict[str, str]:
    """Canonical distribution name -> version, from each workspace member's pyproject.toml."""
    root = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    members: dict[str, str] = {}
    for member in root["tool"]["uv"]["workspace"]["members"]:
        project = tomllib.loads((REPO_ROOT / member / "pyproject.toml").read_text())["project"]
        members[canonical(project["name"])] = project["version"]
    return members


@pytest.fixture(scope="module")
def wheels_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheels")
    run(
        [UV, "build", "--all-packages", "--wheel", "--out-dir", out],
        cwd=REPO_ROOT,
        env=clean_env(UV_PROJECT_ENVIRONMENT=str(REPO_ROOT / ".venv")),
        timeout=300,
    )
    return out


@pytest.fixture(scope="module")
def wheels(wheels_dir: Path) -> dict[str, Wheel]:
    found: dict[str, Wheel] = {}
    for path in sorted(wheels_dir.glob("*.whl")):
        with zipfile.ZipFile(path) as archive:
            tops = {name.split("/", 1)[0] for name in archive.namelist()}
        tops = {top for top in tops if not top.endswith((".dist-info", ".data"))}
        dist = canonical(path.name.split("-", 1)[0])
        found[dist] = Wheel(dist, path, frozenset(tops))
    return found


@pytest.fixture(scope="module")
def install(
    wheels_dir: Path, wheels: dict[str, Wheel], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], Venv]]:
    """``install(dist)``: a fresh venv holding that wheel and its dependencies, made once."""
    made: dict[str, Venv] = {}
    work = tmp_path_factory.mktemp("venvs")

    def make(dist: str) -> Venv:
        if dist in made:
            return made[dist]
        root = work / dist
        run([UV, "venv", "--quiet", "--python", sys.executable, root], cwd=work)
        python = root / "bin" / "python"
        run(
            [UV, "pip", "install", "--python", python, "--find-links", wheels_dir, dist],
            cwd=work,
        )
        listed = json.loads(
            run([UV, "pip", "list", "--python", python, "--format", "json"], cwd=work).stdout
        )
        venv = Venv(root, python, {canonical(p["name"]): p["version"] for p in listed})
        made[dist] = venv
        return venv

    yield make


def test_every_workspace_member_builds_one_wheel_without_retired_top_level_packages(
    wheels: dict[str, Wheel],
) -> None:
    assert set(wheels) == set(workspace_members())
    for wheel in wheels.values():
        assert not wheel.top_level & RETIRED_TOP_LEVEL, (wheel.path.name, sorted(wheel.top_level))
        assert all(top.isidentifier() for top in wheel.top_level), sorted(wheel.top_level)


@pytest.mark.parametrize("dist", DEPLOYABLE)
def test_a_deployable_wheel_installed_alone_pulls_in_nothing_it_must_not_and_imports(
    dist: str, install: Callable[[str], Venv], wheels: dict[str, Wheel]
) -> None:
    venv = install(dist)
    members = workspace_members()
    assert venv.installed[dist] == members[dist]

    forbidden = (FORBIDDEN[dist] | NEVER_DEPLOYED) & set(venv.installed)
    assert not forbidden, f"{dist} pulls in {sorted(forbidden)}: {sorted(venv.installed)}"

    # The cloudlog distributions in the venv are the ones just built, not namesakes from the
    # index: same version, and every file of the wheel installed byte for byte.
    ours = sorted(set(venv.installed) & set(members))
    purelib = Path(
        run(
            [venv.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            cwd=venv.root,
        ).stdout.strip()
    )
    for name in ours:
        assert venv.installed[name] == members[name], name
        with zipfile.ZipFile(wheels[name].path) as archive:
            for entry in archive.namelist():
                if entry.endswith("/") or entry.split("/", 1)[0].endswith(".dist-info"):
                    continue
                assert (purelib / entry).read_bytes() == archive.read(entry), (name, entry)

    tops = sorted(top for name in ours for top in wheels[name].top_level)
    report = json.loads(run([venv.python, "-c", IMPORT_ALL, *tops], cwd=venv.root).stdout)
    assert report["failed"] == {}, report["failed"]
    for top, file in report["files"].items():
        assert Path(file).is_relative_to(purelib), (top, file)


def test_the_devtools_wheel_is_the_one_that_brings_moto(install: Callable[[str], Venv]) -> None:
    """The other side of "no deployable wheel pulls in moto": the check would see it."""
    venv = install(DEVTOOLS)
    assert "moto" in venv.installed
    run([venv.python, "-c", "import cloudlog_devtools.emulator"], cwd=venv.root)


def test_the_cli_wheel_gives_the_cloudlog_command_with_its_version(
    install: Callable[[str], Venv],
) -> None:
    venv = install("cloudlog-cli")
    version = workspace_members()["cloudlog-cli"]
    result = run([venv.root / "bin" / "cloudlog", "--version"], cwd=venv.root)
    assert result.stdout.strip().endswith(f"version {version}"), result.stdout


# The README's "Using it in a Flask app", as a user's file: the example itself, then the other
# loggers of the app shipped through the logging configuration the README shows.
README_APP = textwrap.dedent(
    """
    import json
    import logging.config
    import sys

    from flask import Flask
    from flask_cloudlog import CloudLog

    app = Flask(__name__)
    app.config["CLOUDLOG_LOG_GROUP"] = sys.argv[1]
    cloudlog = CloudLog(app)  # or CloudLog() and later cloudlog.init_app(app)

    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {"cloudlog": {"class": "flask_cloudlog.CloudLogHandler"}},
            "root": {"level": "INFO", "handlers": ["cloudlog"]},
        }
    )

    token = sys.argv[2]
    for name in ("services.billing", "clients.api", "app.celery"):
        logging.getLogger(name).info("%s from %s", token, name)

    state = app.extensions["cloudlog"]
    flushed = state.flush(10)
    import flask_cloudlog

    print(json.dumps({"flushed": flushed, "stats": state.stats(), "file": flask_cloudlog.__file__}))
    """
)


def test_the_readme_flask_example_ships_other_loggers_from_a_venv_with_only_flask_cloudlog(
    install: Callable[[str], Venv],
    pipeline: LocalPipeline,
    logs_client: Any,
    tmp_path: Path,
) -> None:
    venv = install("flask-cloudlog")
    assert not {"cloudlog-devtools", "cloudlog-cli", "moto"} & set(venv.installed)
    group = f"shop/web-{uuid.uuid4().hex[:8]}"
    stream = "readme-1"
    token = f"readme-{uuid.uuid4().hex[:8]}"
    (tmp_path / "shop.py").write_text(README_APP)

    result = run(
        [venv.python, "shop.py", group, token],
        cwd=tmp_path,
        env=clean_env(
            CLOUDLOG_AWS_ENDPOINT_URL=pipeline.emulator_url,
            CLOUDLOG_LOG_STREAM=stream,
            AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1",
        ),
        timeout=60,
    )
    shipped = json.loads(result.stdout.strip().splitlines()[-1])
    assert Path(shipped["file"]).is_relative_to(venv.root), shipped["file"]
    assert shipped["flushed"], shipped["stats"]

    loggers = ("services.billing", "clients.api", "app.celery")
    stored = pipeline.stored_group(group)

    def arrived() -> list[dict[str, Any]]:
        documents = [json.loads(e["message"]) for e in read_stream(logs_client, stored, stream)]
        found = {doc["logger"] for doc in documents if doc["message"].startswith(token)}
        return documents if found >= set(loggers) else []

    wait_for(arrived, timeout=30, what=f"the three lines in {stored}/{stream}")
    time.sleep(1.0)  # a duplicate delivered late would be here by now
    documents = arrived()
    for name in loggers:
        matching = [doc for doc in documents if doc["message"] == f"{token} from {name}"]
        assert len(matching) == 1, (name, documents)
        assert matching[0]["logger"] == name
        assert matching[0]["level"] == "info"
    assert len(documents) == len(loggers), documents
    assert shipped["stats"]["dropped_events"] == 0, shipped["stats"]
