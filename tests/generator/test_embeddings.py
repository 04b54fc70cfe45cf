"""Textual-inversion embeddings through a real Catalog + Generator: files in A1111's and
diffusers' layouts made here (random vectors of the tiny model's text-encoder width), imported
per architecture, called up by name in prompts and negative prompts, named in the infotext."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from boothstudio.services.diffusion.loading import EMBEDDED_MODEL_ID
from boothstudio.shared.errors import decode_rpc_error
from boothstudio.v1 import catalog_pb2, generator_pb2
from tests.generator.stack import Stack, arr, run, start_stack, stop_stack, to_image

EMBEDDING = catalog_pb2.MODEL_KIND_EMBEDDING


class NotATensor:
    """Pickled into a .pt file: loading it would need code, so it is refused."""


@pytest.fixture(scope="module")
def stack(tiny_model: Path) -> Iterator[Stack]:
    s = start_stack(tiny_model, ["preload=false"])
    yield s
    stop_stack(s)


@pytest.fixture(scope="module")
def width(tiny_model: Path) -> int:
    return int(json.loads((tiny_model / "text_encoder" / "config.json").read_text())["hidden_size"])


def vectors(n: int, w: int, seed: int) -> torch.Tensor:
    # large enough to move an untrained text encoder's output visibly
    return torch.randn(n, w, generator=torch.Generator().manual_seed(seed)) * 4


def a1111_pt(path: Path, tensor: torch.Tensor) -> Path:
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": tensor},
                "name": path.stem, "step": 500, "sd_checkpoint_name": "tiny"}, path)
    return path


def import_embedding(stack: Stack, path: Path, model_id: str, **kw: object) -> catalog_pb2.Model:
    return stack.cat.ImportModel(catalog_pb2.ImportModelRequest(
        single_file_path=str(path), kind=EMBEDDING, model_id=model_id, **kw)).model


def refused(stack: Stack, path: Path, **kw: object) -> tuple[grpc.StatusCode, str, list[str]]:
    with pytest.raises(grpc.RpcError) as err:
        stack.cat.ImportModel(catalog_pb2.ImportModelRequest(
            single_file_path=str(path), kind=EMBEDDING, **kw))
    d = decode_rpc_error(err.value)
    return d.code, d.reason, list(d.fields)


def image_and_text(stack: Stack, **kw: object) -> tuple[np.ndarray, str]:
    out = run(stack.gen, steps=3, seed=7, skip_gallery=True, **kw)
    assert out["finished"].status == generator_pb2.GENERATION_STATUS_SUCCEEDED, out["finished"]
    png = out["pngs"][0].png
    return arr(out["images"][0]), to_image(png).info["parameters"]


def test_embeddings_by_name_in_prompts_change_the_image_and_are_in_the_infotext(
    stack: Stack, tmp_path: Path, width: int
) -> None:
    prompt, negative = "a red circle, Shiny-Style", "blurry, dull-look"
    plain_prompt, plain_text = image_and_text(stack, prompt=prompt)
    plain_negative, _ = image_and_text(stack, prompt="a red circle", negative_prompt=negative)
    assert "TI hashes" not in plain_text

    pt = a1111_pt(tmp_path / "shiny-style.pt", vectors(2, width, 1))
    shiny = import_embedding(stack, pt, "shiny-style", origin=catalog_pb2.ModelOrigin(
        base_model_id=EMBEDDED_MODEL_ID))
    assert (shiny.kind, shiny.format) == (EMBEDDING, catalog_pb2.MODEL_FORMAT_EMBEDDING)
    assert shiny.embedding.vectors == 2 and list(shiny.embedding.widths) == [width]
    assert shiny.trigger_phrase == "shiny-style" and shiny.architecture == "tiny-sd"
    sha = hashlib.sha256(pt.read_bytes()).hexdigest()
    assert shiny.embedding.sha256 == sha

    st = tmp_path / "dull.safetensors"
    save_file({"emb_params": vectors(3, width, 2)}, str(st))
    dull = import_embedding(stack, st, "dull-look", architecture="tiny-sd",
                            origin=catalog_pb2.ModelOrigin(base_model_id=EMBEDDED_MODEL_ID))
    assert dull.embedding.vectors == 3
    listed = stack.cat.ListModels(catalog_pb2.ListModelsRequest(kind=EMBEDDING)).models
    assert {m.id: m.embedding.vectors for m in listed} == {"shiny-style": 2, "dull-look": 3}

    # the same request, same seed: now the word calls up the vectors
    with_prompt, text = image_and_text(stack, prompt=prompt)
    assert np.abs(with_prompt - plain_prompt).mean() > 1.0
    assert f'TI hashes: "shiny-style: {sha[:12]}"' in text
    again, _ = image_and_text(stack, prompt=prompt)  # loaded once per pipeline, then reused
    assert np.array_equal(again, with_prompt)
    with_negative, text = image_and_text(stack, prompt="a red circle", negative_prompt=negative)
    assert np.abs(with_negative - plain_negative).mean() > 1.0
    dull_sha = hashlib.sha256(st.read_bytes()).hexdigest()[:12]
    assert f'TI hashes: "dull-look: {dull_sha}"' in text

    # diffusers' learned_embeds layout (one token -> its vector)
    learned = tmp_path / "learned_embeds.safetensors"
    save_file({"<cat-toy>": vectors(1, width, 3)[0]}, str(learned))
    toy = import_embedding(stack, learned, "cat-toy")  # the embedded model's width: no base
    assert toy.embedding.vectors == 1 and toy.architecture == "tiny-sd"
    _, text = image_and_text(stack, prompt="cat-toy and shiny-style")
    assert '"cat-toy: ' in text and "shiny-style: " in text

    with pytest.raises(grpc.RpcError) as err:
        list(stack.gen.Generate(generator_pb2.GenerateRequest(prompt="x", model_id="cat-toy")))
    assert decode_rpc_error(err.value).fields == ["model_id"]


def test_sdxl_pairs_and_refusals_by_field(stack: Stack, tmp_path: Path, width: int) -> None:
    pair = tmp_path / "xl-style.safetensors"
    save_file({"clip_l": vectors(2, 768, 4), "clip_g": vectors(2, 1280, 5)}, str(pair))
    xl = import_embedding(stack, pair, "xl-style")
    assert xl.architecture == "sdxl" and list(xl.embedding.widths) == [768, 1280]
    assert xl.embedding.vectors == 2

    base = {"origin": catalog_pb2.ModelOrigin(base_model_id=EMBEDDED_MODEL_ID)}
    assert refused(stack, pair, model_id="xl-on-tiny", **base) == (
        grpc.StatusCode.INVALID_ARGUMENT, "EMBEDDING_MISMATCH", ["origin.base_model_id"])
    assert refused(stack, pair, model_id="xl-as-sd1", architecture="sd1") == (
        grpc.StatusCode.INVALID_ARGUMENT, "EMBEDDING_MISMATCH", ["architecture"])
    odd = a1111_pt(tmp_path / "odd.pt", vectors(1, width + 8, 6))
    assert refused(stack, odd, model_id="odd-width", **base) == (
        grpc.StatusCode.INVALID_ARGUMENT, "EMBEDDING_MISMATCH", ["origin.base_model_id"])

    code_inside = tmp_path / "sneaky.pt"
    torch.save({"string_to_param": {"*": vectors(1, width, 7)}, "hook": NotATensor()},
               code_inside)
    assert refused(stack, code_inside, model_id="sneaky", **base) == (
        grpc.StatusCode.INVALID_ARGUMENT, "EMBEDDING_PICKLE_REFUSED", ["single_file_path"])
    not_one = tmp_path / "two-things.safetensors"
    save_file({"a": vectors(1, width, 8), "b": vectors(1, width, 9)}, str(not_one))
    assert refused(stack, not_one, model_id="two-things", **base) == (
        grpc.StatusCode.INVALID_ARGUMENT, "EMBEDDING_UNSUPPORTED", ["single_file_path"])
    assert refused(stack, tmp_path / "missing.pt", model_id="missing", **base)[:2] == (
        grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND")
    ids = {m.id for m in stack.cat.ListModels(catalog_pb2.ListModelsRequest(kind=EMBEDDING)).models}
    assert not ids & {"xl-on-tiny", "xl-as-sd1", "odd-width", "sneaky", "two-things", "missing"}
