"""Generate Python code (+ mypy stubs) from protos/ into shared/gen/ (or another folder).

Usage: python tools/gen_protos.py [OUT_DIR]
       python tools/gen_protos.py --check   # exit 1 when shared/gen is stale
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGE = Path("boothstudio") / "v1"


def generate(out_dir: Path) -> None:
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"
    target = out_dir / PACKAGE
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in (PROTO_ROOT / PACKAGE).glob("*.proto"))
    # protoc plugins (protoc-gen-mypy, protoc-gen-mypy_grpc) live beside the interpreter.
    env_path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    os.environ["PATH"] = env_path
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out={out_dir}",
        f"--mypy_grpc_out={out_dir}",
        *protos,
    ]
    cwd = os.getcwd()
    os.chdir(PROTO_ROOT)
    try:
        rc = protoc.main(args)
    finally:
        os.chdir(cwd)
    if rc != 0:
        raise SystemExit(f"protoc failed with exit code {rc}")
    # Only the v1 package is generated: the `boothstudio` root package is boothstudio/ at the
    # repository root, where boothstudio/v1 links here.
    doc = '"""Generated from protos/boothstudio. Do not edit: run `make protos`."""\n'
    (target / "__init__.py").write_text(doc)


def stale_files(committed: Path) -> list[str]:
    """Regenerate into a temporary folder and list files that differ from `committed`."""
    import filecmp
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        generate(fresh)
        names = {
            str(p.relative_to(base))
            for base in (fresh, committed)
            for p in (base / "boothstudio").rglob("*")
            if p.is_file() and "__pycache__" not in p.parts
        }
        return sorted(
            n
            for n in names
            if not (fresh / n).exists()
            or not (committed / n).exists()
            or not filecmp.cmp(fresh / n, committed / n, shallow=False)
        )


def main(argv: list[str]) -> int:
    default = ROOT / "shared" / "gen"
    if argv and argv[0] == "--check":
        stale = stale_files(default)
        if stale:
            print("generated code is stale; run `make protos`:", *stale, sep="\n  ")
            return 1
        print("generated code is up to date")
        return 0
    generate(Path(argv[0]) if argv else default)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
