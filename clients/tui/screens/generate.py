"""Generate: prompt, model, sampler (with its own settings), size, steps, cfg, seed, count;
a progress bar with ETA, the live preview and the results."""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, HorizontalScroll, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import Button, Checkbox, Input, Label, Select, Static
from textual.widgets.select import InvalidSelectValueError

from boothstudio.clients.sdk import (
    Finished,
    GalleryImage,
    GenerateEvent,
    GenerateParams,
    GenerationStatus,
    HiresFix,
    ImageReady,
    Model,
    ModelDownload,
    ModelKind,
    Progress,
    Queued,
    Sampler,
    SamplerList,
    Started,
    WarningEvent,
)
from boothstudio.clients.tui.images import image_widget, set_image
from boothstudio.clients.tui.screens.base import StudioScreen
from boothstudio.clients.tui.widgets.fields import (
    FormField,
    form_params,
    model_label,
    parse_float,
    parse_int,
    refill,
)
from boothstudio.clients.tui.widgets.results import JobProgress, ResultTile, eta_text
from boothstudio.clients.tui.widgets.sampler_settings import SamplerSettings

#: Request field -> the widget that sets it (the seed: when "Random seed" is off).
FORM_FIELDS = {
    name: name
    for name in ("negative_prompt", "sampler", "schedule", "width", "height", "steps", "count")
} | {"model_id": "model", "cfg_scale": "cfg_scale"}


#: Hires fix upscalers (GenerateRequest.hires.upscaler): label, value
HIRES_CHOICES = [("Latent", "latent"), ("Latent (nearest)", "latent_nearest"),
                 ("Lanczos", "lanczos"), ("Nearest", "nearest")]


