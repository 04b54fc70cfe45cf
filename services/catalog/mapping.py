"""Catalog data as boothstudio.v1 messages: registry rows, the sampler table, backend kinds.

Registry rows hold proto enum numbers; PREDICTION and FORMATS turn the names the loaders
(services.diffusion.loading) report into those numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from google.protobuf import timestamp_pb2

from boothstudio.services.diffusion.backends import BackendKindInfo
from boothstudio.services.diffusion.samplers import SCHEDULES, ParamSpec, SamplerSpec
from boothstudio.shared.option_values import to_option_value
from boothstudio.v1 import catalog_pb2

PREDICTION = {
    "epsilon": catalog_pb2.PREDICTION_TYPE_EPSILON,
    "v_prediction": catalog_pb2.PREDICTION_TYPE_V_PREDICTION,
    "sample": catalog_pb2.PREDICTION_TYPE_SAMPLE,
}
FORMATS = {
    "diffusers": catalog_pb2.MODEL_FORMAT_DIFFUSERS,
    "single_file": catalog_pb2.MODEL_FORMAT_SINGLE_FILE,
    "hf_cache": catalog_pb2.MODEL_FORMAT_HF_CACHE,
    "lora": catalog_pb2.MODEL_FORMAT_LORA,
    "embedding": catalog_pb2.MODEL_FORMAT_EMBEDDING,
}
BACKEND_PROTO_KIND = {
    "diffusers": catalog_pb2.BACKEND_KIND_DIFFUSERS,
    "a1111": catalog_pb2.BACKEND_KIND_A1111,
    "hosted": catalog_pb2.BACKEND_KIND_HOSTED,
}
PARAMETER_TYPES = {
    "int": catalog_pb2.PARAMETER_TYPE_INT,
    "float": catalog_pb2.PARAMETER_TYPE_FLOAT,
    "bool": catalog_pb2.PARAMETER_TYPE_BOOL,
    "choice": catalog_pb2.PARAMETER_TYPE_CHOICE,
    "string": catalog_pb2.PARAMETER_TYPE_STRING,
}


def to_proto(row: Mapping[str, Any]) -> catalog_pb2.Model:
    """A registry row as a Model."""
    r = dict(row)
    ts = timestamp_pb2.Timestamp()
    ts.FromNanoseconds(int(r["created"] * 1e9))
    return catalog_pb2.Model(
        id=r["id"],
        display_name=r["display_name"],
        kind=r["kind"],
        backend_id=r["backend_id"],
        architecture=r["architecture"],
        native_resolution=r["native_resolution"],
        prediction_type=r["prediction_type"],
        origin=catalog_pb2.ModelOrigin(
            base_model_id=r["base_model_id"], training_job_id=r["training_job_id"]
        ),
        trigger_phrase=r["trigger_phrase"],
        source_path=r["source_path"],
        format=r["format"],
        create_time=ts,
        size_bytes=r["size_bytes"],
        builtin=bool(r["builtin"]),
        inpainting=bool(r["inpainting"]),
        description=r["description"],
        config_path=r["config_path"],
        embedding=embedding_info(r),
        has_preview=bool(r["preview_sha256"]),
    )


def embedding_info(r: Mapping[str, Any]) -> catalog_pb2.EmbeddingInfo | None:
    if r["kind"] != catalog_pb2.MODEL_KIND_EMBEDDING:
        return None
    widths = [int(w) for w in r["embedding_widths"].split(",") if w]
    return catalog_pb2.EmbeddingInfo(
        vectors=r["embedding_vectors"], widths=widths, sha256=r["sha256"]
    )


def parameter_proto(p: ParamSpec) -> catalog_pb2.Parameter:
    msg = catalog_pb2.Parameter(
        name=p.name,
        type=PARAMETER_TYPES[p.type],
        default_value=to_option_value(p.default),
        choices=list(p.choices),
        help=p.help,
        label=p.label,
    )
    if p.min is not None:
        msg.min_value = float(p.min)
    if p.max is not None:
        msg.max_value = float(p.max)
    return msg


def sampler_proto(s: SamplerSpec) -> catalog_pb2.Sampler:
    return catalog_pb2.Sampler(
        id=s.id,
        label=s.label,
        aliases=s.aliases,
        schedules=list(s.schedules),
        default_schedule=s.default_schedule,
        parameters=[parameter_proto(p) for p in s.parameters],
        description=s.description,
        default_steps=s.default_steps,
    )


def samplers_response(info: BackendKindInfo, backend_id: str) -> catalog_pb2.ListSamplersResponse:
    """A backend's samplers, and the schedules at least one of them takes."""
    samplers = info.samplers()
    used = {s for spec in samplers for s in spec.schedules}
    return catalog_pb2.ListSamplersResponse(
        samplers=[sampler_proto(s) for s in samplers],
        schedules=[
            catalog_pb2.Schedule(id=s.id, label=s.label, help=s.help)
            for s in SCHEDULES.values()
            if s.id in used
        ],
        default_sampler=info.default_sampler,
        backend_id=backend_id,
    )


def backend_proto(backend_id: str, info: BackendKindInfo) -> catalog_pb2.Backend:
    """A backend's kind and capabilities; where it runs and whether it answers come after."""
    caps = info.capabilities
    return catalog_pb2.Backend(
        id=backend_id,
        kind=BACKEND_PROTO_KIND[info.kind],
        display_name=info.label,
        capabilities=catalog_pb2.BackendCapabilities(
            txt2img=caps.txt2img,
            img2img=caps.img2img,
            inpaint=caps.inpaint,
            training=caps.training,
            previews=caps.previews,
            cancel=caps.cancel,
        ),
    )
