"""Two Catalog replicas (one PostgreSQL database, one S3 bucket on moto's server) importing the
same model id at the same moment, round after round: a copied diffusers folder (the embedded
model, 14 MB in 12 files, so both copies are under way together) with a preview picture of
each replica's own colour.

Exactly one import wins; the other answers ALREADY_EXISTS (MODEL_EXISTS, on model_id) and
leaves nothing behind. The winner's model stays whole: both replicas describe it, every file its
manifest records is read back with its checksum, its preview (the winner's colour) is served by
both, and deleting it empties catalog/models/<id> and catalog/previews.

Rerun: `.venv/bin/pytest tests/stores/test_catalog_import_race.py -v`
"""

from __future__ import annotations

import io
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from PIL import Image

from boothstudio.services.diffusion.loading import EMBEDDED_MODEL_DIR
from boothstudio.shared.artifact_store import MANIFEST, open_artifact_store
from boothstudio.shared.errors import ErrorDetails, decode_rpc_error
from boothstudio.v1 import catalog_pb2 as pb
from boothstudio.v1 import catalog_pb2_grpc
from tests.stores.helpers import isolated_env
from tests.stores.s3 import S3Target

ROUNDS = 4
COLOURS = [(200, 30, 30), (30, 30, 200)]  # replica A's preview, replica B's


def picture(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (640, 480), colour).save(out, format="PNG")
    return out.getvalue()


def centre(png: bytes) -> tuple[int, ...]:
    img = Image.open(io.BytesIO(png)).convert("RGB")
    return img.getpixel((img.width // 2, img.height // 2))  # type: ignore[return-value]


def test_a_model_id_imported_through_two_replicas_at_once_is_kept_whole_by_the_winner(
    start_service: Any, database_url: str, s3_bucket: S3Target, tmp_path: Path
) -> None:
    store = open_artifact_store(s3_bucket.url, tmp_path / "data", s3_bucket.options)
    # a real Trainer answers that no job uses the model (scaled out, silence refuses a delete)
    trainer = start_service("trainer", env=isolated_env(database_url, **s3_bucket.env))
    env = {**isolated_env(database_url, **s3_bucket.env),
           "BOOTHSTUDIO_TRAINER_ADDRESS": trainer.address}
    with ThreadPoolExecutor(2) as pool:
        replicas = [catalog_pb2_grpc.CatalogServiceStub(svc.channel()) for svc in
                    pool.map(lambda _: start_service("catalog", env=env), "ab")]
    source_files = {p.relative_to(EMBEDDED_MODEL_DIR).as_posix(): p.stat().st_size
                    for p in EMBEDDED_MODEL_DIR.rglob("*") if p.is_file()}

    for round_no in range(ROUNDS):
        model_id = f"raced-{round_no}"
        barrier = threading.Barrier(2)

        def attempt(i: int, model_id: str = model_id,
                    barrier: threading.Barrier = barrier) -> pb.Model | ErrorDetails:
            request = pb.ImportModelRequest(
                diffusers_path=str(EMBEDDED_MODEL_DIR), model_id=model_id, copy_files=True,
                preview=picture(COLOURS[i]))
            barrier.wait(timeout=60)
            try:
                return replicas[i].ImportModel(request, timeout=180).model
            except grpc.RpcError as err:
                return decode_rpc_error(err)

        with ThreadPoolExecutor(2) as pool:
            outcomes = list(pool.map(attempt, range(2)))
        won = [i for i, o in enumerate(outcomes) if isinstance(o, pb.Model)]
        assert len(won) == 1, outcomes
        winner = won[0]
        model, refused = outcomes[winner], outcomes[1 - winner]
        assert isinstance(model, pb.Model) and isinstance(refused, ErrorDetails)
        assert refused.code == grpc.StatusCode.ALREADY_EXISTS, refused
        assert refused.reason == "MODEL_EXISTS" and refused.fields == ["model_id"], refused

        # both replicas describe the winner's model
        for replica in replicas:
            got = replica.GetModel(pb.GetModelRequest(model_id=model_id)).model
            assert (got.source_path, got.size_bytes, got.has_preview) == (
                model.source_path, model.size_bytes, True)
        # its files: every one its manifest records is there, with its checksum
        stored = store.locate(model.source_path)
        assert stored is not None and not stored.inner, model.source_path
        assert {rel: size for rel, (size, _) in stored.manifest.files.items()} == source_files
        for rel, (size, sha256) in stored.manifest.files.items():
            assert len(store.get_bytes(f"{stored.prefix}/{rel}", sha256)) == size
        # nothing of the losing attempt is left beside it
        own = sorted([f"{stored.prefix}/{rel}" for rel in stored.manifest.files]
                     + [f"{stored.prefix}/{MANIFEST}"])
        assert s3_bucket.keys(f"catalog/models/{model_id}") == own
        # its preview is the winner's picture, served by both replicas
        served = [r.GetModelPreview(pb.GetModelPreviewRequest(model_id=model_id))
                  for r in replicas]
        assert served[0].png == served[1].png
        assert (served[0].width, served[0].height) == (512, 384)
        assert all(abs(a - b) <= 12 for a, b in zip(
            centre(served[0].png), COLOURS[winner], strict=True)), (winner, centre(served[0].png))

        freed = replicas[1 - winner].DeleteModel(
            pb.DeleteModelRequest(model_id=model_id, delete_files=True), timeout=120)
        assert freed.freed_bytes == model.size_bytes
        assert s3_bucket.keys(f"catalog/models/{model_id}") == []
        assert s3_bucket.keys("catalog/previews") == []
