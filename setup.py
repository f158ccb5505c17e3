"""Packaging hook: copy the root-level resources into the wheel, as `generator/_data/`.

The project keeps `templates/`, `site_src/`, `prompt_sets/` and `mkdocs.yml` at the repository
root, outside the `generator` package, and a wheel installs only packages. `build_py` copies each
name of `generator.resources.PACKAGED` into `generator/_data/` of the build, where
`generator.resources.resource_path` finds it once installed. Editable installs skip the copy:
they read the checkout's own files. Everything else about the package is in pyproject.toml.
"""

import importlib.util
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


def _resources():
    # Loaded by path: importing the `generator` package here would need its dependencies.
    spec = importlib.util.spec_from_file_location("_atlas_resources",
                                                  ROOT / "generator" / "resources.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class BuildPyWithResources(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        res = _resources()
        dest = Path(self.build_lib) / "generator" / res.DATA_DIR
        shutil.rmtree(dest, ignore_errors=True)
        for name in res.PACKAGED:
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, dest / name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))
            elif src.is_file():
                dest.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / name)
            else:
                raise FileNotFoundError(f"{src}: a resource the package needs is missing "
                                        f"(generator/resources.py PACKAGED)")


setup(cmdclass={"build_py": BuildPyWithResources})
