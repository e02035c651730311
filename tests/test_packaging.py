"""The package as a user gets it: `python -m build` makes an sdist and a wheel; the wheel installed into a fresh
virtual environment runs `mailpush --version`, `mailpush analyze` on a sample capture, creates its database schema
(the Alembic migrations are shipped) and serves the web pages (templates and static files are shipped).

The fresh environment gets only the wheel installed; the third-party dependencies (pandas, matplotlib, ...) are
borrowed from the test's own environment through a .pth file, so the test is quick and works offline. That .pth
adds a plain directory to sys.path: the development checkout's editable install is *not* activated, and the test
checks that `analyzer` is imported from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest
from conftest import wait_until_healthy

from analyzer import __version__

ROOT = Path(__file__).resolve().parent.parent
SOURCE_FILES = ("setup.cfg", "setup.py", "pyproject.toml", "README.md", "COPYING")
# The C extensions: sources in the sdist, compiled modules in the (platform-specific) wheel
EXTENSION_SOURCES = {"analyzer/ingest/_recordwalk.c", "analyzer/dissect/_prefilter.c"}
EXTENSION_MODULES = ("analyzer.ingest._recordwalk", "analyzer.dissect._prefilter")

pytestmark = pytest.mark.slow


def package_files() -> set[str]:
    """Every source file of the analyzer package in the source tree (an editable install or ``build_ext
    --inplace`` leaves the compiled extensions there too: build outputs, not sources)."""
    return {str(p.relative_to(ROOT)) for p in (ROOT / "analyzer").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".pyc", ".so", ".pyd")}


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> Path:
    """sdist and wheel built from a copy of the sources (the checkout gets no build/ or egg-info)."""
    work = tmp_path_factory.mktemp("build")
    src = work / "src"
    shutil.copytree(ROOT / "analyzer", src / "analyzer",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so", "*.pyd"))
    for name in SOURCE_FILES:
        shutil.copy(ROOT / name, src / name)
    # --no-isolation: the build backend (setuptools, wheel) from this environment, no download
    r = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(work / "dist"), str(src)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return work / "dist"


@pytest.fixture(scope="module")
def fresh_venv(dist, tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("venv") / "v"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    purelib = Path(subprocess.run([str(venv / "bin" / "python"), "-c",
                                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    (purelib / "_mailpush_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    wheel = next(dist.glob("mailpush-*.whl"))
    r = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet",
                        str(wheel)], capture_output=True, text=True, timeout=300, env=_clean_env())
    assert r.returncode == 0, r.stderr
    return venv


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def _run(venv: Path, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / args[0]), *args[1:]], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=_clean_env())


def test_build_makes_sdist_and_wheel_holding_every_package_file(dist):
    sdists, wheels = list(dist.glob("mailpush-*.tar.gz")), list(dist.glob("mailpush-*.whl"))
    assert [p.name for p in sdists] == [f"mailpush-{__version__}.tar.gz"]
    # the compiled extensions make the wheel CPython- and platform-specific
    assert len(wheels) == 1 and wheels[0].name.startswith(f"mailpush-{__version__}-cp3"), wheels
    assert not wheels[0].name.endswith("-none-any.whl")
    expected = package_files()
    assert {"analyzer/web/templates/base.html", "analyzer/web/static/style.css",
            "analyzer/web/migrations/env.py", "analyzer/web/migrations/script.py.mako",
            "analyzer/web/migrations/versions/0001_baseline.py"} | EXTENSION_SOURCES <= expected
    in_wheel = set(zipfile.ZipFile(wheels[0]).namelist())
    assert expected - EXTENSION_SOURCES - in_wheel == set()
    for module in EXTENSION_MODULES:
        stem = module.replace(".", "/") + "."
        assert [n for n in in_wheel if n.startswith(stem) and n.endswith(".so")], (module, sorted(in_wheel))
    with tarfile.open(sdists[0]) as tar:
        prefix = f"mailpush-{__version__}/"
        in_sdist = {n.removeprefix(prefix) for n in tar.getnames()}
    assert expected - in_sdist == set() and set(SOURCE_FILES) <= in_sdist
    assert not [n for n in in_sdist if n.endswith((".so", ".pyd"))]
    metadata = zipfile.ZipFile(wheels[0]).read(f"mailpush-{__version__}.dist-info/METADATA").decode()
    assert "Requires-Dist: alembic" in metadata and "extra == \"postgres\"" in metadata and "psycopg" in metadata


def test_installed_wheel_runs_version_and_analyze_on_a_sample(fresh_venv, tmp_path, captures_dir):
    where = _run(fresh_venv, "python", "-c", "import analyzer; print(analyzer.__file__)", cwd=tmp_path)
    assert where.returncode == 0 and where.stdout.startswith(str(fresh_venv)), where.stdout + where.stderr
    compiled = _run(fresh_venv, "python", "-c", "import importlib; print(' '.join(importlib.import_module(m).__file__ "
                    f"for m in {EXTENSION_MODULES!r}))", cwd=tmp_path)
    assert compiled.returncode == 0, compiled.stderr
    assert all(f.startswith(str(fresh_venv)) and f.endswith(".so") for f in compiled.stdout.split()), compiled.stdout
    version = _run(fresh_venv, "mailpush", "--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"mailpush {__version__}"

    entry = next(e for e in json.loads((captures_dir / "manifest.json").read_text())
                 if e["file"] == "push_working.pcap")
    r = _run(fresh_venv, "mailpush", "analyze", str(captures_dir / entry["file"]), "--format", "json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["version"] == __version__
    capture = doc["captures"][0]
    got = [(c["client"], c["verdict"], c["cause"]) for c in capture["clients"]]
    assert got == [(c["client"], c["verdict"], c["cause"]) for c in entry["clients"]]
    html = _run(fresh_venv, "mailpush", "analyze", str(captures_dir / entry["file"]), "--format", "html",
                "-o", str(tmp_path / "report.html"), cwd=tmp_path)
    assert html.returncode == 0, html.stderr
    assert entry["clients"][0]["cause"] in (tmp_path / "report.html").read_text()


def test_installed_wheel_creates_its_schema_and_serves_pages_and_static_files(fresh_venv, tmp_path):
    data = tmp_path / "data"
    up = _run(fresh_venv, "mailpush", "db", "upgrade", "--data-dir", str(data), cwd=tmp_path)
    assert up.returncode == 0 and "from empty to" in up.stdout, up.stdout + up.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(fresh_venv / "bin" / "mailpush"), "serve", "--port", str(port), "--data-dir",
                             str(data), "--workers", "0"], cwd=tmp_path, env=_clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(proc, url, timeout=60)
        login = httpx.get(url + "/login")
        assert login.status_code == 200 and 'name="token"' in login.text  # a Jinja2 template of the wheel
        css = httpx.get(url + "/static/style.css")
        assert css.status_code == 200 and css.headers["content-type"].startswith("text/css") and css.text
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