class GenerateScreen(StudioScreen):
    MODE = "generate"
    TITLE_TEXT = "Generate"
    AUTO_FOCUS = "#prompt"
    #: The service's guidance scale when a request sets none.
    DEFAULT_CFG = "7"

    BINDINGS = [
        Binding("ctrl+g", "generate", "Generate"),
        Binding("escape", "cancel", "Cancel"),
        Binding("ctrl+r", "refresh", "Reload catalog"),
        Binding("ctrl+s", "toggle_seed", "Random seed"),
    ]

    @dataclass
    class CatalogLoaded(Message):
        models: list[Model]
        samplers: SamplerList

    @dataclass
    class SamplersLoaded(Message):
        samplers: SamplerList

    @dataclass
    class Event(Message):
        """One event of the running generation."""

        event: GenerateEvent

    class Ended(Message):
        pass

    def __init__(self) -> None:
        super().__init__()
        self.models: list[Model] = []
        self.samplers: SamplerList | None = None
        self.running = False
        self.job_id = ""
        #: The first seed of the last generation (what "fixed seed" starts from).
        self.last_seed: int | None = None
        #: The previous results stay until the next generation has started.
        self._clear_results = False
        self._pending: GalleryImage | None = None
        #: A model handed over ("Generate with") that the list may not hold yet.
        self._want_model = ""

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="generate-body", classes="body"):
            with VerticalScroll(id="gen-form", classes="form"):
                yield FormField(
                    "Prompt", Input(placeholder="what to draw", id="prompt"), field="prompt"
                )
                yield FormField(
                    "Negative prompt",
                    Input(placeholder="what to avoid", id="negative_prompt"),
                    field="negative_prompt",
                )
                yield FormField("Model", Select[str]([], id="model"), field="model_id")
                with Horizontal(classes="row"):
                    yield FormField("Sampler", Select[str]([], id="sampler"), field="sampler")
                    yield FormField("Schedule", Select[str]([], id="schedule"), field="schedule")
                with Horizontal(classes="row"):
                    yield FormField("Width", Input(type="integer", id="width"), field="width")
                    yield FormField("Height", Input(type="integer", id="height"), field="height")
                with Horizontal(classes="row"):
                    yield FormField("Steps", Input(type="integer", id="steps"), field="steps")
                    yield FormField(
                        "CFG",
                        Input(self.DEFAULT_CFG, type="number", id="cfg_scale"),
                        field="cfg_scale",
                    )
                with Horizontal(classes="row"):
                    yield FormField(
                        "Seed", Input(type="integer", placeholder="random", id="seed"), field="seed"
                    )
                    yield FormField("Count", Input("1", type="integer", id="count"), field="count")
                yield Checkbox("Random seed", True, id="seed-random", compact=True)
                yield FormField(
                    "Hires fix",
                    Checkbox("draw at model size, enlarge, redraw", False, id="hires"),
                    field="hires",
                )
                with Horizontal(classes="row"):
                    yield FormField("Upscaler", Select(HIRES_CHOICES, value="latent",
                                                       allow_blank=False, id="hires-upscaler"),
                                    field="hires.upscaler")
                    yield FormField("Hires steps", Input(type="integer", placeholder="as steps",
                                                         id="hires-steps"), field="hires.steps")
                    yield FormField("Denoising", Input(type="number", placeholder="0.5",
                                                       id="hires-strength"),
                                    field="hires.denoising_strength")
                yield Label("Sampler settings", classes="section")
                yield SamplerSettings(id="sampler-settings")
                yield Button("Generate  ctrl+g", variant="primary", id="generate-button")
            with Vertical(id="gen-output"):
                yield JobProgress(id="gen-progress")
                yield Static("", id="seed-used")
                with Horizontal(id="gen-preview-row"):
                    with Vertical(id="preview-box", classes="panel"):
                        yield Label("Preview", classes="section")
                        yield image_widget(None, self.studio.image_method, id="preview")
                    yield HorizontalScroll(id="results", classes="panel")

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#seed", Input).disabled = True
        self.watch(self.app, "health", self._health_changed, init=False)
        self.action_refresh()

    def reload_models(self) -> None:
        self.load_catalog()

    def _health_changed(self, health: dict[str, str]) -> None:
        """The catalog came (back) up and the lists are empty: load them now."""
        busy = any(
            w.node is self and w.group == "catalog" and w.is_running for w in self.app.workers
        )
        if health.get("catalog") == "SERVING" and not self.models and not busy:
            self.load_catalog()

    # ------------------------------------------------------------------------- catalog

    def action_refresh(self) -> None:
        self.say("loading models and samplers…")
        self.load_catalog()

    @work(exclusive=True, group="catalog")
    async def load_catalog(self) -> None:
        try:
            page = await self.client.list_models(page_size=200)
            # embeddings are called up by name in a prompt, not chosen as the model
            models = [m for m in page.items if m.kind is not ModelKind.EMBEDDING]
            default = next((m for m in models if m.builtin), models[0] if models else None)
            samplers = await self.client.list_samplers(model_id=default.id if default else "")
        except Exception as exc:
            self.post_message(self.Failed(exc, "catalog"))
            return
        self.post_message(self.CatalogLoaded(models, samplers))

    @on(CatalogLoaded)
    async def catalog_loaded(self, event: CatalogLoaded) -> None:
        self.models = event.models
        model_select = self.query_one("#model", Select)
        ids = [m.id for m in self.models]
        default = next((m.id for m in self.models if m.builtin), ids[0] if ids else "")
        options = ((model_label(m), m.id) for m in self.models)
        refill(model_select, options, default, self._want_model)
        if model_select.value == self._want_model:
            self._want_model = ""
        chosen = next((m for m in self.models if m.id == model_select.value), None)
        if chosen is not None:
            self._size_defaults(chosen)
        await self._show_samplers(event.samplers)
        self.say(f"{len(self.models)} models, {len(event.samplers)} samplers")
        if self._pending is not None:
            self._apply(self._pending)

    def _size_defaults(self, model: Model) -> None:
        for wid in ("#width", "#height"):
            field = self.query_one(wid, Input)
            field.placeholder = str(model.native_resolution or "")
            if not field.value and model.native_resolution:
                field.value = str(model.native_resolution)

    async def _show_samplers(self, samplers: SamplerList) -> None:
        self.samplers = samplers
        ids = [s.id for s in samplers]
        default = samplers.default_sampler
        if default not in ids:
            default = ids[0] if ids else ""
        options = ((s.label or s.id, s.id) for s in samplers)
        refill(self.query_one("#sampler", Select), options, default)
        await self._sampler_chosen()

    def sampler(self) -> Sampler | None:
        value = self.query_one("#sampler", Select).value
        if self.samplers is None or not isinstance(value, str):
            return None
        return next((s for s in self.samplers if s.id == value), None)

    @on(Select.Changed, "#sampler")
    async def sampler_changed(self) -> None:
        await self._sampler_chosen()

    async def _sampler_chosen(self) -> None:
        sampler = self.sampler()
        settings = self.query_one(SamplerSettings)
        if sampler == settings.sampler:  # the same schema (a reload): keep what was typed
            return
        await settings.show_sampler(sampler)
        schedule = self.query_one("#schedule", Select)
        if sampler is None:
            schedule.set_options([])
            return
        labels = {s.id: s.label or s.id for s in (self.samplers.schedules if self.samplers else [])}
        schedule.set_options((labels.get(s, s), s) for s in sampler.schedules)
        if sampler.default_schedule in sampler.schedules:
            schedule.value = sampler.default_schedule
        steps = self.query_one("#steps", Input)
        steps.placeholder = str(sampler.default_steps or "")

    @on(Select.Changed, "#model")
    def model_changed(self, event: Select.Changed) -> None:
        model = next((m for m in self.models if m.id == event.value), None)
        if model is not None:
            self._size_defaults(model)
            self.load_samplers(model.id)

    @work(exclusive=True, group="samplers")
    async def load_samplers(self, model_id: str) -> None:
        try:
            samplers = await self.client.list_samplers(model_id=model_id)
        except Exception as exc:
            self.post_message(self.Failed(exc, "samplers"))
            return
        self.post_message(self.SamplersLoaded(samplers))

    @on(SamplersLoaded)
    async def samplers_loaded(self, event: SamplersLoaded) -> None:
        if self.samplers is None or [s.id for s in self.samplers] != [s.id for s in event.samplers]:
            await self._show_samplers(event.samplers)

    # --------------------------------------------------------------------------- seed

    @on(Checkbox.Changed, "#seed-random")
    def seed_mode(self, event: Checkbox.Changed) -> None:
        seed = self.query_one("#seed", Input)
        seed.disabled = event.value
        if not event.value and not seed.value:
            last = self.last_seed
            seed.value = str(last if last is not None else random.randrange(2**32))

    def action_toggle_seed(self) -> None:
        box = self.query_one("#seed-random", Checkbox)
        box.value = not box.value

    # ------------------------------------------------------------------------ request

    def params(self) -> tuple[str, GenerateParams]:
        """The prompt and options from the form (raises InvalidArgument for bad local input)."""
        prompt = self.query_one("#prompt", Input).value.strip()
        params = form_params(self, FORM_FIELDS)
        if not self.query_one("#seed-random", Checkbox).value:
            params.update(form_params(self, {"seed": "seed"}))
        options = self.query_one(SamplerSettings).values()
        if options:
            params["sampler_options"] = options
        if self.query_one("#hires", Checkbox).value:
            params["hires"] = self.hires_params()
        params["preview_interval"] = 1
        return prompt, params

    def hires_params(self) -> dict[str, Any]:
        """The hires fix fields set in the form (blank = the service's default)."""
        upscaler = self.query_one("#hires-upscaler", Select).value
        fields = {
            "upscaler": upscaler if isinstance(upscaler, str) else None,
            "steps": parse_int(self.query_one("#hires-steps", Input).value, "hires.steps"),
            "denoising_strength": parse_float(
                self.query_one("#hires-strength", Input).value, "hires.denoising_strength"),
        }
        return {k: v for k, v in fields.items() if v is not None}

    def action_generate(self) -> None:
        if self.running:
            self.notify("a generation is already running (escape cancels it)")
            return
        self.clear_field_errors()
        try:
            prompt, params = self.params()
        except Exception as exc:
            self.report_error(exc, "generate")
            return
        self.running = True
        self._clear_results = True
        self.query_one(JobProgress).reset("starting…")
        self.query_one("#generate-button", Button).disabled = True
        self.say("generating…")
        self.run_generation(prompt, params)

    @on(Button.Pressed, "#generate-button")
    def generate_pressed(self) -> None:
        self.action_generate()

    @on(Input.Submitted, "#prompt")
    def prompt_submitted(self) -> None:
        self.action_generate()

    @work(exclusive=True, group="generate")
    async def run_generation(self, prompt: str, params: GenerateParams) -> None:
        try:
            stream = self.client.stream_generate(prompt, **params)
            self.job_id = stream.job_id
            self.studio.generations[stream.job_id] = stream
            async with stream:
                async for event in stream:
                    self.post_message(self.Event(event))
        except Exception as exc:
            self.post_message(self.Failed(exc, "generate"))
        finally:
            self.post_message(self.Ended())

    def action_cancel(self) -> None:
        if self.running and self.job_id:
            self.say("cancelling…")
            self.studio.cancel_generation(self.job_id)

    @on(Event)
    def generation_event(self, message: Event) -> None:
        event = message.event
        progress = self.query_one(JobProgress)
        if self._clear_results:  # the request was accepted: its results replace the last ones
            self._clear_results = False
            self.query_one("#results", HorizontalScroll).remove_children()
            self.query_one("#seed-used", Static).update("")
        if isinstance(event, Queued):
            progress.reset(f"queued (position {event.position})")
        elif isinstance(event, Started):
            seeds = ", ".join(str(s) for s in event.seeds)
            self.last_seed = event.seeds[0] if event.seeds else self.last_seed
            self.query_one("#seed-used", Static).update(f"Seed used: {seeds}")
            progress.show(0, event.steps or 1, f"started · {event.sampler} {event.schedule}")
        elif isinstance(event, ModelDownload):
            progress.download(event.bytes_done, event.bytes_total)
        elif isinstance(event, Progress):
            images = (
                f" · image {event.images_done + 1}/{event.images_total}"
                if event.images_total > 1
                else ""
            )
            progress.show(
                event.step,
                event.total,
                f"step {event.step}/{event.total}{images} {eta_text(event.eta)}",
            )
            if event.preview:
                set_image(self.query_one("#preview"), event.preview)
        elif isinstance(event, ImageReady):
            img = event.image
            if img.ok:
                caption = f"seed {img.seed}" + (f" · {img.image_id}" if img.image_id else "")
                tile = ResultTile(img.png, caption, self.studio.image_method, image_id=img.image_id)
                self.query_one("#results", HorizontalScroll).mount(tile)
                set_image(self.query_one("#preview"), img.png)
            else:
                self.notify(
                    f"image {img.index}: {img.finish_reason.value} {img.message}",
                    severity="warning",
                )
        elif isinstance(event, Finished):
            if event.status is GenerationStatus.SUCCEEDED:
                progress.finish(f"done in {event.total_seconds:.1f}s")
                self.say(f"{event.image_count} image(s) added to the gallery")
            elif event.status is GenerationStatus.CANCELLED:
                progress.reset("cancelled")
                self.say("generation cancelled")
            else:
                progress.reset(f"failed: {event.error_reason}")
                self.say(f"generation failed: {event.error_message or event.error_reason}")
        elif isinstance(event, WarningEvent):
            self.notify(event.warning.message, severity="warning")

    def failed(self, event: StudioScreen.Failed) -> None:
        if event.what == "generate":
            self.query_one(JobProgress).reset("failed")
        super().failed(event)

    @on(Ended)
    def ended(self) -> None:
        self.running = False
        self.studio.generations.pop(self.job_id, None)
        self.query_one("#generate-button", Button).disabled = False

    # ------------------------------------------------------------------------ reuse

    def receive(self, payload: Any) -> None:
        if isinstance(payload, GalleryImage):
            self._pending = payload
            if self.models:
                self._apply(payload)
        elif isinstance(payload, Model):
            if payload.id in [m.id for m in self.models]:
                self.query_one("#model", Select).value = payload.id
            else:  # new since the list was loaded: reload, then select it
                self._want_model = payload.id
                self.load_catalog()
            self.say(
                f"model {payload.id}"
                + (f" · trigger: {payload.trigger_phrase}" if payload.trigger_phrase else "")
            )

    def _apply(self, img: GalleryImage) -> None:
        """Fill the form with a gallery image's settings (seed fixed to the one it used)."""
        self._pending = None
        self.query_one("#prompt", Input).value = img.prompt
        self.query_one("#negative_prompt", Input).value = img.negative_prompt
        p = img.params
        if img.model_id in [m.id for m in self.models]:
            self.query_one("#model", Select).value = img.model_id
        if self.samplers is not None and img.sampler in [s.id for s in self.samplers]:
            self.query_one("#sampler", Select).value = img.sampler
        for name, value in (
            ("width", img.width),
            ("height", img.height),
            ("steps", img.steps),
            ("count", 1),
        ):
            if value:
                self.query_one(f"#{name}", Input).value = str(value)
        if img.cfg_scale:
            self.query_one("#cfg_scale", Input).value = f"{img.cfg_scale:g}"
        hires = p.get("hires")
        self._apply_hires(hires if isinstance(hires, HiresFix) else None)
        self.query_one("#seed-random", Checkbox).value = False
        seed = self.query_one("#seed", Input)
        seed.disabled = False
        seed.value = str(img.seed)
        self.call_after_refresh(
            self._apply_late, img.schedule, dict(p.get("sampler_options") or {})
        )
        self.say(f"settings of {img.image_id} loaded (seed {img.seed})")

    def _apply_hires(self, hires: HiresFix | None) -> None:
        """A reused image's hires fix settings (or hires fix off)."""
        self.query_one("#hires", Checkbox).value = hires is not None
        if hires is None:
            return
        if hires.upscaler:
            self.query_one("#hires-upscaler", Select).value = hires.upscaler
        for wid, value in (("#hires-steps", hires.steps or None),
                           ("#hires-strength", hires.denoising_strength)):
            self.query_one(wid, Input).value = "" if value is None else f"{value:g}"

    def _apply_late(self, schedule: str, options: dict[str, Any]) -> None:
        if schedule:
            with contextlib.suppress(InvalidSelectValueError):
                self.query_one("#schedule", Select).value = schedule
        for name, value in options.items():
            try:
                widget = self.query_one(f"#opt-{name}")
            except Exception:
                continue
            if isinstance(widget, Input):
                widget.value = str(value)
