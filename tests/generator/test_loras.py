"""Several LoRAs per generation through a real Catalog + Generator: files in the kohya/A1111 and
diffusers/PEFT layouts made here from the tiny model's module shapes, applied as request fields
and as `<lora:name:w>` prompt tags (taken out of the prompt text), named in the infotext; requests
with different LoRA sets never share a batch; bad requests refused by field."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from boothstudio.services.generator.infotext import FileHashes
from boothstudio.shared.errors import decode_rpc_error
from boothstudio.v1 import catalog_pb2, common_pb2, generator_pb2
from tests.diffusion.lora_files import kohya_by_hand, lora_tensors, write_lora
from tests.diffusion.tiny_sdxl import build_tiny_sdxl
from tests.generator.stack import Stack, arr, run, scrape, start_stack, stop_stack, to_image

LoraWeight = generator_pb2.LoraWeight
PROMPT = "a red circle"


@pytest.fixture(scope="module")
def stack(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    s = start_stack(tiny_model, ["preload=false", "max_batch_images=8"])
    files = tmp_path_factory.mktemp("loras")
    ink = lora_tensors(tiny_model, seed=1)
    for model_id, path in (
        ("ink", write_lora(files / "ink.safetensors", kohya_by_hand(ink))),
        ("ink-diffusers", write_lora(files / "ink-d.safetensors", ink)),
        ("glow", write_lora(files / "glow.safetensors", lora_tensors(tiny_model, seed=2))),
    ):
        s.cat.ImportModel(catalog_pb2.ImportModelRequest(
            single_file_path=str(path), kind=catalog_pb2.MODEL_KIND_LORA, model_id=model_id,
            origin=catalog_pb2.ModelOrigin(base_model_id="boothstudio-tiny")))
    yield s
    stop_stack(s)


def draw(stack: Stack, prompt: str = PROMPT, **kw: object) -> tuple[np.ndarray, str]:
    out = run(stack.gen, prompt=prompt, steps=3, seed=7, skip_gallery=True, **kw)
    assert out["finished"].status == generator_pb2.GENERATION_STATUS_SUCCEEDED, out["finished"]
    return arr(out["images"][0]), to_image(out["pngs"][0].png).info["parameters"]


def differ(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).mean())


def test_several_loras_with_weights_as_fields_and_prompt_tags(stack: Stack) -> None:
    plain, plain_text = draw(stack)
    assert "Lora hashes" not in plain_text and "<lora:" not in plain_text
    one, _ = draw(stack, loras=[LoraWeight(model_id="ink", weight=0.8)])
    two, text = draw(stack, loras=[LoraWeight(model_id="ink", weight=0.8),
                                   LoraWeight(model_id="glow", weight=0.5)])
    assert differ(one, plain) > 1.0 and differ(two, one) > 1.0
    weaker, _ = draw(stack, loras=[LoraWeight(model_id="ink", weight=0.3),
                                   LoraWeight(model_id="glow", weight=0.5)])
    assert differ(weaker, two) > 0.5

    # the infotext: A1111's tags after the prompt, and each file's A1111 hash
    hashes = FileHashes()
    listed = {m.id: m for m in stack.cat.ListModels(catalog_pb2.ListModelsRequest(
        kind=catalog_pb2.MODEL_KIND_LORA)).models}
    ink_hash = hashes.sha256(listed["ink"].source_path, tensor_data_only=True)[:12]
    glow_hash = hashes.sha256(listed["glow"].source_path, tensor_data_only=True)[:12]
    assert text.splitlines()[0] == f"{PROMPT} <lora:ink:0.8> <lora:glow:0.5>"
    assert f'Lora hashes: "ink: {ink_hash}, glow: {glow_hash}"' in text

    # A1111's prompt syntax: the tag leaves the prompt text, the LoRA applies the same
    tagged, tagged_text = draw(stack, prompt=f"{PROMPT} <lora:ink:0.8>",
                               loras=[LoraWeight(model_id="glow", weight=0.5)])
    assert np.array_equal(tagged, two)
    # (the listed LoRAs first, then the prompt's tags)
    assert tagged_text.splitlines()[0] == f"{PROMPT} <lora:glow:0.5> <lora:ink:0.8>"
    # a LoRA model_id (its lora_scale) stacks with the listed ones
    legacy, _ = draw(stack, model_id="ink", loras=[LoraWeight(model_id="glow", weight=0.5)],
                     backend_options={"lora_scale": common_pb2.OptionValue(float_value=0.8)})
    assert np.array_equal(legacy, two)
    # the same tensors in the diffusers layout draw what the kohya file draws
    same, _ = draw(stack, loras=[LoraWeight(model_id="ink-diffusers", weight=0.8)])
    assert differ(same, one) < 0.5
    # the fused weights are swapped back after each run: the base model alone is unchanged
    again, _ = draw(stack)
    assert np.array_equal(again, plain)
    # weight 0: as without it; default weight 1
    assert np.array_equal(draw(stack, loras=[LoraWeight(model_id="ink", weight=0)])[0], plain)
    full, _ = draw(stack, prompt=f"{PROMPT} <lora:glow>")
    assert np.array_equal(full, draw(stack, loras=[LoraWeight(model_id="glow")])[0])


def _blocker(stack: Stack) -> threading.Thread:
    started = threading.Event()

    def consume() -> None:
        for e in stack.gen.Generate(generator_pb2.GenerateRequest(
                prompt="long", steps=150, seed=1, job_id="lora-blocker", skip_gallery=True)):
            if e.HasField("progress"):
                started.set()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    assert started.wait(120), "the long job never progressed"
    return t


def test_requests_with_different_lora_sets_are_never_batched_together(stack: Stack) -> None:
    sets = {"ink-a": [LoraWeight(model_id="ink", weight=0.8)],
            "glow": [LoraWeight(model_id="glow", weight=0.8)],
            "ink-b": [LoraWeight(model_id="ink", weight=0.8)]}
    blocker = _blocker(stack)
    results: dict[str, dict] = {}  # type: ignore[type-arg]

    def go(name: str) -> None:
        results[name] = run(stack.gen, prompt=PROMPT, steps=3, seed=7, skip_gallery=True,
                            loras=sets[name])

    threads = [threading.Thread(target=go, args=(n,), daemon=True) for n in sets]
    for th in threads:
        th.start()
    deadline = time.monotonic() + 120
    while scrape(stack.generator)["boothstudio_generator_queue_depth"] < 3:
        assert time.monotonic() < deadline, "the three requests never queued"
        time.sleep(0.05)
    stack.gen.CancelGeneration(generator_pb2.CancelGenerationRequest(job_id="lora-blocker"))
    for th in threads:
        th.join(300)
    blocker.join(30)
    sizes = {n: r["started"].batch_size for n, r in results.items()}
    assert sizes == {"ink-a": 2, "glow": 1, "ink-b": 2}
    for name in sets:
        solo, _ = draw(stack, loras=sets[name])
        assert differ(arr(results[name]["images"][0]), solo) < 1.0


@pytest.fixture(scope="module")
def sdxl_lora(stack: Stack, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("tiny-xl")
    build_tiny_sdxl(folder, tiny_model / "tokenizer")
    stack.cat.ImportModel(catalog_pb2.ImportModelRequest(diffusers_path=str(folder),
                                                         model_id="tiny-xl"))
    path = write_lora(folder.parent / "xl-lora.safetensors",
                      lora_tensors(folder, seed=3, parts=("unet",)))
    stack.cat.ImportModel(catalog_pb2.ImportModelRequest(
        single_file_path=str(path), kind=catalog_pb2.MODEL_KIND_LORA, model_id="xl-style",
        origin=catalog_pb2.ModelOrigin(base_model_id="tiny-xl")))
    return "xl-style"


@pytest.mark.parametrize(("prompt", "loras", "code", "field"), [
    (PROMPT, [("nope", 1.0)], grpc.StatusCode.NOT_FOUND, "loras[0].model_id"),
    (f"{PROMPT} <lora:nope:0.5>", [], grpc.StatusCode.NOT_FOUND, "prompt"),
    (PROMPT, [("ink", 11.0)], grpc.StatusCode.INVALID_ARGUMENT, "loras[0].weight"),
    (PROMPT, [("ink", float("nan"))], grpc.StatusCode.INVALID_ARGUMENT, "loras[0].weight"),
    (PROMPT, [("", 1.0)], grpc.StatusCode.INVALID_ARGUMENT, "loras[0].model_id"),
    (f"{PROMPT} <lora:ink:lots>", [], grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
    (f"{PROMPT} <lora:ink:1:0.5>", [], grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
    (f"{PROMPT} <lora:ink:0.5>", [("ink", 1.0)], grpc.StatusCode.INVALID_ARGUMENT, "prompt"),
    (PROMPT, [("boothstudio-tiny", 1.0)], grpc.StatusCode.INVALID_ARGUMENT, "loras[0].model_id"),
    (PROMPT, [("xl-style", 1.0)], grpc.StatusCode.INVALID_ARGUMENT, "loras[0].model_id"),
    (PROMPT, [("ink", 0.1)] * 9, grpc.StatusCode.INVALID_ARGUMENT, "loras"),
])
def test_bad_lora_requests_are_refused_by_field(
    stack: Stack, sdxl_lora: str, prompt: str, loras: list[tuple[str, float]],
    code: grpc.StatusCode, field: str,
) -> None:
    request = generator_pb2.GenerateRequest(
        prompt=prompt, steps=1, loras=[LoraWeight(model_id=m, weight=w) for m, w in loras])
    with pytest.raises(grpc.RpcError) as err:
        list(stack.gen.Generate(request))
    d = decode_rpc_error(err.value)
    assert d.code == code and field in d.fields, (d.code, d.fields, d.message)


def test_sdk_and_cli_take_loras_with_weights(stack: Stack, tmp_path: Path) -> None:
    import contextlib
    import io
    import json

    from boothstudio.clients.sdk import BoothStudio
    from boothstudio.clients.sdk.cli import main
    from boothstudio.clients.sdk.errors import InvalidArgument

    two, _ = draw(stack, loras=[LoraWeight(model_id="ink", weight=0.8),
                                LoraWeight(model_id="glow", weight=0.5)])
    with BoothStudio(stack.catalog.address, [stack.generator.address], "127.0.0.1:1") as client:
        for loras in ({"ink": 0.8, "glow": 0.5}, ["ink:0.8", ("glow", 0.5)]):
            result = client.generate(PROMPT, steps=3, seed=7, skip_gallery=True, loras=loras)
            assert np.array_equal(arr(to_image(result[0].png)), two)
        with pytest.raises(InvalidArgument) as err:
            client.generate(PROMPT, loras=["ink:strong"])
        assert err.value.fields == ["loras[0]"]

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["--catalog", stack.catalog.address, "--generator", stack.generator.address,
                     "--json", "generate", PROMPT, "--steps", "3", "--seed", "7", "--no-gallery",
                     "--lora", "ink:0.8", "--lora", "glow:0.5", "-o", str(tmp_path)])
    assert code == 0
    path = json.loads(out.getvalue())["images"][0]["path"]
    assert np.array_equal(arr(Image.open(path)), two)
