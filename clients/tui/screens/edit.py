"""Edit: take an image from the gallery or a file, then img2img (strength), inpaint with a
mask painted over it (mouse or keys: brush size, erase, invert, clear) or outpaint (pixels added
on chosen sides). Results go to the gallery like any generation."""

from __future__ import annotations

import asyncio
import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, HorizontalScroll, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Input, Select, Static
from textual.widgets.select import InvalidSelectValueError

from boothstudio.clients.sdk import (
    Finished,
    GalleryImage,
    GenerateEvent,
    GenerateParams,
    GenerationStatus,
    ImageReady,
    Model,
    ModelDownload,
    ModelKind,
    Progress,
    SamplerList,
    Started,
    WarningEvent,
)
from boothstudio.clients.sdk.errors import invalid
from boothstudio.clients.tui.screens.base import StudioScreen
from boothstudio.clients.tui.screens.dialogs import PickImageDialog
from boothstudio.clients.tui.screens.generate import GenerateScreen
from boothstudio.clients.tui.widgets.fields import (
    FormField,
    form_params,
    model_label,
    parse_int,
    refill,
)
from boothstudio.clients.tui.widgets.mask_canvas import MaskCanvas
from boothstudio.clients.tui.widgets.results import JobProgress, ResultTile, eta_text

MODES = [("img2img (whole image)", "img2img"), ("inpaint (painted mask)", "inpaint"),
         ("outpaint (extend the canvas)", "outpaint")]
OUTPAINT_SIDES = ("left", "right", "top", "bottom")
#: Request field -> the widget that sets it (the mask blur: when inpainting).
FORM_FIELDS = {
    name: f"edit-{name}" for name in ("steps", "seed", "width", "height", "count", "sampler")
} | {
    "negative_prompt": "edit-negative",
    "strength": "strength",
    "cfg_scale": "edit-cfg",
    "model_id": "edit-model",
}


@dataclass
class ReuseEdit:
    """An img2img or inpainted image's settings, for the Edit screen (Gallery's reuse): the
    gallery does not keep its source image, so Generate could only make a txt2img of them."""

    image: GalleryImage


