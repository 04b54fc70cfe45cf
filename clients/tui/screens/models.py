"""Models: the catalog's list, one model's details (with its preview picture when it has
one), import from a path, delete."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, DataTable, Input, Label, Static

from boothstudio.clients.sdk import Model, ModelKind
from boothstudio.clients.sdk.text import human_bytes
from boothstudio.clients.tui.images import image_widget, set_image
from boothstudio.clients.tui.screens.base import StudioScreen
from boothstudio.clients.tui.screens.dialogs import ConfirmDialog
from boothstudio.clients.tui.widgets.fields import FormField


def is_embedding_file(path: str) -> bool:
    """A textual-inversion embedding, judged as the studio can without torch: a pickled .pt/.bin,
    or a .safetensors whose header holds an embedding's keys (A1111 `emb_params`, SDXL `clip_l`
    + `clip_g`, or one token's vectors)."""
    p = Path(path).expanduser()
    if p.suffix.lower() in (".pt", ".bin"):
        return True
    if p.suffix.lower() != ".safetensors":
        return False
    try:
        with open(p, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > 1_000_000:  # an embedding's header is tiny; a checkpoint's is not
                return False
            keys = set(json.loads(f.read(length))) - {"__metadata__"}
    except (OSError, ValueError, struct.error):
        return False
    return keys == {"emb_params"} or keys == {"clip_l", "clip_g"} or len(keys) == 1


def kind_label(m: Model) -> str:
    if m.kind is ModelKind.EMBEDDING:
        return f"embedding · {m.embedding_vectors} tokens"
    return m.kind.value


def model_details(m: Model) -> str:
    rows = [
        ("id", m.id),
        ("name", m.display_name),
        ("kind", m.kind.value),
        ("format", m.format.value),
        ("backend", m.backend_id),
        ("architecture", m.architecture),
        ("resolution", str(m.native_resolution or "")),
        ("prediction", m.prediction_type.value),
        ("base model", m.base_model_id),
        ("trigger", m.trigger_phrase),
        ("training job", m.training_job_id),
        ("inpainting", "yes" if m.inpainting else ""),
        ("tokens", str(m.embedding_vectors or "")),
        ("widths", " + ".join(str(w) for w in m.embedding_widths)),
        ("use", f"write {m.id} in a prompt" if m.kind is ModelKind.EMBEDDING else ""),
        ("built in", "yes" if m.builtin else ""),
        ("size", human_bytes(m.size_bytes) if m.size_bytes else ""),
        ("source", m.source_path),
        ("config", m.config_path),
        ("description", m.description),
    ]
    return "\n".join(f"[b]{k:>13}[/b]  {v}" for k, v in rows if v)


class ModelsScreen(StudioScreen):
    MODE = "models"
    TITLE_TEXT = "Models"

    BINDINGS = [
        Binding("ctrl+r", "refresh", "Refresh"),
        Binding("ctrl+i", "import_model", "Import"),
        Binding("d,delete", "delete", "Delete"),
        Binding("g", "use", "Generate with"),
    ]

    @dataclass
    class Loaded(Message):
        models: list[Model]
        select: str = ""

    @dataclass
    class PreviewLoaded(Message):
        model_id: str
        png: bytes

    def __init__(self) -> None:
        super().__init__()
        self.models: list[Model] = []
        self._want = ""
        #: previews fetched this session, by model id (a model's preview never changes)
        self.previews: dict[str, bytes] = {}
        self._shown = ""

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="models-body", classes="body"):
            with Vertical(id="models-left"):
                yield DataTable(id="models-table", cursor_type="row", zebra_stripes=True)
                with VerticalScroll(id="import-form", classes="form"):
                    yield Label("Import a model", classes="section")
                    yield FormField(
                        "Path (diffusers folder, .safetensors file, embedding or HF cache)",
                        Input(placeholder="/path/to/model", id="import-path"),
                        field=[
                            "source",
                            "diffusers_path",
                            "single_file_path",
                            "hf_cache_id",
                            "config_path",
                        ],
                    )
                    with Horizontal(classes="row"):
                        yield FormField(
                            "Model id",
                            Input(placeholder="optional", id="import-id"),
                            field="model_id",
                        )
                        yield FormField(
                            "Name",
                            Input(placeholder="optional", id="import-name"),
                            field="display_name",
                        )
                    yield Button("Import  ctrl+i", variant="primary", id="import-button")
            with VerticalScroll(id="model-detail", classes="panel"):
                preview = image_widget(None, self.studio.image_method, id="model-preview")
                # sized here: a 512 px preview in about a third of the panel's height
                preview.styles.width = 40
                preview.styles.height = 20
                preview.display = False  # shown only for a model that has a preview
                yield preview
                yield Static("Select a model.", id="model-info")

    def on_mount(self) -> None:
        super().on_mount()
        table = self.query_one(DataTable)
        table.add_columns("id", "name", "kind", "format", "size")
        self.action_refresh()

    def reload_models(self) -> None:
        self.load()

    def action_refresh(self) -> None:
        self.load()

    @work(exclusive=True, group="models")
    async def load(self, select: str = "") -> None:
        try:
            page = await self.client.list_models(page_size=500)
        except Exception as exc:
            self.post_message(self.Failed(exc, "models"))
            return
        self.post_message(self.Loaded(list(page.items), select))

    @on(Loaded)
    def loaded(self, event: Loaded) -> None:
        shown = self.current()
        self.models = event.models
        # a deleted model's preview goes (a new model may take its id)
        listed = {m.id for m in self.models if m.has_preview}
        self.previews = {k: v for k, v in self.previews.items() if k in listed}
        table = self.query_one(DataTable)
        table.clear()
        for m in self.models:
            size = human_bytes(m.size_bytes) if m.size_bytes else ""
            table.add_row(m.id, m.display_name, kind_label(m), m.format.value, size, key=m.id)
        self.say(f"{len(self.models)} models")
        want = event.select or self._want
        if want:
            self._select(want)
        elif shown is not None:  # a reload: stay on the model shown (focus stays where it is)
            ids = [m.id for m in self.models]
            if shown.id in ids:
                table.move_cursor(row=ids.index(shown.id))

    def _select(self, model_id: str) -> None:
        table = self.query_one(DataTable)
        for row, m in enumerate(self.models):
            if m.id == model_id:
                table.move_cursor(row=row)
                self._want = ""
                self.show_model(m)
                table.focus()
                return
        self._want = model_id

    @on(DataTable.RowHighlighted)
    def highlighted(self, event: DataTable.RowHighlighted) -> None:
        key = event.row_key.value if event.row_key else None
        model = next((m for m in self.models if m.id == key), None)
        if model is not None:
            self.show_model(model)

    def show_model(self, model: Model) -> None:
        self._shown = model.id
        self.query_one("#model-info", Static).update(model_details(model))
        picture = self.query_one("#model-preview")
        png = self.previews.get(model.id) if model.has_preview else None
        set_image(picture, png)
        picture.display = png is not None
        if model.has_preview and png is None:
            self.load_preview(model.id)

    @work(exclusive=True, group="preview")
    async def load_preview(self, model_id: str) -> None:
        try:
            png = await self.client.get_model_preview(model_id)
        except Exception as exc:
            self.post_message(self.Failed(exc, "preview"))
            return
        self.post_message(self.PreviewLoaded(model_id, png))

    @on(PreviewLoaded)
    def preview_loaded(self, event: PreviewLoaded) -> None:
        self.previews[event.model_id] = event.png
        if event.model_id == self._shown:  # still the model on show
            picture = self.query_one("#model-preview")
            set_image(picture, event.png)
            picture.display = True

    def current(self) -> Model | None:
        table = self.query_one(DataTable)
        if not self.models or table.cursor_row < 0 or table.cursor_row >= len(self.models):
            return None
        return self.models[table.cursor_row]

    def receive(self, payload: Any) -> None:
        if isinstance(payload, str):
            self._want = payload
            self.load(select=payload)

    # ----------------------------------------------------------------------------- import

    def action_import_model(self) -> None:
        path = self.query_one("#import-path", Input)
        if not path.value.strip():
            path.focus()
            return
        self.clear_field_errors()
        self.say("importing…")
        self.import_model(
            path.value.strip(),
            self.query_one("#import-id", Input).value.strip(),
            self.query_one("#import-name", Input).value.strip(),
        )

    @on(Button.Pressed, "#import-button")
    def import_pressed(self) -> None:
        self.action_import_model()

    @on(Input.Submitted, "#import-path,#import-id,#import-name")
    def import_submitted(self) -> None:
        self.action_import_model()

    @work(exclusive=True, group="import")
    async def import_model(self, path: str, model_id: str, name: str) -> None:
        try:
            kind = ModelKind.EMBEDDING if is_embedding_file(path) else None
            model = await self.client.import_model(path, model_id=model_id, display_name=name,
                                                   kind=kind)
        except Exception as exc:
            self.post_message(self.Failed(exc, "import"))
            return
        for w in model.warnings:
            self.post_message(self.Done(f"{model.id}: {w.message}"))
        self.post_message(self.Done(f"imported {model.id}"))
        self._want = model.id  # whichever reload comes next shows it
        self.post_message(self.ModelsChanged())

    # ----------------------------------------------------------------------------- delete

    def action_delete(self) -> None:
        model = self.current()
        if model is None:
            return

        def confirmed(yes: bool | None) -> None:
            if yes and model is not None:
                self.delete_model(model.id)

        self.app.push_screen(ConfirmDialog(f"Delete model {model.id}?"), confirmed)

    @work(group="delete")
    async def delete_model(self, model_id: str) -> None:
        try:
            freed = await self.client.delete_model(model_id)
        except Exception as exc:
            self.post_message(self.Failed(exc, "delete"))
            return
        self.post_message(
            self.Done(f"deleted {model_id}" + (f" ({freed} bytes freed)" if freed else ""))
        )
        self.post_message(self.ModelsChanged())

    async def action_use(self) -> None:
        model = self.current()
        if model is not None and model.kind is ModelKind.EMBEDDING:
            self.say(f"{model.id} is an embedding: write {model.id} in a prompt")
        elif model is not None:
            await self.studio.hand_over("generate", model)
