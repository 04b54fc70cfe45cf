"""Model previews through a real Catalog: a kohya LoRA registered with the picture beside it
(A1111/ComfyUI's <stem>.preview.png), with the thumbnail kohya embeds (modelspec.thumbnail), or
with the bytes the request gives (which win over both); GetModelPreview returns a PNG of at
most 512 px a side; bad bytes refused on `preview` with nothing registered; a file's unusable
picture skipped with a warning; deleting the model removes its preview; the SDK's calls and
`boothstudio models import --preview` / `models preview -o`."""

from __future__ import annotations

import base64
import contextlib
import io
from pathlib import Path

import grpc
import pytest
from PIL import Image

from boothstudio.clients.sdk import BoothStudio, InvalidArgument, NotFound
from boothstudio.clients.sdk.cli import main
from boothstudio.shared.errors import decode_rpc_error
from boothstudio.v1 import catalog_pb2 as pb
from boothstudio.v1 import catalog_pb2_grpc
from tests.diffusion.lora_files import kohya_by_hand, lora_tensors, write_lora
from tests.helpers import ServiceProcess, free_port

LORA = pb.MODEL_KIND_LORA
RED, GREEN, BLUE = (220, 30, 30), (30, 200, 40), (30, 40, 220)


def picture(size: tuple[int, int], colour: tuple[int, int, int], fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format=fmt)
    return out.getvalue()


def data_uri(data: bytes, mime: str = "image/jpeg") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


@pytest.fixture(scope="module")
def catalog(module_services, tiny_model: Path) -> ServiceProcess:  # type: ignore[no-untyped-def]
    svc: ServiceProcess = module_services("catalog", env={
        "BOOTHSTUDIO_EMBEDDED_MODEL": str(tiny_model),
        "BOOTHSTUDIO_GENERATOR_ADDRESS": f"127.0.0.1:{free_port()}",
        "BOOTHSTUDIO_TRAINER_ADDRESS": f"127.0.0.1:{free_port()}",
    })
    catalog_pb2_grpc.CatalogServiceStub(svc.channel()).ImportModel(
        pb.ImportModelRequest(diffusers_path=str(tiny_model), model_id="tiny"))
    return svc


@pytest.fixture(scope="module")
def stub(catalog: ServiceProcess) -> catalog_pb2_grpc.CatalogServiceStub:
    return catalog_pb2_grpc.CatalogServiceStub(catalog.channel())


@pytest.fixture(scope="module")
def kohya_tensors(tiny_model: Path):  # type: ignore[no-untyped-def]
    return kohya_by_hand(lora_tensors(tiny_model, seed=7))


def import_lora(stub, path: Path, model_id: str, **kw: object) -> pb.ImportModelResponse:  # type: ignore[no-untyped-def]
    return stub.ImportModel(pb.ImportModelRequest(
        single_file_path=str(path), kind=LORA, model_id=model_id,
        origin=pb.ModelOrigin(base_model_id="tiny"), **kw))


def preview_of(stub, model_id: str) -> Image.Image:  # type: ignore[no-untyped-def]
    resp = stub.GetModelPreview(pb.GetModelPreviewRequest(model_id=model_id))
    img = Image.open(io.BytesIO(resp.png))
    assert img.format == "PNG" and (img.width, img.height) == (resp.width, resp.height)
    assert max(img.size) <= 512
    return img


