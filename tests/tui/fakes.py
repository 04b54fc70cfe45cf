"""A stand-in for `AsyncBoothStudio` with fixed answers, for the snapshot tests only: real
services draw images whose pixels may move with the CPU's float rounding, and list images
with timestamps. Everything else in tests/tui runs against the real services."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from PIL import Image, ImageDraw

from boothstudio.clients.sdk import (
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
    TrainingJob,
    TrainingState,
)


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
    def __init__(self, prompt: str, params: dict[str, Any]) -> None:
        self.job_id = "job-fake"
        self.params = params

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
            yield Progress(self.job_id, s, steps, eta=0.1 * (steps - s))
        png = PNGS["img-0"]
        yield ImageReady(self.job_id, GeneratedImage(0, 42, png, "img-new", 64, 64))
        yield Finished(self.job_id, GenerationStatus.SUCCEEDED, 1, ["img-new"], total_seconds=0.4)


class FakeClient:
    """The async SDK surface the studio uses, answering from the tables above."""

    def __init__(self, gallery: bool = True) -> None:
        self.gallery = list(GALLERY) if gallery else []

    async def close(self) -> None:
        return None

    async def health(self, *, timeout: float = 2.0) -> list[ServiceHealth]:
        return [
            ServiceHealth("catalog", "127.0.0.1:1", "SERVING"),
            ServiceHealth("generator", "127.0.0.1:2", "SERVING"),
            ServiceHealth("trainer", "127.0.0.1:3", "SERVING"),
        ]

    async def list_models(self, **kw: Any) -> Page[Model]:
        return Page(list(MODELS))

    async def list_samplers(self, **kw: Any) -> SamplerList:
        return SAMPLERS

    async def list_images(self, **kw: Any) -> Page[GalleryImage]:
        return Page(list(self.gallery))

    async def get_image(self, image_id: str, **kw: Any) -> GalleryImage:
        img = next(i for i in self.gallery if i.image_id == image_id)
        img.png = PNGS[image_id]
        return img

    def stream_generate(self, prompt: str, **params: Any) -> FakeStream:
        return FakeStream(prompt, params)

    async def list_training_jobs(self, **kw: Any) -> Page[TrainingJob]:
        return Page(
            [
                TrainingJob(
                    "job-zwx",
                    "zwx dog",
                    TrainingState.SUCCEEDED,
                    40,
                    40,
                    output_model_id="zwx-dog",
                    created_at=WHEN,
                )
            ]
        )
