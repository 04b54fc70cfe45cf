"""Checks on the contracts and the dependency rules.

Rerun: `.venv/bin/pytest tests/test_contracts.py -v`
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from boothstudio.shared.auth import METHOD_ROLES, ROLE_IMPLIES
from boothstudio.v1 import catalog_pb2, generator_pb2, trainer_pb2
from tests.helpers import ROOT, service_env

HEAVY = ("torch", "diffusers", "transformers", "lightning", "pytorch_lightning", "peft")


def find_buf() -> str | None:
    local = Path(sys.executable).parent / "buf"
    return str(local) if local.exists() else shutil.which("buf")


def test_buf_lint_clean() -> None:
    buf = find_buf()
    if buf is None:
        pytest.skip("buf binary not installed (pip install buf-bin, part of the dev extra)")
    res = subprocess.run([buf, "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_generated_code_is_up_to_date() -> None:
    pytest.importorskip("grpc_tools")
    res = subprocess.run(
        [sys.executable, "tools/gen_protos.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr


def all_methods() -> list[str]:
    out = []
    for mod in (catalog_pb2, generator_pb2, trainer_pb2):
        for service in mod.DESCRIPTOR.services_by_name.values():
            out += [f"/{service.full_name}/{m.name}" for m in service.methods]
    return out


def test_every_rpc_has_a_required_role() -> None:
    methods = all_methods()
    assert sorted(methods) == sorted(METHOD_ROLES), "update boothstudio.shared.auth.METHOD_ROLES"
    assert set(METHOD_ROLES.values()) <= set(ROLE_IMPLIES)


def test_api_surface() -> None:
    """The RPCs the foundation issue asks for exist with the intended streaming shapes."""
    gen = generator_pb2.DESCRIPTOR.services_by_name["GeneratorService"].methods_by_name
    assert gen["Generate"].server_streaming and not gen["Generate"].client_streaming
    tr = trainer_pb2.DESCRIPTOR.services_by_name["TrainerService"].methods_by_name
    assert tr["UploadImages"].client_streaming and not tr["UploadImages"].server_streaming
    assert tr["WatchTrainingJob"].server_streaming
    cat = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].methods_by_name
    assert {
        "ListModels",
        "GetModel",
        "ImportModel",
        "DeleteModel",
        "ListSamplers",
        "ListBackends",
    } <= set(cat)
    # seed: "unset" is distinct from 0
    req = generator_pb2.GenerateRequest()
    assert not req.HasField("seed")
    req.seed = 0
    assert req.HasField("seed")
    # every Generate event carries the job id
    assert "job_id" in generator_pb2.GenerateResponse.DESCRIPTOR.fields_by_name
    assert "job_id" in trainer_pb2.WatchTrainingJobResponse.DESCRIPTOR.fields_by_name


# A meta-path finder that makes the heavy packages unimportable, then imports every module
# under the given packages and reports what was loaded.
_IMPORT_ALL = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    BLOCKED = set(sys.argv[1].split(","))

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    imported = []
    for top in sys.argv[2].split(","):
        pkg = importlib.import_module(top)
        imported.append(top)
        for info in pkgutil.walk_packages(pkg.__path__, prefix=top + "."):
            if info.name.endswith(".__main__"):  # entry points run on import
                continue
            importlib.import_module(info.name)
            imported.append(info.name)
    leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not leaked, leaked
    print("\\n".join(imported))
    """
)


def run_import_all(blocked: tuple[str, ...], packages: tuple[str, ...]) -> list[str]:
    res = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, ",".join(blocked), ",".join(packages)],
        cwd=ROOT,
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.split()


def test_clients_import_without_torch() -> None:
    mods = run_import_all(HEAVY, ("boothstudio.clients", "boothstudio.shared", "boothstudio.v1"))
    assert {
        "boothstudio.clients.sdk",
        "boothstudio.clients.tui",
        "boothstudio.shared.server",
    } <= set(mods)
    # the check is meaningful: it walked every module that exists on disk
    on_disk = {
        "boothstudio."
        + ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for top in ("clients", "shared")
        for p in (ROOT / top).rglob("*.py")
        if "gen" not in p.relative_to(ROOT).parts and p.name != "__main__.py"
    }
    assert on_disk <= set(mods), sorted(on_disk - set(mods))


def test_shared_imports_without_torch_or_textual() -> None:
    run_import_all((*HEAVY, "textual", "textual_image", "textual_plotext"), ("boothstudio.shared",))


def test_blocker_really_blocks() -> None:
    """Sanity check of the test itself: importing a blocked package fails."""
    res = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, "yaml", "boothstudio.shared"],
        cwd=ROOT,
        env=service_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode != 0 and "blocked" in res.stderr
