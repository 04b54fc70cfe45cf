"""Train: create a DreamBooth job (images folder, or a kohya-style folder of several concepts;
identifier, class, prior preservation, steps, LoRA or full; min-SNR gamma, offset noise, aspect
buckets, validation prompts scored per checkpoint, export of the best checkpoint), then watch it
live: state, step, ETA, loss curve, checkpoints with their scores, samples; cancel, resume, and
jump to the model it produced."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, HorizontalScroll, Vertical, VerticalScroll
from textual.message import Message
from textual.widgets import (
    Button,
    Checkbox,
    Collapsible,
    DataTable,
    Input,
    Label,
    OptionList,
    Select,
    Sparkline,
    Static,
)
from textual.widgets.option_list import Option
from textual_plotext import PlotextPlot

from boothstudio.clients.sdk import (
    Checkpoint,
    CheckpointSaved,
    ClassImagesProgress,
    Model,
    SampleReady,
    StateChanged,
    TrainingEvent,
    TrainingJob,
    TrainingOptions,
    TrainingProgress,
    TrainingState,
    TrainingWarning,
)
from boothstudio.clients.sdk.concepts import kohya_concepts
from boothstudio.clients.sdk.errors import invalid
from boothstudio.clients.sdk.text import parse_option
from boothstudio.clients.tui.screens.base import StudioScreen, newest_first
from boothstudio.clients.tui.widgets.fields import (
    FormField,
    model_label,
    parse_float,
    parse_int,
    refill,
)
from boothstudio.clients.tui.widgets.results import JobProgress, ResultTile, eta_text

METHODS = [("LoRA (small adapter)", "lora"), ("Full fine-tune", "full")]


def parse_extra(text: str) -> dict[str, Any]:
    """``key=value`` pairs separated by spaces (numbers and true/false converted)."""
    out: dict[str, Any] = {}
    for pair in text.split():
        if "=" not in pair:
            raise invalid("extra", f"expected key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key] = parse_option(value)
    return out


def parse_prompts(text: str) -> list[str]:
    """Validation prompts typed in one line, separated by ";" (prompts may hold commas)."""
    return [p.strip() for p in text.split(";") if p.strip()]


class SubjectField(FormField):
    """A field of the one-subject job: a complaint about one of several concepts
    (config.concepts[1].identifier) is the concepts folder's, not this field's."""

    def claimed(self, path: str) -> str | None:
        return None if "concepts[" in path else super().claimed(path)


class ConceptsField(FormField):
    """The concepts folder: claims every complaint about a concept, naming the concept."""

    def claimed(self, path: str) -> str | None:
        if "concepts[" in path or path.endswith("concepts") or path == "kohya":
            return path.removeprefix("config.")
        return None


def checkpoint_rows(checkpoints: list[Checkpoint]) -> list[tuple[str, str, str]]:
    """One row per checkpoint id (its full state and its export share a score): id, step,
    validation score (blank where unscored, the best marked)."""
    by_id: dict[str, Checkpoint] = {}
    for c in sorted(checkpoints, key=lambda c: c.step):
        if c.checkpoint_id not in by_id or c.validation_score is not None:
            by_id[c.checkpoint_id] = c
    scored = [c for c in by_id.values() if c.validation_score is not None]
    best = max(scored, key=lambda c: c.validation_score or 0.0).checkpoint_id if scored else ""
    return [
        (
            cid,
            str(c.step),
            ""
            if c.validation_score is None
            else f"{c.validation_score:.4g}" + (" ★ best" if cid == best else ""),
        )
        for cid, c in by_id.items()
    ]


def job_line(job: TrainingJob) -> str:
    """A job in the list: its name, and its id (the jobs of one subject share a name)."""
    status = f"{job.job_id} · {job.state.value} · {job.step}/{job.total_steps}"
    return f"{job.display_name}\n  {status}" if job.display_name else status


class LossPlot(PlotextPlot):
    """The loss curve, replotted as metrics arrive."""

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.steps: list[int] = []
        self.losses: list[float] = []

    def on_mount(self) -> None:
        super().on_mount()
        self.replot()

    def reset(self) -> None:
        self.steps, self.losses = [], []
        self.replot()

    def add(self, step: int, loss: float) -> None:
        if self.steps and step <= self.steps[-1]:
            return
        self.steps.append(step)
        self.losses.append(loss)
        self.replot()

    def replot(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("loss")
        plt.xlabel("step")
        if self.steps:
            plt.plot(self.steps, self.losses, marker="braille")
        self.refresh()


class TrainScreen(StudioScreen):
    MODE = "train"
    TITLE_TEXT = "Train"

    BINDINGS = [
        Binding("ctrl+n", "create", "Create job"),
        Binding("ctrl+r", "refresh", "Refresh jobs"),
        Binding("ctrl+x", "cancel_job", "Cancel job"),
        Binding("ctrl+u", "resume_job", "Resume job"),
        Binding("ctrl+o", "open_model", "Open model"),
    ]

    @dataclass
    class Loaded(Message):
        jobs: list[TrainingJob]
        models: list[Model] | None

    @dataclass
    class JobUpdated(Message):
        job: TrainingJob
        watch: bool = False

    @dataclass
    class Event(Message):
        event: TrainingEvent

    def __init__(self) -> None:
        super().__init__()
        self.jobs: list[TrainingJob] = []
        self.job: TrainingJob | None = None
        #: the watched job's checkpoints as its CheckpointSaved events tell them (with their
        #: validation scores, which the job's own checkpoint list does not carry)
        self.saved: list[Checkpoint] = []

    def compose_body(self) -> ComposeResult:
        with Horizontal(id="train-body", classes="body"):
            with VerticalScroll(id="train-form", classes="form"):
                yield Label("New DreamBooth job", classes="section")
                yield SubjectField(
                    "Images folder",
                    Input(placeholder="folder with 3-10 photos", id="train-images"),
                    field=["images", "dataset_id", "instance_images"],
                )
                yield FormField(
                    "Base model", Select[str]([], id="train-base"), field="base_model_id"
                )
                with Horizontal(classes="row"):
                    yield SubjectField(
                        "Identifier",
                        Input(placeholder="e.g. zwx", id="identifier"),
                        field="identifier",
                    )
                    yield SubjectField(
                        "Class", Input(placeholder="e.g. dog", id="class_noun"), field="class_noun"
                    )
                with Horizontal(classes="row"):
                    yield FormField(
                        "Steps",
                        Input(type="integer", placeholder="default", id="max_train_steps"),
                        field="max_train_steps",
                    )
                    yield FormField(
                        "Method",
                        Select(METHODS, value="lora", allow_blank=False, id="method"),
                        field=["method", "lora"],
                    )
                yield FormField(
                    "Prior preservation",
                    Checkbox("class images keep the class general", False, id="prior"),
                    field="prior_preservation",
                )
                yield FormField(
                    "Model name",
                    Input(placeholder="optional", id="output_model_name"),
                    field="output_model_name",
                )
                # collapsed: the form keeps its height (the jobs list stays in view); a field
                # in here the service complains about opens it
                with Collapsible(
                    title="Concepts, loss, validation", collapsed=True, id="train-options"
                ):
                    yield ConceptsField(
                        "Several concepts: kohya folder",
                        Input(placeholder="subfolders '<repeats>_<id> <class>'", id="train-kohya"),
                        field=["kohya", "concepts"],
                        name_fields=True,
                    )
                    with Horizontal(classes="row"):
                        yield FormField(
                            "Min-SNR gamma",
                            Input(type="number", placeholder="off, e.g. 5", id="min_snr_gamma"),
                            field="min_snr_gamma",
                        )
                        yield FormField(
                            "Offset noise",
                            Input(type="number", placeholder="off, e.g. 0.05", id="offset_noise"),
                            field="offset_noise",
                        )
                    yield FormField(
                        "Aspect buckets",
                        Checkbox("pictures keep their aspect ratio", False, id="aspect_buckets"),
                        field="aspect_buckets",
                    )
                    yield FormField(
                        "Validation prompts",
                        Input(placeholder="prompts separated by ;", id="validation_prompts"),
                        field=["validation_prompts", "config.validation_prompts"],
                    )
                    with Horizontal(classes="row"):
                        yield FormField(
                            "Checkpoint scorer",
                            Input(placeholder="module:name", id="validation_scorer"),
                            field="validation_scorer",
                        )
                        yield FormField(
                            "Export",
                            Checkbox("the best", False, id="export_best_checkpoint"),
                            field="export_best_checkpoint",
                        )
                yield FormField(
                    "More options",
                    Input(placeholder="key=value …  (e.g. resolution=64)", id="extra"),
                    field="extra",
                    id="extra-field",
                    name_fields=True,
                )
                yield Button("Create job  ctrl+n", variant="primary", id="train-create")
                yield Label("Jobs", classes="section")
                yield OptionList(id="jobs")
            with Vertical(id="train-watch"):
                yield Static("No job selected.", id="job-title")
                yield Static("", id="job-state")
                yield JobProgress(id="job-progress")
                # scrolls on short terminals; the buttons below stay in view
                with VerticalScroll(id="watch-details"):
                    yield LossPlot(id="loss-plot")
                    yield Sparkline([], id="loss-spark")
                    yield Label("Checkpoints", classes="section")
                    yield DataTable(id="job-checkpoints", cursor_type="none", zebra_stripes=True)
                    yield Label("Samples", classes="section")
                    yield HorizontalScroll(id="samples", classes="panel")
                with Horizontal(classes="row buttons", id="job-buttons"):
                    yield Button("Cancel  ctrl+x", variant="error", id="job-cancel", disabled=True)
                    yield Button("Resume  ctrl+u", id="job-resume", disabled=True)
                    yield Button("Open model", variant="success", id="job-model", disabled=True)

    def on_mount(self) -> None:
        super().on_mount()
        self.query_one("#job-checkpoints", DataTable).add_columns("Checkpoint", "Step", "Score")
        self.load(with_models=True)

    def reload_models(self) -> None:
        self.load(with_models=True)

    # --------------------------------------------------------------------------- listing

    def action_refresh(self) -> None:
        self.load(with_models=True)

    @work(exclusive=True, group="list")
    async def load(self, with_models: bool = False) -> None:
        try:
            jobs = await self.client.list_training_jobs(page_size=100)
            models = None
            if with_models:
                models = list((await self.client.list_models(page_size=200)).items)
        except Exception as exc:
            self.post_message(self.Failed(exc, "trainer"))
            return
        self.post_message(self.Loaded(list(jobs.items), models))

    @on(Loaded)
    def loaded(self, event: Loaded) -> None:
        self.jobs = newest_first(event.jobs)
        jobs = self.query_one("#jobs", OptionList)
        index = jobs.highlighted
        kept = jobs.get_option_at_index(index).id if index is not None else None
        jobs.clear_options()
        jobs.add_options(Option(job_line(j), id=j.job_id) for j in self.jobs)
        ids = [j.job_id for j in self.jobs]
        if kept in ids:  # a reload keeps the highlighted job
            jobs.highlighted = ids.index(kept)
        if event.models is not None:
            bases = [
                m for m in event.models if m.kind.value in ("base", "fine_tuned", "unspecified")
            ]
            default = next((m.id for m in bases if m.builtin), bases[0].id if bases else "")
            options = ((model_label(m), m.id) for m in bases)
            refill(self.query_one("#train-base", Select), options, default)

    @on(OptionList.OptionSelected, "#jobs")
    def job_chosen(self, event: OptionList.OptionSelected) -> None:
        job = next((j for j in self.jobs if j.job_id == event.option.id), None)
        if job is not None:
            self.post_message(self.JobUpdated(job, watch=True))

    # ---------------------------------------------------------------------------- create

    def options(self) -> tuple[str | None, TrainingOptions]:
        folder = self.query_one("#train-images", Input).value.strip()
        kohya = self.query_one("#train-kohya", Input).value.strip()
        if not folder and not kohya:
            raise invalid("images", "choose the folder with the subject's photos")
        if folder and kohya:
            raise invalid("kohya", "give the images folder or a concepts folder, not both")
        opts: dict[str, Any] = {}
        if kohya:  # one concept per '<repeats>_<identifier> <class>' subfolder, uploaded each
            opts["concepts"] = kohya_concepts(kohya)
        base = self.query_one("#train-base", Select).value
        if isinstance(base, str):
            opts["base_model_id"] = base
        for name in ("identifier", "class_noun", "output_model_name"):
            value = self.query_one(f"#{name}", Input).value.strip()
            if value:
                opts[name] = value
        steps = parse_int(self.query_one("#max_train_steps", Input).value, "max_train_steps")
        if steps is not None:
            opts["max_train_steps"] = steps
        opts["method"] = self.query_one("#method", Select).value
        opts["prior_preservation"] = self.query_one("#prior", Checkbox).value
        for name in ("min_snr_gamma", "offset_noise"):
            number = parse_float(self.query_one(f"#{name}", Input).value, name)
            if number is not None:
                opts[name] = number
        for name in ("aspect_buckets", "export_best_checkpoint"):
            if self.query_one(f"#{name}", Checkbox).value:
                opts[name] = True
        prompts = parse_prompts(self.query_one("#validation_prompts", Input).value)
        if prompts:
            opts["validation_prompts"] = prompts
        scorer = self.query_one("#validation_scorer", Input).value.strip()
        if scorer:
            opts["validation_scorer"] = scorer
        extra = parse_extra(self.query_one("#extra", Input).value)
        # the service's complaint about a setting given here lands on this field
        self.query_one("#extra-field", FormField).fields = ["extra", *extra]
        opts.update(extra)
        return folder or None, opts  # type: ignore[return-value]

    def report_error(self, exc: BaseException, what: str = "") -> None:
        super().report_error(exc, what)
        options = self.query_one("#train-options", Collapsible)
        if any(f.has_class("-invalid") for f in options.query(FormField)):
            options.collapsed = False

    def action_create(self) -> None:
        self.clear_field_errors()
        try:
            folder, opts = self.options()
        except Exception as exc:
            self.report_error(exc, "training")
            return
        self.query_one("#train-create", Button).disabled = True
        self.say("uploading images and creating the job…")
        self.create_job(folder, opts)

    @on(Button.Pressed, "#train-create")
    def create_pressed(self) -> None:
        self.action_create()

    @work(exclusive=True, group="create")
    async def create_job(self, folder: str | None, opts: TrainingOptions) -> None:
        try:
            job = await self.client.create_training_job(folder, **opts)
        except Exception as exc:
            self.post_message(self.Failed(exc, "create"))
            return
        self.post_message(self.JobUpdated(job, watch=True))
        self.post_message(self.Done(f"job {job.display_name or job.job_id} created"))
        self.load()

    # ----------------------------------------------------------------------------- watch

    @on(JobUpdated)
    def job_updated(self, event: JobUpdated) -> None:
        self.query_one("#train-create", Button).disabled = False
        job = event.job
        fresh = self.job is None or self.job.job_id != job.job_id
        self.job = job
        if fresh:
            self.query_one(LossPlot).reset()
            self.query_one("#loss-spark", Sparkline).data = []
            self.query_one("#samples", HorizontalScroll).remove_children()
        if fresh or event.watch:  # a watch replays the job's history, checkpoints included
            self.saved = []
        self._show_job(job)
        self._show_checkpoints()
        if event.watch:
            self.watch_job(job.job_id)

    def _show_job(self, job: TrainingJob) -> None:
        self.query_one("#job-title", Static).update(
            f"[b]{job.display_name or job.job_id}[/b]  {job.trigger_phrase}"
        )
        detail = f"state: {job.state.value}"
        if job.failure_message:
            detail += f" · {job.failure_reason}: {job.failure_message}"
        if job.output_model_id:
            detail += f" · model {job.output_model_id}"
        self.query_one("#job-state", Static).update(detail)
        running = job.last_metrics is not None and not job.state.terminal
        eta = eta_text(job.last_metrics.eta) if job.last_metrics and running else ""
        self.query_one(JobProgress).show(
            job.step, job.total_steps or 1, f"step {job.step}/{job.total_steps} {eta}".rstrip()
        )
        self._buttons(job)

    def _show_checkpoints(self) -> None:
        """The job's checkpoints (listed by the job, and saved as the watch told) and scores."""
        listed = self.job.checkpoints if self.job is not None else []
        table = self.query_one("#job-checkpoints", DataTable)
        table.clear()
        table.add_rows(checkpoint_rows([*listed, *self.saved]))

    def _buttons(self, job: TrainingJob) -> None:
        self.query_one("#job-cancel", Button).disabled = job.state.terminal
        self.query_one("#job-resume", Button).disabled = not (job.state.terminal and job.resumable)
        self.query_one("#job-model", Button).disabled = not job.output_model_id

    @work(exclusive=True, group="watch")
    async def watch_job(self, job_id: str) -> None:
        try:
            async with self.client.watch_training_job(job_id, include_history=True) as watch:
                async for event in watch:
                    self.post_message(self.Event(event))
                    # The history of a resumed job holds an earlier end ("cancelled"): the
                    # watch ends only when the job itself has ended.
                    if isinstance(event, StateChanged) and event.state.terminal:
                        job = await self.client.get_training_job(job_id)
                        if job.state.terminal:
                            break
            job = await self.client.get_training_job(job_id)
        except Exception as exc:
            self.post_message(self.Failed(exc, "watch"))
            return
        self.post_message(self.JobUpdated(job))
        self.load()

    @on(Event)
    def training_event(self, message: Event) -> None:
        event = message.event
        if self.job is None or event.job_id != self.job.job_id:
            return
        state = self.query_one("#job-state", Static)
        if isinstance(event, StateChanged):
            self.job.state = event.state
            text = f"state: {event.state.value}"
            if event.message:
                text += f" · {event.message}"
            state.update(text)
            self._buttons(self.job)
            if event.state is TrainingState.SUCCEEDED:
                self.query_one(JobProgress).finish("finished")
                self.studio.models_changed()
            elif event.state.terminal:  # no ETA left
                self.query_one(JobProgress).show(
                    self.job.step, self.job.total_steps or 1, event.state.value
                )
            if event.state.terminal:
                self.say(f"job {self.job.display_name or self.job.job_id} {event.state.value}")
        elif isinstance(event, TrainingProgress):
            m = event.metrics
            self.job.step = m.step
            self.job.total_steps = m.total_steps
            self.query_one(JobProgress).show(
                m.step,
                m.total_steps or 1,
                f"step {m.step}/{m.total_steps} · loss {m.loss:.4f} {eta_text(m.eta)}",
            )
            self.query_one(LossPlot).add(m.step, m.loss)
            self.query_one("#loss-spark", Sparkline).data = list(self.query_one(LossPlot).losses)
        elif isinstance(event, SampleReady) and event.png:
            caption = f"step {event.step} · seed {event.seed}"
            self.query_one("#samples", HorizontalScroll).mount(
                ResultTile(event.png, caption, self.studio.image_method)
            )
        elif isinstance(event, CheckpointSaved):
            self.saved.append(event.checkpoint)
            self._show_checkpoints()
        elif isinstance(event, ClassImagesProgress):
            state.update(f"state: preparing · class images {event.ready}/{event.total}")
        elif isinstance(event, TrainingWarning):
            self.notify(event.warning.message, severity="warning")

    # -------------------------------------------------------------------- cancel / resume

    def action_cancel_job(self) -> None:
        if self.job is not None and not self.job.state.terminal:
            self.job_call("cancel", self.job.job_id)

    def action_resume_job(self) -> None:
        if self.job is not None and self.job.state.terminal:
            self.job_call("resume", self.job.job_id)

    @on(Button.Pressed, "#job-cancel")
    def cancel_pressed(self) -> None:
        self.action_cancel_job()

    @on(Button.Pressed, "#job-resume")
    def resume_pressed(self) -> None:
        self.action_resume_job()

    @work(group="job-call")
    async def job_call(self, what: str, job_id: str) -> None:
        try:
            if what == "cancel":
                job = await self.client.cancel_training_job(job_id)
            else:
                job = await self.client.resume_training_job(job_id)
        except Exception as exc:
            self.post_message(self.Failed(exc, what))
            return
        self.post_message(self.JobUpdated(job, watch=what == "resume"))

    async def action_open_model(self) -> None:
        if self.job is not None and self.job.output_model_id:
            await self.studio.hand_over("models", self.job.output_model_id)

    @on(Button.Pressed, "#job-model")
    async def model_pressed(self) -> None:
        await self.action_open_model()

    def failed(self, event: StudioScreen.Failed) -> None:
        self.query_one("#train-create", Button).disabled = False
        super().failed(event)
