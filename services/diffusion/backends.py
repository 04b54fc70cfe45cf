"""Static description of the generation backend kinds: capabilities, samplers, backend options.

Light (no torch): the Catalog lists backends and their samplers from here without importing the
Generator; the Generator's adapters return the same description from `describe()`. Translating a
request into a backend's own parameters is NOT here: that lives in each adapter
(services/generator/adapters/<backend>/).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from boothstudio.services.settings import ServiceSettings

from .samplers import SAMPLERS, ParamSpec, SamplerSpec


@dataclass(frozen=True)
class Capabilities:
    txt2img: bool = True
    img2img: bool = True
    inpaint: bool = True
    training: bool = False
    previews: bool = True
    cancel: bool = True


@dataclass(frozen=True)
class BackendKindInfo:
    kind: str  # "diffusers" | "a1111" | "hosted"
    label: str
    capabilities: Capabilities
    sampler_ids: tuple[str, ...]
    #: schema of GenerateRequest.backend_options this backend accepts
    options: tuple[ParamSpec, ...] = ()
    default_sampler: str = "dpmpp_2m"

    def samplers(self) -> list[SamplerSpec]:
        return [SAMPLERS[s] for s in self.sampler_ids]


CLIP_SKIP = ParamSpec(
    "clip_skip",
    "int",
    1,
    "CLIP skip",
    "Use the text encoder's n-th last layer (1 = last, 2 = penultimate).",
    1,
    4,
)

LORA_SCALE = ParamSpec(
    "lora_scale",
    "float",
    1.0,
    "LoRA strength",
    "How strongly a LoRA model's adapter is applied to its base model (0 = base model alone).",
    0.0,
    2.0,
)

# Stability AI's REST API (v1 generation): its `sampler` enum for our sampler ids. It has no
# noise-schedule field: each sampler runs on the service's own schedule.
HOSTED_SAMPLERS: dict[str, str] = {
    "ddim": "DDIM",
    "euler": "K_EULER",
    "euler_a": "K_EULER_ANCESTRAL",
    "heun": "K_HEUN",
    "lms": "K_LMS",
    "dpm2": "K_DPM_2",
    "dpm2_a": "K_DPM_2_ANCESTRAL",
    "dpmpp_2m": "K_DPMPP_2M",
}
HOSTED_STYLE_PRESETS = (
    "3d-model", "analog-film", "anime", "cinematic", "comic-book", "digital-art", "enhance",
    "fantasy-art", "isometric", "line-art", "low-poly", "modeling-compound", "neon-punk",
    "origami", "photographic", "pixel-art", "tile-texture",
)  # fmt: skip

BACKEND_KINDS: dict[str, BackendKindInfo] = {
    "diffusers": BackendKindInfo(
        "diffusers",
        "Local diffusers",
        Capabilities(training=True),
        tuple(SAMPLERS),
        (CLIP_SKIP, LORA_SCALE),
    ),
    "a1111": BackendKindInfo(
        "a1111",
        "AUTOMATIC1111 webui",
        Capabilities(training=False),
        tuple(s.id for s in SAMPLERS.values() if s.a1111),
        (
            CLIP_SKIP,
            ParamSpec("restore_faces", "bool", False, "Restore faces", "Run the face restorer."),
            ParamSpec("tiling", "bool", False, "Tiling", "Make the image tile seamlessly."),
        ),
    ),
    "hosted": BackendKindInfo(
        "hosted",
        "Stability AI REST API (hosted)",
        # one HTTP call per image: no step previews; cancelling stops before the next image
        Capabilities(training=False, previews=False),
        tuple(HOSTED_SAMPLERS),
        (
            ParamSpec("style_preset", "choice", "", "Style preset",
                      "Guide the image towards a style (empty = none).",
                      choices=("", *HOSTED_STYLE_PRESETS)),
            ParamSpec("clip_guidance_preset", "choice", "NONE", "CLIP guidance",
                      "CLIP guidance preset (ancestral samplers only).",
                      choices=("NONE", "FAST_BLUE", "FAST_GREEN", "SIMPLE", "SLOW", "SLOWER",
                               "SLOWEST")),
        ),
    ),
}


@dataclass(frozen=True)
class RemoteEndpoint:
    """Where a remote backend answers, and how to knock (Catalog pings it, Generator uses it)."""

    kind: str
    url: str
    api_key: str = ""

    @property
    def health_path(self) -> str:
        """A cheap GET that succeeds only when the backend is up (and the key is good)."""
        return {"a1111": "/sdapi/v1/samplers", "hosted": "/v1/engines/list"}[self.kind]

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


HOSTED_DEFAULT_URL = "https://api.stability.ai"


class RemoteBackendSettings(ServiceSettings):
    """Settings of the remote backends, shared by the Catalog (which lists and pings them) and
    the Generator (which runs them)."""

    a1111_url: str = Field(
        "",
        description="base URL of an AUTOMATIC1111 webui started with --api: enables the "
        "a1111 backend",
        json_schema_extra={"env": "BOOTHSTUDIO_A1111_URL"},
    )
    hosted_api_key: str = Field(
        "",
        description="API key of Stability AI's REST API: enables the hosted backend",
        json_schema_extra={"env": "BOOTHSTUDIO_HOSTED_API_KEY"},
    )
    hosted_url: str = Field(
        HOSTED_DEFAULT_URL,
        description="base URL of the hosted API",
        json_schema_extra={"env": "BOOTHSTUDIO_HOSTED_URL"},
    )


def remote_backends(settings: RemoteBackendSettings) -> dict[str, RemoteEndpoint]:
    """The remote backends a service's settings enable, by backend id."""
    out: dict[str, RemoteEndpoint] = {}
    if settings.a1111_url:
        out["a1111"] = RemoteEndpoint("a1111", settings.a1111_url.rstrip("/"))
    if settings.hosted_api_key:
        url = settings.hosted_url or HOSTED_DEFAULT_URL
        out["hosted"] = RemoteEndpoint("hosted", url.rstrip("/"), settings.hosted_api_key)
    return out
