"""The studio's Models screen shows the preview of the selected model when it has one (fetched
from a real Catalog on loopback through the SDK), and none for a model without."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from PIL import Image
from textual.widgets import DataTable

from boothstudio.clients.sdk import BoothStudio
from boothstudio.clients.tui.app import StudioApp
from boothstudio.clients.tui.settings import StudioSettings
from boothstudio.services.diffusion.loading import EMBEDDED_MODEL_DIR
from tests.diffusion.lora_files import kohya_by_hand, lora_tensors, write_lora
from tests.helpers import free_port
from tests.tui.conftest import SIZE, wait_for


async def test_the_models_screen_shows_the_selected_models_preview(
    module_services: Any, tmp_path: Path
) -> None:
    catalog = module_services("catalog")
    lora = write_lora(tmp_path / "glow.safetensors",
                      kohya_by_hand(lora_tensors(EMBEDDED_MODEL_DIR, seed=5)))
    cover = io.BytesIO()
    Image.new("RGB", (640, 480), (200, 40, 40)).save(cover, format="PNG")
    with BoothStudio(catalog.address, timeout=60) as client:
        base = client.list_models().items[0].id
        client.import_model(lora, kind="lora", base_model_id=base, model_id="glow",
                            preview=cover.getvalue())
    unreachable = f"127.0.0.1:{free_port()}"
    settings = StudioSettings(catalog=catalog.address, generator=unreachable,
                              trainer=unreachable, images="halfcell")
    app = StudioApp(settings, health_interval=0, models_interval=0, cursor_blink=False)
    async with app.run_test(size=SIZE) as pilot:
        await app.switch_mode("models")
        screen = app.screen
        await wait_for(pilot, lambda: {"glow", base} <= {m.id for m in screen.models},  # type: ignore[attr-defined]
                       what="the catalog's models listed")
        table = screen.query_one(DataTable)
        table.focus()
        picture = screen.query_one("#model-preview")
        ids = [m.id for m in screen.models]  # type: ignore[attr-defined]

        table.move_cursor(row=ids.index("glow"))
        await wait_for(pilot, lambda: picture.display and picture.image is not None,  # type: ignore[attr-defined]
                       what="the LoRA's preview shown")
        shown = Image.open(io.BytesIO(picture.image.getvalue()))  # type: ignore[attr-defined]
        assert shown.size == (512, 384)  # the Catalog's thumbnail of the 640 x 480 picture

        table.move_cursor(row=ids.index(base))  # the embedded base model has no preview
        await wait_for(pilot, lambda: not picture.display, what="the preview hidden")
        table.move_cursor(row=ids.index("glow"))  # back: shown again, from the screen's cache
        await wait_for(pilot, lambda: picture.display, what="the preview shown again")
