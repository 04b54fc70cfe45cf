"""LoRA import through a real Catalog: kohya/A1111 and diffusers/PEFT files, for the tiny SD and a
tiny SDXL (lora_te1_/lora_te2_), registered with their base's architecture, trigger words from
kohya's metadata, the layout in the description; LoRAs made for another model refused by field."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
import torch

from boothstudio.shared.errors import decode_rpc_error
from boothstudio.v1 import catalog_pb2 as pb
from boothstudio.v1 import catalog_pb2_grpc
from tests.diffusion.lora_files import kohya_by_hand, lora_tensors, tag_frequency, write_lora
from tests.diffusion.tiny_sdxl import build_tiny_sdxl
from tests.helpers import ServiceProcess, free_port

LORA = pb.MODEL_KIND_LORA


@pytest.fixture(scope="module")
def tiny_sdxl(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-sdxl")
    build_tiny_sdxl(out, tiny_model / "tokenizer")
    return out


@pytest.fixture(scope="module")
def stub(module_services, tiny_model: Path, tiny_sdxl: Path):  # type: ignore[no-untyped-def]
    catalog: ServiceProcess = module_services("catalog", env={
        "BOOTHSTUDIO_EMBEDDED_MODEL": str(tiny_model),
        "BOOTHSTUDIO_GENERATOR_ADDRESS": f"127.0.0.1:{free_port()}",
        "BOOTHSTUDIO_TRAINER_ADDRESS": f"127.0.0.1:{free_port()}",
    })
    s = catalog_pb2_grpc.CatalogServiceStub(catalog.channel())
    s.ImportModel(pb.ImportModelRequest(diffusers_path=str(tiny_model), model_id="tiny"))
    s.ImportModel(pb.ImportModelRequest(diffusers_path=str(tiny_sdxl), model_id="tiny-xl"))
    return s


def import_lora(stub, path: Path, base: str, **kw: object) -> pb.ImportModelResponse:  # type: ignore[no-untyped-def]
    return stub.ImportModel(pb.ImportModelRequest(
        single_file_path=str(path), kind=LORA, origin=pb.ModelOrigin(base_model_id=base), **kw))


def refused(stub, path: Path, base: str, **kw: object) -> tuple[grpc.StatusCode, str, list[str]]:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        import_lora(stub, path, base, **kw)
    d = decode_rpc_error(err.value)
    return d.code, d.reason, list(d.fields)


def test_both_layouts_of_sd_and_sdxl_are_registered_with_their_base(
    stub, tiny_model: Path, tiny_sdxl: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    tensors = lora_tensors(tiny_model, seed=1)
    diffusers_file = write_lora(tmp_path / "style.safetensors", tensors)
    m = import_lora(stub, diffusers_file, "tiny", model_id="style-d",
                    trigger_phrase="in zwx style").model
    assert (m.kind, m.format, m.architecture) == (LORA, pb.MODEL_FORMAT_LORA, "tiny-sd")
    assert m.trigger_phrase == "in zwx style"
    assert "diffusers/PEFT layout, rank 4, adapts unet + text_encoder" in m.description

    kohya_file = write_lora(tmp_path / "kohya" / "style.safetensors", kohya_by_hand(tensors),
                            tag_frequency({"zwx dog": 20, "grass": 4, "sitting": 9}))
    m = import_lora(stub, kohya_file, "tiny", model_id="style-k").model
    assert m.architecture == "tiny-sd" and m.origin.base_model_id == "tiny"
    assert m.trigger_phrase == "zwx dog, sitting, grass"  # kohya's most frequent caption tags
    assert "kohya/A1111 layout" in m.description

    xl = lora_tensors(tiny_sdxl, seed=2, parts=("unet", "text_encoder", "text_encoder_2"))
    xl_file = write_lora(tmp_path / "xl.safetensors", kohya_by_hand(xl, sdxl=True),
                         {"modelspec.trigger_phrase": "a zwx cat"})
    m = import_lora(stub, xl_file, "tiny-xl", model_id="xl-k").model
    assert m.architecture == "sdxl" and m.trigger_phrase == "a zwx cat"
    assert "adapts unet + text_encoder + text_encoder_2" in m.description
    listed = stub.ListModels(pb.ListModelsRequest(kind=LORA, base_model_id="tiny")).models
    assert {x.id for x in listed} == {"style-d", "style-k"}


def test_loras_made_for_another_model_are_refused_by_field(
    stub, tiny_model: Path, tiny_sdxl: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    tiny_file = write_lora(tmp_path / "tiny.safetensors", lora_tensors(tiny_model, seed=3))
    code, reason, fields = refused(stub, tiny_file, "tiny-xl")
    assert (code, reason, fields) == (grpc.StatusCode.INVALID_ARGUMENT, "LORA_MISMATCH",
                                      ["origin.base_model_id"])
    xl_file = write_lora(tmp_path / "xl.safetensors",
                         lora_tensors(tiny_sdxl, seed=4, parts=("unet",)))
    assert refused(stub, xl_file, "tiny")[2] == ["origin.base_model_id"]
    # shapes of a real SD 1.x LoRA, asked in as SDXL
    sd1 = write_lora(tmp_path / "sd1.safetensors", {
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight":
            torch.zeros(4, 768),
        "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight":
            torch.zeros(768, 4)})
    assert refused(stub, sd1, "tiny", architecture="sdxl")[1:] == ("LORA_MISMATCH",
                                                                   ["architecture"])
    # ... and onto the tiny model (128-wide text encoder)
    assert refused(stub, sd1, "tiny")[2] == ["origin.base_model_id"]


def test_files_that_are_no_lora_and_bad_bases_are_refused_by_field(
    stub, tiny_model: Path, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    loha = write_lora(tmp_path / "loha.safetensors",
                      {"lora_unet_down_blocks_1_x_to_q.hada_w1_a": torch.zeros(2, 2)})
    assert refused(stub, loha, "tiny") == (grpc.StatusCode.INVALID_ARGUMENT, "LORA_UNREADABLE",
                                           ["single_file_path"])
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    assert refused(stub, junk, "tiny")[1:] == ("LORA_UNREADABLE", ["single_file_path"])
    assert refused(stub, tmp_path / "gone.safetensors", "tiny")[:1] == (
        grpc.StatusCode.NOT_FOUND,)
    good = write_lora(tmp_path / "ok.safetensors", lora_tensors(tiny_model, seed=5))
    import_lora(stub, good, "tiny", model_id="ok-lora")
    assert refused(stub, good, "ok-lora")[2] == ["origin.base_model_id"]  # a LoRA as base
    with pytest.raises(grpc.RpcError) as err:
        stub.ImportModel(pb.ImportModelRequest(single_file_path=str(good), kind=LORA))
    assert decode_rpc_error(err.value).fields == ["origin.base_model_id"]