class EditScreen(StudioScreen):
    MODE = "edit"
    TITLE_TEXT = "Edit"

    BINDINGS = [
        Binding("ctrl+g", "generate", "Generate"),
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+l", "pick", "From gallery"),
        Binding("ctrl+o", "open_file", "Open file"),
        Binding("ctrl+k", "canvas", "Paint", show=False),
    ]

    @dataclass
    class SourceLoaded(Message):
        png: bytes
        name: str
        prompt: str = ""

    @dataclass
    class ModelsLoaded(Message):
        models: list[Model]
        samplers: SamplerList | None = None

    @dataclass
    class Event(Message):
        event: GenerateEvent

    class Ended(Message):
        pass

    def __init__(self) -> None:
        super().__init__()
        self.source_png: bytes | None = None
        self.running = False
        self.job_id = ""
        #: The sampler of reused settings, chosen once the samplers are listed.
        self._want_sampler = ""
        self._sampler_ids: list[str] = []

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="edit-body", classes="body"):
            with VerticalScroll(id="edit-form", classes="form"):
                yield Static("No image yet.", id="edit-source")
                with Horizontal(classes="row buttons"):
                    yield Button("From gallery", id="pick-gallery")
                    yield Button("Open file", id="open-file")
                yield FormField(
                    "File", Input(placeholder="path to a PNG/JPEG", id="edit-path"), field="path"
                )
                yield FormField(
                    "Prompt",
                    Input(placeholder="what it should become", id="edit-prompt"),
                    field="prompt",
                )
                yield FormField(
                    "Negative prompt", Input(id="edit-negative"), field="negative_prompt"
                )
                yield FormField(
                    "Mode",
                    Select(MODES, value="inpaint", allow_blank=False, id="edit-mode"),
                    field=["mode", "outpaint"],
                )
                with Horizontal(classes="row", id="outpaint-sides"):
                    for side in OUTPAINT_SIDES:
                        yield FormField(
                            f"{side.capitalize()} px",
                            Input(type="integer", placeholder="0", id=f"outpaint-{side}"),
                            field=f"outpaint.{side}",
                        )
                with Horizontal(classes="row"):
                    yield FormField(
                        "Strength", Input("0.75", type="number", id="strength"), field="strength"
                    )
                    yield FormField(
                        "Mask blur", Input(type="integer", id="mask-blur"), field="mask_blur"
                    )
                with Horizontal(classes="row"):
                    yield FormField("Steps", Input(type="integer", id="edit-steps"), field="steps")
                    yield FormField(
                        "CFG",
                        Input(GenerateScreen.DEFAULT_CFG, type="number", id="edit-cfg"),
                        field="cfg_scale",
                    )
                yield FormField("Model", Select[str]([], id="edit-model"), field="model_id")
                yield FormField("Sampler", Select[str]([], id="edit-sampler"), field="sampler")
                with Horizontal(classes="row"):
                    for side in ("width", "height"):
                        yield FormField(
                            side.capitalize(),
                            Input(type="integer", placeholder="the image's", id=f"edit-{side}"),
                            field=side,
                        )
                with Horizontal(classes="row"):
                    yield FormField(
                        "Seed",
                        Input(type="integer", placeholder="random", id="edit-seed"),
                        field="seed",
                    )
                    yield FormField(
                        "Count", Input("1", type="integer", id="edit-count"), field="count"
                    )
                yield Static("", id="brush-info")
                yield Button("Generate  ctrl+g", variant="primary", id="edit-generate")
            with Vertical(id="edit-main"):
                yield FormField(
                    "Mask (drag, or arrows + space · [ ] brush · e erase · i invert · c clear)",
                    MaskCanvas(id="mask"),
                    field=["mask", "mask_image", "init_image"],
                    id="mask-field",
                )
                yield JobProgress(id="edit-progress")
                yield HorizontalScroll(id="edit-results", classes="panel")

    def on_mount(self) -> None:
        super().on_mount()
        self._brush_info()
        self.load_models()

    def reload_models(self) -> None:
        self.load_models()

    # ---------------------------------------------------------------------------- models

    @work(exclusive=True, group="catalog")
    async def load_models(self) -> None:
        try:
            page = await self.client.list_models(page_size=200)
            samplers = await self.client.list_samplers()
        except Exception as exc:
            self.post_message(self.Failed(exc, "catalog"))
            return
        # embeddings are called up by name in a prompt, not chosen as the model
        models = [m for m in page.items if m.kind is not ModelKind.EMBEDDING]
        self.post_message(self.ModelsLoaded(models, samplers))

    @on(ModelsLoaded)
    def models_loaded(self, event: ModelsLoaded) -> None:
        default = next((m.id for m in event.models if m.builtin), "")
        models = ((model_label(m), m.id) for m in event.models)
        refill(self.query_one("#edit-model", Select), models, default)
        if event.samplers is not None:
            samplers = event.samplers
            self._sampler_ids = [x.id for x in samplers]
            options = ((x.label or x.id, x.id) for x in samplers)
            refill(
                self.query_one("#edit-sampler", Select),
                options,
                samplers.default_sampler,
                self._want_sampler,
            )
            self._want_sampler = ""

    # ---------------------------------------------------------------------------- source

    def action_pick(self) -> None:
        self.app.push_screen(
            PickImageDialog(self.client, self.studio.png_cache, self.studio.image_method),
            self._picked,
        )

    @on(Button.Pressed, "#pick-gallery")
    def pick_pressed(self) -> None:
        self.action_pick()

    def _picked(self, image_id: str | None) -> None:
        if image_id:
            self.fetch_gallery_image(image_id)

    @work(exclusive=True, group="source")
    async def fetch_gallery_image(self, image_id: str) -> None:
        try:
            img = await self.client.get_image(image_id)
        except Exception as exc:
            self.post_message(self.Failed(exc, "gallery"))
            return
        if img.png:
            self.post_message(self.SourceLoaded(img.png, f"gallery {image_id}", img.prompt))

    def action_open_file(self) -> None:
        path = self.query_one("#edit-path", Input)
        if path.value.strip():
            self.load_file(path.value.strip())
        else:
            path.focus()

    @on(Button.Pressed, "#open-file")
    def open_pressed(self) -> None:
        self.action_open_file()

    @on(Input.Submitted, "#edit-path")
    def path_submitted(self) -> None:
        self.action_open_file()

    @work(exclusive=True, group="source")
    async def load_file(self, path: str) -> None:
        try:
            png = await asyncio.to_thread(_read_image, Path(path).expanduser())
        except Exception as exc:
            self.post_message(self.Failed(invalid("path", f"cannot open: {exc}"), "open"))
            return
        self.post_message(self.SourceLoaded(png, Path(path).name))

    @on(SourceLoaded)
    def source_loaded(self, event: SourceLoaded) -> None:
        self.source_png = event.png
        image = Image.open(io.BytesIO(event.png))
        self.query_one(MaskCanvas).load(image)
        self.query_one("#edit-source", Static).update(
            f"{event.name} · {image.width}x{image.height}"
        )
        prompt = self.query_one("#edit-prompt", Input)
        if event.prompt and not prompt.value:
            prompt.value = event.prompt
        self.clear_field_errors()
        self.query_one(MaskCanvas).focus()

    def receive(self, payload: Any) -> None:
        if isinstance(payload, ReuseEdit):
            self._apply(payload.image)
        elif isinstance(payload, GalleryImage) and payload.png:
            self.post_message(
                self.SourceLoaded(payload.png, f"gallery {payload.image_id}", payload.prompt)
            )

    def _apply(self, img: GalleryImage) -> None:
        """Fill the form with an edited image's settings (its seed fixed)."""
        p = img.params
        self.query_one("#edit-prompt", Input).value = img.prompt
        self.query_one("#edit-negative", Input).value = img.negative_prompt
        outpaint = p.get("outpaint")
        mode = "outpaint" if outpaint else "inpaint" if img.has_mask else "img2img"
        self.query_one("#edit-mode", Select).value = mode
        for side in OUTPAINT_SIDES:
            pixels = getattr(outpaint, side, 0) if outpaint else 0
            self.query_one(f"#outpaint-{side}", Input).value = str(pixels) if pixels else ""
        for wid, value in (
            ("#strength", p.get("strength")),
            ("#edit-steps", img.steps or None),
            ("#edit-cfg", img.cfg_scale or None),
            # an outpaint's size is its source's plus the sides: the service refuses a size
            ("#edit-width", None if outpaint else img.width or None),
            ("#edit-height", None if outpaint else img.height or None),
            ("#edit-seed", img.seed),
            ("#edit-count", 1),
            ("#mask-blur", p.get("mask_blur")),
        ):
            if value is not None:
                text = f"{value:g}" if isinstance(value, float) else str(value)
                self.query_one(wid, Input).value = text
        if img.sampler in self._sampler_ids:
            self.query_one("#edit-sampler", Select).value = img.sampler
        else:  # chosen when the samplers arrive
            self._want_sampler = img.sampler
        if img.model_id:
            with contextlib.suppress(InvalidSelectValueError):
                self.query_one("#edit-model", Select).value = img.model_id
        self.say(
            f"settings of {img.image_id} loaded: open its source image (ctrl+l gallery, ctrl+o"
            " file); the gallery does not keep it"
        )

    @on(Select.Changed, "#edit-mode")
    def mode_changed(self, event: Select.Changed) -> None:
        """The sides to extend show only when outpainting."""
        self.query_one("#outpaint-sides").display = event.value == "outpaint"

    # ----------------------------------------------------------------------------- mask

    def action_canvas(self) -> None:
        self.query_one(MaskCanvas).focus()

    @on(MaskCanvas.Changed)
    def mask_changed(self) -> None:
        self._brush_info()

    def _brush_info(self) -> None:
        canvas = self.query_one(MaskCanvas)
        tool = "erase" if canvas.erasing else "paint"
        self.query_one("#brush-info", Static).update(
            f"brush {canvas.brush} · {tool} · mask {canvas.coverage:.0%}"
        )

    # ----------------------------------------------------------------------------- run

    def params(self) -> tuple[str, GenerateParams]:
        if self.source_png is None:
            raise invalid("init_image", "load an image first (ctrl+l gallery, ctrl+o file)")
        prompt = self.query_one("#edit-prompt", Input).value.strip()
        params = form_params(self, FORM_FIELDS)
        params["init_image"] = self.source_png
        params["preview_interval"] = 1
        if self.query_one("#edit-mode", Select).value == "inpaint":
            canvas = self.query_one(MaskCanvas)
            if canvas.coverage == 0:
                raise invalid("mask", "paint the area to repaint first (or use img2img)")
            params["mask"] = canvas.mask_png()
            params.update(form_params(self, {"mask_blur": "mask-blur"}))
        elif self.query_one("#edit-mode", Select).value == "outpaint":
            sides = {
                side: parse_int(self.query_one(f"#outpaint-{side}", Input).value,
                                f"outpaint.{side}")
                for side in OUTPAINT_SIDES
            }
            params["outpaint"] = {side: n for side, n in sides.items() if n is not None}
            params.update(form_params(self, {"mask_blur": "mask-blur"}))
        return prompt, params

    def action_generate(self) -> None:
        if self.running:
            return
        self.clear_field_errors()
        try:
            prompt, params = self.params()
        except Exception as exc:
            self.report_error(exc, "edit")
            return
        self.running = True
        self.query_one("#edit-generate", Button).disabled = True
        self.query_one(JobProgress).reset("starting…")
        self.say("generating…")
        self.run_edit(prompt, params)

    @on(Button.Pressed, "#edit-generate")
    def generate_pressed(self) -> None:
        self.action_generate()

    @work(exclusive=True, group="generate")
    async def run_edit(self, prompt: str, params: GenerateParams) -> None:
        try:
            stream = self.client.stream_generate(prompt, **params)
            self.job_id = stream.job_id
            self.studio.generations[stream.job_id] = stream
            async with stream:
                async for event in stream:
                    self.post_message(self.Event(event))
        except Exception as exc:
            self.post_message(self.Failed(exc, "edit"))
        finally:
            self.post_message(self.Ended())

    def action_cancel(self) -> None:
        if self.running and self.job_id:
            self.say("cancelling…")
            self.studio.cancel_generation(self.job_id)

    @on(Event)
    def edit_event(self, message: Event) -> None:
        event = message.event
        progress = self.query_one(JobProgress)
        if isinstance(event, Started):
            progress.show(0, event.steps or 1, f"seed {', '.join(map(str, event.seeds))}")
        elif isinstance(event, ModelDownload):
            progress.download(event.bytes_done, event.bytes_total)
        elif isinstance(event, Progress):
            progress.show(
                event.step, event.total, f"step {event.step}/{event.total} {eta_text(event.eta)}"
            )
        elif isinstance(event, ImageReady) and event.image.ok:
            img = event.image
            caption = f"seed {img.seed}" + (f" · {img.image_id}" if img.image_id else "")
            self.query_one("#edit-results", HorizontalScroll).mount(
                ResultTile(img.png, caption, self.studio.image_method, image_id=img.image_id)
            )
        elif isinstance(event, WarningEvent):  # e.g. an outpainted canvas rounded up
            self.notify(event.warning.message, severity="warning")
        elif isinstance(event, Finished):
            if event.status is GenerationStatus.SUCCEEDED:
                progress.finish(f"done in {event.total_seconds:.1f}s")
                self.say(f"{event.image_count} edited image(s) added to the gallery")
            else:
                progress.reset(event.status.value)
                self.say(f"edit {event.status.value}: {event.error_message}")

    @on(Ended)
    def ended(self) -> None:
        self.running = False
        self.studio.generations.pop(self.job_id, None)
        self.query_one("#edit-generate", Button).disabled = False


def _read_image(path: Path) -> bytes:
    """The file as PNG bytes (other formats converted)."""
    data = path.read_bytes()
    img = Image.open(io.BytesIO(data))
    img.load()
    if img.format == "PNG":
        return data
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()
