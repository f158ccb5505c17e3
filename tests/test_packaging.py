"""The package installs: the wheel carries the root-level resources, and an installed (not
editable) copy builds the demo site from an empty directory.

The wheel is built from a copy of the working tree (tracked and untracked, not ignored files), so
a stale `build/lib/` of an earlier build cannot hide a missing file. Building needs no network
(`--no-build-isolation` with this interpreter's setuptools). The install goes into a fresh venv
that sees this interpreter's site-packages for the dependencies (a `.pth` line; nothing is
downloaded) while the package itself comes from the wheel alone.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

from conftest import REPO

# Loaded by path, as setup.py does; the package's own import would work too, but this is what the
# build sees.
_spec = importlib.util.spec_from_file_location("_resources_under_test",
                                               REPO / "generator" / "resources.py")
resources = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(resources)



def _can_build_wheels() -> bool:
    try:
        from importlib.metadata import version
        major, minor = (int(x) for x in version("setuptools").split(".")[:2])
    except Exception:  # noqa: BLE001 - not installed, or a version string we cannot read
        return False
    return (major, minor) >= (70, 1) or importlib.util.find_spec("wheel") is not None


needs_setuptools = pytest.mark.skipif(
    not _can_build_wheels(), reason="building the wheel offline needs setuptools>=70.1 (or the "
    "`wheel` package) in this venv: pip install -e '.[test]' installs it")


def _source_copy(dest: Path) -> Path:
    """The working tree's files (what a clone plus local edits holds), without build outputs."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    for rel in filter(None, (r.decode() for r in listed)):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    src = _source_copy(root / "src")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--no-index", "-q", "-w", str(root / "dist"), str(src)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (found,) = (root / "dist").glob("model_atlas-*.whl")
    return found


def _resource_files(rel_root: str) -> set[str]:
    """Every file of PACKAGED under the checkout, as paths relative to the repository root."""
    out = set()
    for name in resources.PACKAGED:
        path = REPO / name
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()
                                                and "__pycache__" not in p.parts]
        out |= {rel_root + p.relative_to(REPO).as_posix() for p in files}
    return out


@needs_setuptools
def test_wheel_holds_templates_site_sources_prompt_sets_and_mkdocs_yml(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = _resource_files(f"generator/{resources.DATA_DIR}/")
    assert expected - names == set(), "resources missing from the wheel"
    # The lists are not empty by accident: each kind of file the site needs is in there.
    for must in ("templates/prompt.md.j2", "site_src/assets/atlas.js", "prompt_sets/facts.yaml",
                 "mkdocs.yml"):
        assert f"generator/_data/{must}" in names
    assert "generator/resources.py" in names and "generator/cli.py" in names
    # The tokenize page's vendored library and its licence (generator/tokenize_page.py).
    from generator.tokenize_page import LIBRARY
    for vendored in (LIBRARY.file, LIBRARY.licence):
        assert f"generator/assets/vendor/{vendored}" in names


@needs_setuptools
def test_sdist_carries_the_same_resources(tmp_path):
    # An index install of the sdist builds the wheel from it: MANIFEST.in must take them along.
    src = _source_copy(tmp_path / "src")
    proc = subprocess.run([sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path / "dist")],
                          cwd=src, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (sdist,) = (tmp_path / "dist").glob("model_atlas-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    assert _resource_files("") - names == set()
    assert {"setup.py", "generator/resources.py", "pyproject.toml"} <= names


def test_resource_path_prefers_the_checkout_else_the_installed_copy(tmp_path):
    # An installed layout: site-packages/generator/{resources.py,_data/...}. site-packages may
    # hold another distribution's top-level templates/: it must not be taken for ours.
    site = tmp_path / "site-packages"
    pkg = site / "generator"
    (pkg / "_data" / "templates").mkdir(parents=True)
    (site / "templates").mkdir()
    shutil.copy2(REPO / "generator" / "resources.py", pkg / "resources.py")
    spec = importlib.util.spec_from_file_location("_installed_resources", pkg / "resources.py")
    installed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(installed)
    assert installed.resource_path("templates") == (pkg / "_data" / "templates").resolve()
    with pytest.raises(FileNotFoundError, match="mkdocs.yml"):
        installed.resource_path("mkdocs.yml")
    # The checkout: the root copies, so template edits show without reinstalling.
    assert resources.resource_path("templates") == REPO / "templates"
    assert resources.resource_path("mkdocs.yml") == REPO / "mkdocs.yml"
    with pytest.raises(ValueError, match="templates"):
        resources.resource_path("secrets")


def _overlay_venv(path: Path) -> Path:
    """A fresh venv whose own site-packages comes first and this interpreter's after it (a .pth
    line): the dependencies are found without a download, the package only where installed."""
    venv.EnvBuilder(with_pip=False).create(path)
    python = path / "bin" / "python"
    own = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         capture_output=True, text=True, check=True).stdout.strip()
    Path(own, "deps-from-test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python


@pytest.mark.slow
@needs_setuptools
def test_installed_wheel_builds_the_demo_site_from_an_empty_directory(wheel, tmp_path):
    python = _overlay_venv(tmp_path / "venv")
    # --ignore-installed: the test venv's own (editable) model-atlas is visible through the .pth
    # and would otherwise count as installed already.
    proc = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q",
                           "--no-deps", "--no-index", "--ignore-installed", str(wheel)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    work = tmp_path / "empty"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    where = subprocess.run([python, "-c", "import generator; print(generator.__file__)"], cwd=work,
                           env=env, capture_output=True, text=True, check=True).stdout
    assert Path(where.strip()).is_relative_to(tmp_path / "venv"), where   # the wheel's copy, not REPO's
    proc = subprocess.run([tmp_path / "venv" / "bin" / "model-atlas", "build", "--demo"], cwd=work,
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    site = work / "site"
    # One page of each kind, from the packaged templates, prompt sets and hand-written sources.
    for page in ("index.html", "prompts/facts/moon-landing.html", "sets/facts.html",
                 "models/tiny-random-gpt2.html", "artifact-format.html", "assets/atlas.js"):
        assert (site / page).is_file(), page
    assert "random" in (site / "index.html").read_text(encoding="utf-8").lower()
