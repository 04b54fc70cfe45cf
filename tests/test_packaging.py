"""Packaging: one import name (`boothstudio`), and a light SDK distribution users can install.

- every module imports the project as `boothstudio.*` (never a top-level `shared`, `services`
  or `clients`, which would collide with other projects in site-packages);
- the package lists of both distributions match the folders on disk, and the light one keeps
  the full one's version and dependencies;
- the `boothstudio-sdk` wheel, installed into a fresh virtualenv (no torch), drives real
  services: `from boothstudio import BoothStudio` lists models and generates an image, and the
  `boothstudio` command runs.

Rerun: `.venv/bin/pytest tests/test_packaging.py -v`
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import tomllib
import venv
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import ROOT, ServiceProcess
from tools.build_sdk import build_sdk_wheel

FOLDERS = {"shared": "boothstudio.shared", "services": "boothstudio.services",
           "clients": "boothstudio.clients"}


def project(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        return tomllib.load(f)


def packages_on_disk() -> set[str]:
    found = {"boothstudio", "boothstudio.v1"}
    for folder, name in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            if "gen" in parts or "build" in parts:
                continue
            found.add(".".join((name, *parts)))
    return found


def test_every_module_imports_the_project_by_its_one_name_and_never_the_lab() -> None:
    tracked = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    offenders = []
    for name in tracked:
        if name.startswith("shared/gen/"):
            continue
        tree = ast.parse((ROOT / name).read_text(), name)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            elif isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            else:
                continue
            offenders += [f"{name}:{node.lineno} {m}" for m in modules
                          if m.split(".")[0] in FOLDERS]
            # the product never depends on the lab (research/ is in neither distribution)
            if name.split("/")[0] in FOLDERS:
                offenders += [f"{name}:{node.lineno} {m}" for m in modules
                              if m.split(".")[0] == "research"]
    assert offenders == []


def test_package_lists_match_the_folders_and_the_sdk_follows_the_full_distribution() -> None:
    full = project(ROOT / "pyproject.toml")
    sdk = project(ROOT / "clients" / "pyproject.toml")
    assert set(full["tool"]["setuptools"]["packages"]) == packages_on_disk()
    light = {p for p in packages_on_disk() if not p.startswith("boothstudio.services")}
    assert set(sdk["tool"]["setuptools"]["packages"]) == light
    assert sdk["project"]["version"] == full["project"]["version"]
    assert sdk["project"]["dependencies"] == full["project"]["dependencies"]
    assert sdk["project"]["scripts"] == full["project"]["scripts"]


SDK_SCRIPT = """
import importlib.util, json, sys
from boothstudio import BoothStudio, InvalidArgument

catalog, generator = sys.argv[1:3]
with BoothStudio(catalog=catalog, generator=generator, trainer=catalog) as client:
    models = [m.id for m in client.list_models()]
    images = client.generate("a red circle on a blue background", seed=7, steps=2)
    try:
        client.generate("a red circle", steps=1000)
        refused = []
    except InvalidArgument as err:
        refused = err.fields
print(json.dumps({
    "models": models, "seeds": images.seeds, "png": images[0].png[:4].hex(),
    "refused": refused,
    "torch": importlib.util.find_spec("torch") is not None,
    "services": importlib.util.find_spec("boothstudio.services") is not None,
}))
"""


@pytest.fixture(scope="module")
def sdk_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with only the boothstudio-sdk wheel (and what it depends on)."""
    base = tmp_path_factory.mktemp("sdk")
    wheel = build_sdk_wheel(base / "dist")
    env_dir = base / "venv"
    venv.create(env_dir, with_pip=True)
    subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet",
                    str(wheel)], check=True, timeout=600)
    return env_dir


def test_the_sdk_wheel_drives_real_services_without_torch(
    sdk_venv: Path, module_services: Any, tmp_path: Path
) -> None:
    catalog: ServiceProcess = module_services("catalog")
    generator: ServiceProcess = module_services(
        "generator", env={"BOOTHSTUDIO_CATALOG_ADDRESS": catalog.address}
    )
    python = sdk_venv / "bin" / "python"
    # run outside the repository, so nothing of the checkout can be imported by accident
    done = subprocess.run([str(python), "-c", SDK_SCRIPT, catalog.address, generator.address],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert "boothstudio-tiny" in result["models"]
    assert result["seeds"] == [7] and result["png"] == "89504e47"
    assert result["refused"] == ["steps"]
    assert result["torch"] is False and result["services"] is False
    cli = subprocess.run([str(sdk_venv / "bin" / "boothstudio"), "--catalog", catalog.address,
                          "--json", "models", "list"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert "boothstudio-tiny" in cli.stdout
    # `serve` needs the services: the light install says how to get them instead of crashing
    serve = subprocess.run([str(sdk_venv / "bin" / "boothstudio"), "serve", "--data-dir",
                            str(tmp_path / "data")],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert serve.returncode == 1 and "boothstudio[services]" in serve.stderr, serve.stderr


def test_serve_finds_the_installed_services_from_any_folder(tmp_path: Path) -> None:
    """The check once looked for a top-level `services` package, which only the repository's
    own folder provided: an installed boothstudio[services] was told it had no services."""
    probe = ("from boothstudio.clients.sdk.cli.serve import _importable; "
             "print(_importable('boothstudio.services'), _importable('services'))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.split() == ["True", "False"], done.stderr
