"""A LoRA the Trainer trains is registered with its job's last validation sample as its
preview (Catalog.GetModelPreview returns it)."""

from __future__ import annotations

import io

from PIL import Image

from boothstudio.v1 import catalog_pb2, trainer_pb2
from tests.trainer.helpers import job_config, run_to_success, start_stack


def test_a_trained_lora_has_its_last_sample_as_preview(
    module_services, untrained_model, subject_pngs  # type: ignore[no-untyped-def]
) -> None:
    stack = start_stack(module_services, untrained_model)
    cfg = job_config(stack.base_model_id, subject_pngs[:2], steps=2, sample_every_steps=2,
                     method=trainer_pb2.TRAINING_METHOD_LORA, lora=trainer_pb2.LoraConfig(rank=4))
    job, events = run_to_success(stack, cfg)
    samples = [e.sample for e in events if e.WhichOneof("event") == "sample"]
    assert samples
    model = stack.catalog_stub.GetModel(
        catalog_pb2.GetModelRequest(model_id=job.output_model_id), timeout=30).model
    assert model.kind == catalog_pb2.MODEL_KIND_LORA and model.has_preview
    preview = stack.catalog_stub.GetModelPreview(
        catalog_pb2.GetModelPreviewRequest(model_id=model.id), timeout=30).png
    last = Image.open(io.BytesIO(samples[-1].png)).convert("RGB")
    shown = Image.open(io.BytesIO(preview)).convert("RGB")
    assert shown.size == last.size and shown.tobytes() == last.tobytes()  # small: kept as is
