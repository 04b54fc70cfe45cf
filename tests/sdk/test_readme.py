"""The README's SDK and CLI examples run against the real services (conftest.py's stack).

The ```python blocks of "## Python SDK" run in order in one namespace (a block right after an
HTML comment starting with "not run in tests" is skipped); each `boothstudio ...` line of the
"## Command line" block runs as a command (except `serve`, tested in test_cli.py, and
`models import` with its placeholder path).
Rerun: `.venv/bin/pytest tests/sdk/test_readme.py -v`
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from tests.helpers import ROOT
from tests.sdk.conftest import Stack, usable_model, waiting
from tests.sdk.test_cli import on

README = ROOT / "README.md"
FENCE = re.compile(r"(<!--[^>]*-->\s*)?```(\w+)\n(.*?)```", re.S)


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def blocks(title: str, lang: str) -> list[str]:
    out = []
    for m in FENCE.finditer(section(title)):
        comment, block_lang, body = m.groups()
        if block_lang == lang and not (comment and "not run in tests" in comment):
            out.append(body)
    return out


def prepare(folder: Path) -> None:
    photos = folder / "photos"
    photos.mkdir()
    for i in range(3):
        img = Image.new("RGB", (64, 64), "white")
        ImageDraw.Draw(img).ellipse((8, 8 + i, 56, 56 - i), fill="orange")
        img.save(photos / f"ball{i}.png")


def test_readme_has_examples() -> None:
    assert len(blocks("Python SDK", "python")) >= 6
    assert any("boothstudio generate" in b for b in blocks("Command line", "bash"))


def test_readme_python_examples(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    prepare(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    with waiting():
        for i, code in enumerate(blocks("Python SDK", "python")):
            exec(compile(code, f"README.md[python block {i}]", "exec"), namespace)
    assert (tmp_path / "circle-42.png").is_file() and (tmp_path / "square.png").is_file()


def test_readme_cli_examples(stack: Stack, tmp_path: Path) -> None:
    prepare(tmp_path)
    (tmp_path / "out").mkdir()
    Image.new("RGB", (64, 64), "blue").save(tmp_path / "out" / "init.png")
    Image.new("L", (64, 64), 255).save(tmp_path / "mask.png")
    base = usable_model(json.loads(on(stack, "--json", "models", "list").stdout), skip=False)
    (tmp_path / "ball.yaml").write_text(
        f"images: photos/\nbase_model_id: {base}\nclass_noun: ball\nmax_train_steps: 4\n"
    )
    lines = [
        line.split("  #")[0].strip()
        for block in blocks("Command line", "bash")
        for line in block.splitlines()
        if line.startswith("boothstudio ")
    ]
    assert len(lines) >= 8
    for line in lines:
        args = shlex.split(line)[1:]
        if args[0] == "serve" or args[:2] == ["models", "import"]:
            continue
        args = [str(tmp_path / a) if (tmp_path / a.rstrip("/")).exists() else a for a in args]
        args = [str(tmp_path / a) if a in ("out/",) else a for a in args]
        if args[0] == "train" and not base:
            pytest.fail("no model with weights on disk")
        res = on(stack, *args, timeout=600)
        assert res.returncode == 0, f"{line}\n{res.stderr}"
