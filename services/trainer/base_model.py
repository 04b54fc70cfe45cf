"""The base model of a new job, asked of the Catalog and checked for fine-tuning.

The trainer fine-tunes SD 1.x/2.x models, and trains LoRAs of SDXL models, whose weights are a
diffusers folder, a cached HF model or a single file with a config folder; the job keeps a plain
dict of what the worker needs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc

from boothstudio.services.trainer.identifiers import Vocabulary
from boothstudio.shared.artifact_store import ArtifactMissing, ArtifactStore
from boothstudio.shared.errors import FieldViolation, Unavailable
from boothstudio.v1 import catalog_pb2, catalog_pb2_grpc, trainer_pb2

FIELD = "config.base_model_id"
FORMATS = {catalog_pb2.MODEL_FORMAT_DIFFUSERS: "diffusers",
           catalog_pb2.MODEL_FORMAT_HF_CACHE: "hf_cache",
           catalog_pb2.MODEL_FORMAT_SINGLE_FILE: "single_file"}


async def look_up(catalog: catalog_pb2_grpc.CatalogServiceStub, catalog_address: str,
                  model_id: str, method: int = trainer_pb2.TRAINING_METHOD_UNSPECIFIED
                  ) -> tuple[dict[str, Any] | None, FieldViolation | None, bool]:
    """(the base model, or what is wrong with it for a job of `method`, and whether it is
    missing altogether)."""
    if not model_id:
        return None, None, False  # resolve() names the missing field
    try:
        resp = await catalog.GetModel(catalog_pb2.GetModelRequest(model_id=model_id), timeout=10)
    except grpc.aio.AioRpcError as err:
        if err.code() == grpc.StatusCode.NOT_FOUND:
            return None, FieldViolation(FIELD, f"no model {model_id!r} in the Catalog"), True
        if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
            return None, FieldViolation(FIELD, err.details() or "invalid model id"), False
        raise Unavailable(f"Catalog unreachable at {catalog_address}: "
                          f"{err.code().name}", retry_after=2.0) from err
    m = resp.model
    problem = ""
    if m.kind == catalog_pb2.MODEL_KIND_LORA:
        problem = (f"{model_id!r} is a LoRA adapter; fine-tune its base model "
                   f"{m.origin.base_model_id!r} instead")
    elif m.format not in FORMATS or (m.format == catalog_pb2.MODEL_FORMAT_SINGLE_FILE
                                     and not m.config_path):
        problem = (f"{model_id!r} cannot be fine-tuned: its weights are not a diffusers "
                   "folder, a cached HF model or a single file with a config folder")
    elif m.architecture == "sdxl" and method != trainer_pb2.TRAINING_METHOD_LORA:
        # the full export (diffusers folder + single file) is SD 1.x/2.x only
        return None, FieldViolation(
            "config.method", f"{model_id!r} is SDXL: SDXL bases train LoRAs only for now "
            "(method TRAINING_METHOD_LORA); full fine-tuning is SD 1.x/2.x"), False
    if problem:
        return None, FieldViolation(FIELD, problem), False
    return {"id": m.id, "source_path": m.source_path, "format": FORMATS[m.format],
            "config_path": m.config_path,
            "native_resolution": m.native_resolution,
            "prediction_type": catalog_pb2.PredictionType.Name(m.prediction_type),
            "architecture": m.architecture}, None, False


def vocabulary(base: dict[str, Any] | None,
               artifacts: ArtifactStore | None = None) -> Vocabulary | None:
    """The base model's tokenizer vocabulary (for picking a rare identifier), from its local
    folder or from the artifact store; None for a cached HF model or no model. Blocking."""
    if not base or base["format"] not in ("diffusers", "single_file"):
        return None
    folder = base["source_path"] if base["format"] == "diffusers" else base["config_path"]
    if artifacts is not None and artifacts.is_remote_location(folder):
        key = artifacts.key_of(folder)
        for name in ("vocab.json", "tokenizer.json"):
            try:
                data = json.loads(artifacts.get_bytes(f"{key}/tokenizer/{name}"))
            except (ArtifactMissing, ValueError):
                continue
            tokens = data if name == "vocab.json" else data.get("model", {}).get("vocab", {})
            return Vocabulary(set(tokens)) if isinstance(tokens, dict) else None
        return None
    return Vocabulary.from_model_dir(Path(folder))
