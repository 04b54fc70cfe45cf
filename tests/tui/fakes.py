"""A stand-in for `AsyncBoothStudio` with fixed answers, for the snapshot tests (real services
draw images whose pixels may move with the CPU's float rounding, and list images with
timestamps) and for flows a real service cannot stage on cue (a generation slow enough to
cancel, a resumed job's history). The same flows against real services: test_e2e.py."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from copy import copy, deepcopy
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from boothstudio.clients.sdk import (
    DeleteImagesResult,
    Finished,
    GalleryImage,
    GeneratedImage,
    GenerateEvent,
    GenerationStatus,
    ImageReady,
    InvalidArgument,
    Model,
    ModelFormat,
    ModelKind,
    Page,
    Parameter,
    ParameterType,
    PredictionType,
    Progress,
    Sampler,
    SamplerList,
    Schedule,
    ServiceHealth,
    Started,
    StateChanged,
    TrainingEvent,
    TrainingJob,
    TrainingMetrics,
    TrainingProgress,
    TrainingState,
)
from boothstudio.clients.sdk._base import training_spec


def scene_png(colour: str, shape: str, background: str, size: int = 64) -> bytes:
    img = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(img)
    box = (size // 4, size // 4, 3 * size // 4, 3 * size // 4)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    else:
        draw.rectangle(box, fill=colour)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


MODELS = [
    Model(
        "boothstudio-tiny",
        "BoothStudio tiny (embedded)",
        ModelKind.BASE,
        "diffusers",
        "tiny-sd",
        64,
        PredictionType.EPSILON,
        format=ModelFormat.DIFFUSERS,
        builtin=True,
        size_bytes=34_000_000,
        source_path="/models/embedded",
        description="The small model BoothStudio ships with.",
    ),
    Model(
        "zwx-dog",
        "zwx dog (LoRA)",
        ModelKind.LORA,
        "diffusers",
        "tiny-sd",
        64,
        format=ModelFormat.LORA,
        base_model_id="boothstudio-tiny",
        trigger_phrase="zwx dog",
        size_bytes=3_100_000,
    ),
]

#: a textual-inversion embedding as the Catalog lists one
EMBEDDING = Model(
    "glow-style",
    "glow-style.safetensors",
    ModelKind.EMBEDDING,
    "diffusers",
    "tiny-sd",
    64,
    format=ModelFormat.EMBEDDING,
    trigger_phrase="glow-style",
    size_bytes=2_200,
    source_path="/models/glow-style.safetensors",
    embedding_vectors=4,
    embedding_widths=[128],
)

ETA = Parameter("eta", ParameterType.FLOAT, 0.0, 0.0, 1.0, help="DDIM noise per step", label="Eta")
S_NOISE = Parameter("s_noise", ParameterType.FLOAT, 1.0, 0.0, 2.0, label="Noise scale")
S_CHURN = Parameter("s_churn", ParameterType.FLOAT, 0.0, 0.0, 100.0, label="Churn")
LOWER = Parameter("lower_order_final", ParameterType.BOOL, True, label="Lower order final")

SAMPLERS = SamplerList(
    [
        Sampler(
            "euler", "Euler", [], ["normal", "karras"], "normal", [S_CHURN, S_NOISE], "ODE", 20
        ),
        Sampler("euler_a", "Euler a", [], ["normal"], "normal", [ETA, S_NOISE], "Ancestral", 20),
        Sampler("dpmpp_2m", "DPM++ 2M", [], ["normal", "karras"], "karras", [LOWER], "2M", 20),
        Sampler("ddim", "DDIM", [], ["normal"], "normal", [ETA], "Implicit", 20),
        Sampler("plms", "PLMS", [], ["normal"], "normal", [], "PNDM", 20),
    ],
    [Schedule("normal", "Normal"), Schedule("karras", "Karras")],
    "euler_a",
    "diffusers",
)

WHEN = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)

GALLERY = [
    GalleryImage(
        f"img-{i}",
        "job-1",
        WHEN.replace(minute=i),
        prompt=prompt,
        seed=1000 + i,
        width=64,
        height=64,
        model_id="boothstudio-tiny",
        sampler="euler_a",
        schedule="normal",
        steps=4,
        cfg_scale=7.5,
        generation_seconds=0.25,
    )
    for i, prompt in enumerate(
        [
            "a red circle on a blue background",
            "a green square on a white background",
            "a yellow circle on a black background",
        ]
    )
]
PNGS = {
    "img-0": scene_png("red", "circle", "blue"),
    "img-1": scene_png("green", "square", "white"),
    "img-2": scene_png("yellow", "circle", "black"),
}


class FakeStream:
    def __init__(self, prompt: str, params: dict[str, Any], step_delay: float = 0.0) -> None:
        self.job_id = "job-fake"
        self.params = params
        self.step_delay = step_delay
        self.cancelled = False

    async def cancel(self) -> bool:
        self.cancelled = True
        return True

    async def __aenter__(self) -> FakeStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __aiter__(self) -> AsyncIterator[GenerateEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[GenerateEvent]:
        steps = int(self.params.get("steps", 4))
        if not 1 <= steps <= 150:
            raise InvalidArgument(violations=[("steps", "must be between 1 and 150")])
        yield Started(self.job_id, "boothstudio-tiny", "diffusers", "euler_a", "normal", [42], 1)
        for s in range(1, steps + 1):
            await asyncio.sleep(self.step_delay)
            if self.cancelled:
                yield Finished(self.job_id, GenerationStatus.CANCELLED, 0, [])
                return
            yield Progress(self.job_id, s, steps, eta=0.1 * (steps - s))
        png = PNGS["img-0"]
        yield ImageReady(self.job_id, GeneratedImage(0, 42, png, "img-new", 64, 64))
        yield Finished(self.job_id, GenerationStatus.SUCCEEDED, 1, ["img-new"], total_seconds=0.4)


class FakeClient:
    """The async SDK surface the studio uses, answering from the tables above."""

    def __init__(self, gallery: bool = True, step_delay: float = 0.0) -> None:
        self.gallery = list(GALLERY) if gallery else []
        self.models = list(MODELS)
        self.imports: list[tuple[str, dict[str, Any]]] = []
        self.step_delay = step_delay
        self.streams: list[FakeStream] = []
        self.jobs = {j.job_id: copy(j) for j in JOBS}
        #: Each job's events; those from index `live[job]` on happen while it is watched.
        self.history: dict[str, list[TrainingEvent]] = {
            "job-zwx": [],
            "job-cat": list(CAT_HISTORY),
        }
        self.live: dict[str, int] = {}

    async def close(self) -> None:
        return None

    async def health(self, *, timeout: float = 2.0) -> list[ServiceHealth]:
        return [
            ServiceHealth("catalog", "127.0.0.1:1", "SERVING"),
            ServiceHealth("generator", "127.0.0.1:2", "SERVING"),
            ServiceHealth("trainer", "127.0.0.1:3", "SERVING"),
        ]

    async def list_models(self, **kw: Any) -> Page[Model]:
        return Page(list(self.models))

    async def import_model(self, source: str, **kw: Any) -> Model:
        """Registers what the real Catalog would for an embedding file (other kinds: a base)."""
        kind = ModelKind(kw.get("kind") or ModelKind.BASE)
        model_id = kw.get("model_id") or Path(source).stem
        model = (replace(EMBEDDING, id=model_id, trigger_phrase=model_id)
                 if kind is ModelKind.EMBEDDING else replace(MODELS[0], id=model_id, builtin=False))
        self.imports.append((source, kw))
        self.models.insert(0, model)
        return model

    async def list_samplers(self, **kw: Any) -> SamplerList:
        return deepcopy(SAMPLERS)  # new objects per answer, as from the service

    async def list_images(self, **kw: Any) -> Page[GalleryImage]:
        return Page(list(self.gallery))

    async def get_image(self, image_id: str, **kw: Any) -> GalleryImage:
        img = next(i for i in self.gallery if i.image_id == image_id)
        img.png = PNGS[image_id]
        return img

    async def delete_images(self, image_ids: list[str], **kw: Any) -> DeleteImagesResult:
        before = len(self.gallery)
        self.gallery = [i for i in self.gallery if i.image_id not in image_ids]
        return DeleteImagesResult(before - len(self.gallery))

    def stream_generate(self, prompt: str, **params: Any) -> FakeStream:
        self.streams.append(FakeStream(prompt, params, self.step_delay))
        return self.streams[-1]

    async def list_training_jobs(self, **kw: Any) -> Page[TrainingJob]:
        return Page([copy(j) for j in self.jobs.values()])

    async def get_training_job(self, job_id: str, **kw: Any) -> TrainingJob:
        return copy(self.jobs[job_id])

    async def create_training_job(self, images: str, **settings: Any) -> TrainingJob:
        """Checked by the SDK's own code (unknown settings raise InvalidArgument); the job is
        queued, and succeeds while it is watched."""
        training_spec(images, None, settings, "", "")
        job = TrainingJob(
            "job-new",
            "zwx cat",
            TrainingState.QUEUED,
            0,
            4,
            created_at=WHEN.replace(hour=14),
            trigger_phrase="zwx cat",
        )
        self.jobs[job.job_id] = job
        self.history[job.job_id] = [
            replace(e, job_id=job.job_id) for e in CAT_HISTORY[:4] + CAT_RESUMED[2:]
        ]
        self.live[job.job_id] = 0
        return copy(job)

    async def resume_training_job(self, job_id: str, **kw: Any) -> TrainingJob:
        """The job runs again: watched from now on, it goes on to succeed."""
        job = self.jobs[job_id]
        job.state, job.resumable = TrainingState.QUEUED, False
        self.live[job_id] = len(self.history[job_id])
        self.history[job_id] += CAT_RESUMED
        return copy(job)

    def watch_training_job(self, job_id: str, **kw: Any) -> FakeWatch:
        return FakeWatch(self, job_id)


class FakeWatch:
    """The history of a job, then its live events (which change the job as they happen)."""

    def __init__(self, client: FakeClient, job_id: str) -> None:
        self.client, self.job_id = client, job_id

    async def __aenter__(self) -> FakeWatch:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def __aiter__(self) -> AsyncIterator[TrainingEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[TrainingEvent]:
        job = self.client.jobs[self.job_id]
        live = self.client.live.get(self.job_id, 1_000_000)
        for i, event in enumerate(self.client.history[self.job_id]):
            if i >= live:
                await asyncio.sleep(0.01)
                if isinstance(event, StateChanged):
                    job.state = event.state
                if isinstance(event, TrainingProgress):
                    job.step = event.metrics.step
                if isinstance(event, StateChanged) and event.state is TrainingState.SUCCEEDED:
                    job.output_model_id = f"zwx-cat-{self.job_id}"  # its model joins the catalog
                    self.client.models.append(
                        replace(MODELS[1], id=job.output_model_id, training_job_id=self.job_id)
                    )
            yield event


def state(job_id: str, seq: int, before: TrainingState, after: TrainingState) -> StateChanged:
    return StateChanged(job_id, seq, before, after)


JOBS = [
    TrainingJob(
        "job-zwx",
        "zwx dog",
        TrainingState.SUCCEEDED,
        40,
        40,
        output_model_id="zwx-dog",
        created_at=WHEN,
    ),
    TrainingJob(
        "job-cat",
        "zwx cat",
        TrainingState.CANCELLED,
        2,
        4,
        created_at=WHEN.replace(hour=13),
        trigger_phrase="zwx cat",
        resumable=True,
        last_metrics=TrainingMetrics(2, 4, 0.2, eta=3.0),
    ),
]
S = TrainingState
CAT_HISTORY: list[TrainingEvent] = [
    state("job-cat", 1, S.UNSPECIFIED, S.QUEUED),
    state("job-cat", 2, S.QUEUED, S.RUNNING),
    TrainingProgress("job-cat", 3, TrainingMetrics(1, 4, 0.3, eta=6.0)),
    TrainingProgress("job-cat", 4, TrainingMetrics(2, 4, 0.2, eta=3.0)),
    state("job-cat", 5, S.RUNNING, S.CANCELLING),
    state("job-cat", 6, S.CANCELLING, S.CANCELLED),
]
CAT_RESUMED: list[TrainingEvent] = [
    state("job-cat", 7, S.CANCELLED, S.QUEUED),
    state("job-cat", 8, S.QUEUED, S.RUNNING),
    TrainingProgress("job-cat", 9, TrainingMetrics(3, 4, 0.15, eta=1.5)),
    TrainingProgress("job-cat", 10, TrainingMetrics(4, 4, 0.1, eta=0.0)),
    state("job-cat", 11, S.RUNNING, S.SUCCEEDED),
]
