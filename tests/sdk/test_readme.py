"""The README's SDK, CLI and studio examples run against the real services (conftest.py's
stack).

The ```python blocks of "## Python SDK" run in order in one namespace (a block right after an
HTML comment starting with "not run in tests" is skipped); each `boothstudio ...` line of the
"## Command line" block runs as a command (`serve` as test_cli.py's
test_serve_starts_and_stops_services runs it; `models import` with a copy of the embedded model
for its placeholder path), and the files written are named as the section says; each
`boothstudio-tui ...` line of "## Terminal studio" starts the studio from that command line,
headless, until it shows the services up and the catalog's models.
Rerun: `.venv/bin/pytest tests/sdk/test_readme.py -v`
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
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
    placeholder = "/path/to/diffusers-folder"
    shutil.copytree(ROOT / "services/diffusion/embedded_model", tmp_path / "model")
    for line in lines:
        args = shlex.split(line)[1:]
        if args[0] == "serve":
            continue
        args = [str(tmp_path / "model") if a == placeholder else a for a in args]
        args = [str(tmp_path / a) if (tmp_path / a.rstrip("/")).exists() else a for a in args]
        args = [str(tmp_path / a) if a in ("out/",) else a for a in args]
        if args[0] == "train" and not base:
            pytest.fail("no model with weights on disk")
        res = on(stack, *args, timeout=600)
        assert res.returncode == 0, f"{line}\n{res.stderr}"
    assert on(stack, "models", "delete", "my-model").returncode == 0
    # output files as the section names them: JOB-N.png in -o, N from 0
    names = sorted(p.name for p in (tmp_path / "out").glob("gen-*.png"))
    assert [n for n in names if n.endswith(("-0.png", "-1.png"))] == names and len(names) >= 3
    assert "`JOB-N.png`" in section("Command line")


def test_readme_says_how_to_run_the_tools() -> None:
    cli, studio = section("Command line"), section("Terminal studio")
    assert ".venv/bin/boothstudio`" in cli and "PATH" in cli
    assert "](clients/tui/README.md)" in studio and (ROOT / "clients/tui/README.md").is_file()
    assert ".venv/bin/boothstudio-tui" in studio


async def test_readme_studio_examples(stack: Stack, monkeypatch: pytest.MonkeyPatch) -> None:
    from textual.widgets import Select

    from boothstudio.clients.tui.cli import build_app

    for key, value in stack.env.items():
        monkeypatch.setenv(key, value)
    lines = [
        line.split("  #")[0].strip()
        for block in blocks("Terminal studio", "bash")
        for line in block.splitlines()
        if line.startswith("boothstudio-tui")
    ]
    assert lines
    for line in lines:
        app = build_app([*shlex.split(line)[1:], "--no-save"])
        async with app.run_test(size=(140, 44)) as pilot:
            for _ in range(600):
                model = app.screen.query("#model")
                services = ("catalog", "generator", "trainer")
                up = all(app.health.get(s) == "SERVING" for s in services)
                if up and model and isinstance(model.first(Select).value, str):
                    break
                await pilot.pause(0.1)
            else:
                pytest.fail(f"{line}: services not up or no models: {app.health}")
