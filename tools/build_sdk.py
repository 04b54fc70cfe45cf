"""Build the light `boothstudio-sdk` wheel (clients/pyproject.toml) into a folder.

    python tools/build_sdk.py [--out dist]

The build runs on a copy of the folders the wheel takes its files from (boothstudio/, shared/,
clients/), so setuptools' build/ and egg-info never land inside the clients package.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("boothstudio", "shared", "clients")


def build_sdk_wheel(out: Path) -> Path:
    """The path of the built wheel, in `out`."""
    out.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "build", "*.egg-info", ".mypy_cache")
    with tempfile.TemporaryDirectory(prefix="boothstudio-sdk-") as tmp:
        for folder in FOLDERS:
            shutil.copytree(ROOT / folder, Path(tmp) / folder, symlinks=True, ignore=ignore)
        built = Path(tmp) / "wheel"
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
             "--wheel-dir", str(built), str(Path(tmp) / "clients")],
            check=True,
        )
        (wheel,) = built.glob("boothstudio_sdk-*.whl")  # exactly the one just built
        return Path(shutil.copy2(wheel, out))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "dist")
    print(build_sdk_wheel(parser.parse_args().out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
