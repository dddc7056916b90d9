"""What `pip install contactsync` puts on a machine: one top-level package, and the runtime
dependencies of the product only (the tests' and the development tooling's needs are extras)."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from email.message import Message
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(".venv", ".git", "tests", "bench", "deploy", "build", "*.egg-info",
                              "__pycache__", ".contactsync", ".*_cache")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    """The wheel built from a copy of the checkout (a build writes build/ and *.egg-info)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"
    shutil.copytree(ROOT, source, symlinks=True, ignore=SKIP)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp / "dist"), str(source)], check=True, capture_output=True)
    (built,) = (tmp / "dist").glob("contactsync-*.whl")
    return zipfile.ZipFile(built)


def _dist_info(wheel: zipfile.ZipFile, name: str) -> str:
    (path,) = [n for n in wheel.namelist() if n.endswith(f".dist-info/{name}")]
    return wheel.read(path).decode()


def _metadata(wheel: zipfile.ZipFile) -> Message:
    return email.message_from_string(_dist_info(wheel, "METADATA"))


def test_the_wheel_installs_one_top_level_package(wheel: zipfile.ZipFile):
    assert _dist_info(wheel, "top_level.txt").split() == ["contactsync"]
    outside = {n.split("/")[0] for n in wheel.namelist()} - {"contactsync"}
    assert all(top.endswith(".dist-info") for top in outside), outside
    # the design card's folders are inside it, under the contactsync namespace
    for folder in ("schemas", "producers", "consumers", "emulators"):
        assert f"contactsync/{folder}/__init__.py" in wheel.namelist()


def test_testcontainers_and_the_emulators_needs_are_extras_not_runtime_dependencies(
        wheel: zipfile.ZipFile):
    requires = _metadata(wheel).get_all("Requires-Dist") or []
    runtime = [r for r in requires if "extra ==" not in r]
    assert not [r for r in runtime if r.startswith(("testcontainers", "cryptography"))], runtime
    assert 'testcontainers>=4.0; extra == "dev"' in requires
    assert 'cryptography>=42; extra == "sandbox"' in requires
    assert "sandbox" in (_metadata(wheel).get_all("Provides-Extra") or [])
