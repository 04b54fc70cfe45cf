"""The studio and textual-inversion embeddings: listed on the Models screen with their token
counts, imported as embeddings from their files, never offered as the model to generate with."""

from __future__ import annotations

import json
import struct
from dataclasses import replace
from pathlib import Path

from textual.widgets import DataTable, Input, Select, Static

from boothstudio.clients.sdk import ModelKind
from boothstudio.clients.tui.screens.models import is_embedding_file
from tests.tui.conftest import SIZE, fake_app, settle, wait_for
from tests.tui.fakes import EMBEDDING, MODELS, FakeClient


def safetensors_header(path: Path, keys: dict[str, list[int]]) -> Path:
    """A .safetensors file's header (enough for the studio, which reads nothing else)."""
    header = json.dumps({k: {"dtype": "F32", "shape": shape, "data_offsets": [0, 0]}
                         for k, shape in keys.items()}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def test_embedding_files_are_told_from_checkpoints(tmp_path: Path) -> None:
    assert is_embedding_file(str(tmp_path / "style.pt"))
    assert is_embedding_file(str(safetensors_header(tmp_path / "a.safetensors",
                                                    {"emb_params": [4, 768]})))
    assert is_embedding_file(str(safetensors_header(
        tmp_path / "xl.safetensors", {"clip_l": [2, 768], "clip_g": [2, 1280]})))
    checkpoint = safetensors_header(tmp_path / "model.safetensors", {
        "model.diffusion_model.input_blocks.0.0.weight": [320, 4, 3, 3],
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": [49408, 768],
    })
    assert not is_embedding_file(str(checkpoint))
    assert not is_embedding_file(str(tmp_path / "model.ckpt"))


async def test_models_screen_imports_an_embedding_and_generate_does_not_offer_it(
    tmp_path: Path,
) -> None:
    app = fake_app()
    async with app.run_test(size=SIZE) as pilot:
        await settle(pilot)
        client = app.client
        assert isinstance(client, FakeClient)
        await app.switch_mode("models")
        await settle(pilot)
        models = app.screen
        path = safetensors_header(tmp_path / "glow-style.safetensors", {"emb_params": [4, 128]})
        models.query_one("#import-path", Input).value = str(path)
        await models.run_action("import_model")
        await settle(pilot)
        assert client.imports[-1][1]["kind"] is ModelKind.EMBEDDING
        table = models.query_one(DataTable)
        assert "embedding · 4 tokens" in [str(c) for c in table.get_row("glow-style")]
        table.focus()
        table.move_cursor(row=0)
        await settle(pilot)
        info = str(models.query_one("#model-info", Static).render())
        assert "write glow-style in a prompt" in info and "tokens" in info

        await app.switch_mode("generate")
        await settle(pilot)
        generate = app.screen
        client.models.append(replace(MODELS[1], id="zwx-dog-2"))  # so the reload can be seen
        app.models_changed()
        await wait_for(pilot, lambda: "zwx-dog-2" in [m.id for m in generate.models],  # type: ignore[attr-defined]
                       what="the Generate screen's model list reloaded")
        offered = [value for _, value in generate.query_one("#model", Select)._options]
        assert EMBEDDING.id not in offered and "zwx-dog-2" in offered