def centre(img: Image.Image) -> tuple[int, ...]:
    return img.convert("RGB").getpixel((img.width // 2, img.height // 2))  # type: ignore[return-value]


def close(got: tuple[int, ...], want: tuple[int, int, int], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(got, want, strict=True))


def preview_file(catalog: ServiceProcess, model_id: str) -> Path:
    return catalog.data_dir / "catalog" / "previews" / f"{model_id}.png"


def test_a_sidecar_picture_becomes_a_small_png_preview(
    stub, catalog: ServiceProcess, kohya_tensors, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    lora = write_lora(tmp_path / "style.safetensors", kohya_tensors)
    (tmp_path / "style.preview.png").write_bytes(picture((1024, 640), RED))
    m = import_lora(stub, lora, "side").model
    assert m.has_preview
    img = preview_of(stub, "side")
    assert img.size == (512, 320) and close(centre(img), RED)
    assert preview_file(catalog, "side").is_file()
    listed = {x.id: x.has_preview for x in stub.ListModels(pb.ListModelsRequest(kind=LORA)).models}
    assert listed["side"] is True

    # A1111's other name (<stem>.jpg) is found too
    other = write_lora(tmp_path / "other" / "blue.safetensors", kohya_tensors)
    (other.parent / "blue.jpg").write_bytes(picture((300, 200), BLUE, "JPEG"))
    assert close(centre(preview_of(stub, import_lora(stub, other, "side-jpg").model.id)), BLUE)


def test_the_thumbnail_a_kohya_file_embeds_wins_over_a_sidecar(
    stub, kohya_tensors, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    lora = write_lora(tmp_path / "emb.safetensors", kohya_tensors, {
        "modelspec.thumbnail": data_uri(picture((96, 64), GREEN, "JPEG"))})
    (tmp_path / "emb.png").write_bytes(picture((64, 64), RED))
    m = import_lora(stub, lora, "embedded").model
    assert m.has_preview and not m.trigger_phrase.startswith("data:")
    img = preview_of(stub, "embedded")
    assert img.size == (96, 64) and close(centre(img), GREEN)  # small pictures are not enlarged


def test_request_bytes_win_and_bad_ones_are_refused_by_field_with_nothing_registered(
    stub, catalog: ServiceProcess, kohya_tensors, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    lora = write_lora(tmp_path / "req.safetensors", kohya_tensors, {
        "modelspec.thumbnail": data_uri(picture((64, 64), GREEN, "JPEG"))})
    (tmp_path / "req.preview.png").write_bytes(picture((64, 64), RED))
    m = import_lora(stub, lora, "given", preview=picture((800, 800), BLUE, "WEBP")).model
    img = preview_of(stub, m.id)
    assert img.size == (512, 512) and close(centre(img), BLUE)

    models_before = sorted(p.name for p in (catalog.data_dir / "catalog").rglob("*"))
    for bad in (b"not a picture", picture((64, 64), RED)[:80], picture((64, 64), RED, "GIF")):
        with pytest.raises(grpc.RpcError) as err:
            import_lora(stub, lora, "refused", preview=bad, copy_files=True)
        d = decode_rpc_error(err.value)
        assert (d.code, list(d.fields)) == (grpc.StatusCode.INVALID_ARGUMENT, ["preview"])
    with pytest.raises(grpc.RpcError) as err:
        stub.GetModel(pb.GetModelRequest(model_id="refused"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert sorted(p.name for p in (catalog.data_dir / "catalog").rglob("*")) == models_before


def test_an_unusable_embedded_thumbnail_is_skipped_with_a_warning(
    stub, kohya_tensors, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    lora = write_lora(tmp_path / "odd.safetensors", kohya_tensors, {
        "modelspec.thumbnail": "data:image/png;base64,bm90IGEgcGljdHVyZQ=="})
    (tmp_path / "odd.webp").write_bytes(picture((64, 32), BLUE, "WEBP"))
    resp = import_lora(stub, lora, "odd")
    assert [w.reason for w in resp.warnings] == ["PREVIEW_UNUSABLE"]
    assert "modelspec.thumbnail" in resp.warnings[0].message
    assert close(centre(preview_of(stub, "odd")), BLUE)

    bare = write_lora(tmp_path / "bare" / "none.safetensors", kohya_tensors)
    assert not import_lora(stub, bare, "no-preview").model.has_preview


def test_no_preview_is_not_found_by_field_and_delete_removes_it(
    stub, catalog: ServiceProcess, kohya_tensors, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    lora = write_lora(tmp_path / "gone.safetensors", kohya_tensors)
    (tmp_path / "gone.preview.png").write_bytes(picture((64, 64), RED))
    import_lora(stub, lora, "doomed")
    assert preview_file(catalog, "doomed").is_file()
    stub.DeleteModel(pb.DeleteModelRequest(model_id="doomed"))
    assert not preview_file(catalog, "doomed").exists()
    for model_id, reason in (("doomed", "NOT_FOUND"), ("tiny", "PREVIEW_NOT_FOUND")):
        with pytest.raises(grpc.RpcError) as err:
            stub.GetModelPreview(pb.GetModelPreviewRequest(model_id=model_id))
        d = decode_rpc_error(err.value)
        assert (d.code, d.reason, list(d.fields)) == (
            grpc.StatusCode.NOT_FOUND, reason, ["model_id"])
    # the same id again, without a picture: no preview of the deleted model comes back
    bare = write_lora(tmp_path / "again" / "gone.safetensors", kohya_tensors)
    assert not import_lora(stub, bare, "doomed").model.has_preview


def test_the_sdk_imports_with_a_preview_file_and_fetches_it(
    catalog: ServiceProcess, kohya_tensors, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    lora = write_lora(tmp_path / "sdk.safetensors", kohya_tensors)
    (tmp_path / "cover.jpg").write_bytes(picture((640, 1280), GREEN, "JPEG"))
    with BoothStudio(catalog.address, timeout=60) as client:
        m = client.import_model(lora, kind="lora", base_model_id="tiny", model_id="sdk-lora",
                                preview=tmp_path / "cover.jpg")
        assert m.has_preview and client.get_model("sdk-lora").has_preview
        img = Image.open(io.BytesIO(client.get_model_preview("sdk-lora")))
        assert img.size == (256, 512) and close(centre(img), GREEN)
        with pytest.raises(NotFound) as missing:
            client.get_model_preview("tiny")
        assert missing.value.fields == ["model_id"]
        with pytest.raises(InvalidArgument) as bad:
            client.import_model(lora, kind="lora", base_model_id="tiny", model_id="sdk-bad",
                                preview=b"\x89PNG but not really")
        assert bad.value.fields == ["preview"]


def test_the_cli_imports_with_a_preview_and_saves_it(
    catalog: ServiceProcess, kohya_tensors, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    lora = write_lora(tmp_path / "cli.safetensors", kohya_tensors)
    cover = tmp_path / "cover.png"
    cover.write_bytes(picture((600, 300), RED))
    addr = ["--catalog", catalog.address]
    assert cli(*addr, "models", "import", str(lora), "--kind", "lora", "--base-model", "tiny",
               "--id", "cli-lora", "--preview", str(cover))[0] == 0
    out = tmp_path / "saved.png"
    code, stdout = cli(*addr, "models", "preview", "cli-lora", "-o", str(out))
    assert (code, stdout.strip()) == (0, str(out))
    assert Image.open(out).size == (512, 256)
    code, _ = cli(*addr, "models", "preview", "tiny", "-o", str(tmp_path / "none.png"))
    assert code != 0 and not (tmp_path / "none.png").exists()


def cli(*args: str) -> tuple[int, str]:
    """The `boothstudio` CLI's main() in this process: (exit code, stdout)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = main(list(args))
    return code, out.getvalue()
