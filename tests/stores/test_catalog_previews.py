"""Model previews when scaled out: two Catalog replicas on one PostgreSQL database and one S3
bucket (moto's server). A LoRA the Trainer left in the bucket, with a picture beside it in the
same folder, is imported on one replica; its preview is an object under catalog/previews/ that
the other replica serves; deleting the model on the other replica (a real Trainer on the same
database answers that no job uses it) removes that object.

Rerun: `.venv/bin/pytest tests/stores/test_catalog_previews.py -v`
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image

from boothstudio.services.diffusion.loading import EMBEDDED_MODEL_DIR
from boothstudio.shared.artifact_store import open_artifact_store
from boothstudio.v1 import catalog_pb2 as pb
from boothstudio.v1 import catalog_pb2_grpc
from tests.diffusion.lora_files import kohya_by_hand, lora_tensors, write_lora
from tests.stores.helpers import isolated_env
from tests.stores.s3 import MotoServer


def test_a_preview_found_in_the_bucket_is_served_by_every_replica_until_deleted(
    module_services: Any, s3_server: MotoServer, database_url: str, tmp_path: Path
) -> None:
    bucket = s3_server.new_bucket("catalog-previews")
    store = open_artifact_store(bucket.url, tmp_path / "data", bucket.options)
    export = tmp_path / "export"
    lora = write_lora(export / "ink.safetensors",
                      kohya_by_hand(lora_tensors(EMBEDDED_MODEL_DIR, seed=9)))
    Image.new("RGB", (900, 300), (20, 160, 60)).save(export / "ink.preview.png")
    store.put_tree(export, "trainer/jobs/j9/export/lora")

    # a real Trainer vouches that no job uses the model (scaled out, no answer refuses a delete)
    trainer = module_services("trainer", env=isolated_env(database_url, **bucket.env))
    env = {**isolated_env(database_url, **bucket.env), "BOOTHSTUDIO_TRAINER_ADDRESS":
           trainer.address}
    a, b = (catalog_pb2_grpc.CatalogServiceStub(module_services("catalog", env=env).channel())
            for _ in range(2))
    m = a.ImportModel(pb.ImportModelRequest(
        single_file_path=store.url_of(f"trainer/jobs/j9/export/lora/{lora.name}"),
        model_id="ink", kind=pb.MODEL_KIND_LORA,
        origin=pb.ModelOrigin(base_model_id="boothstudio-tiny"))).model
    assert m.has_preview and b.GetModel(pb.GetModelRequest(model_id="ink")).model.has_preview
    assert bucket.keys("catalog/previews") == ["catalog/previews/ink.png"]
    served = b.GetModelPreview(pb.GetModelPreviewRequest(model_id="ink"))
    assert (served.width, served.height) == (512, 171)
    assert served.png == a.GetModelPreview(pb.GetModelPreviewRequest(model_id="ink")).png
    assert Image.open(io.BytesIO(served.png)).format == "PNG"

    b.DeleteModel(pb.DeleteModelRequest(model_id="ink"))
    assert bucket.keys("catalog/previews") == []
    with pytest.raises(grpc.RpcError) as err:
        a.GetModelPreview(pb.GetModelPreviewRequest(model_id="ink"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
