"""The PNG "parameters" text (A1111 infotext) and the Generator's per-model metrics, from real
Catalog + Generator processes: what PNG Info needs to reproduce an image, in A1111's words."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from boothstudio.services.generator import metrics
from boothstudio.v1 import catalog_pb2, common_pb2, generator_pb2
from tests.generator import fixtures
from tests.generator.stack import Stack, run, scrape, start_stack, stop_stack, to_image

# A1111's own pattern for "Key: value" pairs (modules/infotext_utils.py, re_param_code)
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


@pytest.fixture(scope="module")
def stack(tiny_model: Path) -> Iterator[Stack]:
    s = start_stack(tiny_model, ["preview_interval=0"])
    yield s
    stop_stack(s)


@pytest.fixture(scope="module")
def single_file(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fixtures.build_single_file(
        tiny_model, tmp_path_factory.mktemp("single") / "tiny.safetensors"
    )


@pytest.fixture(scope="module")
def file_model(stack: Stack, single_file: Path, tiny_model: Path) -> str:
    """The single-file model registered in the Catalog: its id."""
    stack.cat.ImportModel(
        catalog_pb2.ImportModelRequest(
            single_file_path=str(single_file), config_path=str(tiny_model), model_id="tiny-file"
        )
    )
    return "tiny-file"


def infotext(png: bytes) -> tuple[list[str], dict[str, str]]:
    """(prompt lines, {key: value}) as A1111's PNG Info parses the text."""
    lines = to_image(png).info["parameters"].split("\n")
    params = {k: v.strip() for k, v in RE_PARAM.findall(lines[-1])}
    return lines[:-1], params


def a1111_lora_hash(path: Path) -> str:
    """A1111's LoRA short hash: sha256 of a .safetensors file's bytes after its header."""
    data = path.read_bytes()
    header = int.from_bytes(data[:8], "little")
    return hashlib.sha256(data[8 + header :]).hexdigest()[:12]


def test_infotext_names_model_hash_sampler_options_and_clip_skip(
    stack: Stack, single_file: Path, file_model: str
) -> None:
    out = run(
        stack.gen, prompt="a red circle", model_id=file_model, steps=3, seed=5, sampler="ddim",
        sampler_options={"eta": common_pb2.OptionValue(float_value=0.5)},
        backend_options={"clip_skip": common_pb2.OptionValue(int_value=2)},
    )  # fmt: skip
    assert out["finished"].status == generator_pb2.GENERATION_STATUS_SUCCEEDED
    prompt, params = infotext(out["pngs"][0].png)
    assert prompt == ["a red circle"]
    file_hash = hashlib.sha256(single_file.read_bytes()).hexdigest()[:10]
    assert params["Model hash"] == file_hash and params["Model"] == file_model
    assert params["Sampler"] == "DDIM" and params["Seed"] == "5"
    assert params["Eta DDIM"] == "0.5"  # A1111 keeps DDIM's eta apart from the ancestral one
    assert params["Clip skip"] == "2"
    # the gallery keeps the same text
    got = stack.gen.GetImage(
        generator_pb2.GetImageRequest(image_id=out["finished"].image_ids[0])
    ).image
    assert to_image(got.png).info["parameters"] == got.parameters_text
    # an ancestral sampler's eta is "Eta"; options left at their defaults are not written
    out = run(stack.gen, prompt="x", model_id=file_model, steps=2, seed=5, sampler="euler_a",
              sampler_options={"eta": common_pb2.OptionValue(float_value=0.25)},
              skip_gallery=True)  # fmt: skip
    _, params = infotext(out["pngs"][0].png)
    assert params["Eta"] == "0.25" and "Sigma noise" not in params and "Clip skip" not in params
    # a diffusers folder is no checkpoint file A1111 could match: no hash rather than a wrong one
    out = run(stack.gen, prompt="x", steps=2, seed=5, skip_gallery=True)
    _, params = infotext(out["pngs"][0].png)
    assert "Model hash" not in params and params["Model"] == out["started"].model_id


def test_infotext_names_the_lora_applied(
    stack: Stack, single_file: Path, file_model: str, tiny_model: Path, tmp_path: Path
) -> None:
    lora_file = fixtures.build_lora(tiny_model, tmp_path / "lora")
    stack.cat.ImportModel(catalog_pb2.ImportModelRequest(
        single_file_path=str(lora_file), kind=catalog_pb2.MODEL_KIND_LORA, model_id="tiny-style",
        origin=catalog_pb2.ModelOrigin(base_model_id=file_model)))  # fmt: skip
    out = run(stack.gen, prompt="a red circle", model_id="tiny-style", steps=2, seed=5,
              backend_options={"lora_scale": common_pb2.OptionValue(float_value=0.8)},
              skip_gallery=True)  # fmt: skip
    assert out["finished"].status == generator_pb2.GENERATION_STATUS_SUCCEEDED
    prompt, params = infotext(out["pngs"][0].png)
    # what makes A1111 apply the LoRA, and which file it was
    assert prompt == ["a red circle <lora:tiny-style:0.8>"]
    assert params["Lora hashes"] == f'"tiny-style: {a1111_lora_hash(lora_file)}"'
    # the checkpoint is the base model the LoRA ran on
    assert params["Model"] == file_model
    assert params["Model hash"] == hashlib.sha256(single_file.read_bytes()).hexdigest()[:10]


def test_metrics_by_model_and_sampler_and_memory(stack: Stack) -> None:
    before = scrape(stack.generator)
    out = run(stack.gen, prompt="x", steps=2, count=2, sampler="euler", skip_gallery=True)
    after = scrape(stack.generator)
    labels = f'{{model_id="{out["started"].model_id}",sampler="euler"}}'

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta(f"boothstudio_generator_model_images_total{labels}") == 2
    assert delta(f"boothstudio_generator_model_generation_seconds_count{labels}") == 1
    assert delta(f"boothstudio_generator_model_generation_seconds_sum{labels}") > 0
    resident = after["process_resident_memory_bytes"]
    assert resident > 50 * 2**20  # torch and a model are loaded
    assert after["boothstudio_generator_peak_resident_memory_bytes"] >= resident * 0.9
    # no accelerator here: the device gauges are present and say 0
    assert after["boothstudio_generator_device_memory_allocated_bytes"] == 0
    assert after["boothstudio_generator_device_memory_peak_bytes"] == 0


def test_model_labels_are_bounded() -> None:
    # (in this test process: the same functions the Generator labels its series with)
    seen = [metrics.model_label(f"model-{n}") for n in range(metrics.MAX_MODEL_LABELS + 5)]
    assert len(set(seen)) <= metrics.MAX_MODEL_LABELS + 1
    assert seen[-1] == metrics.OTHER and seen[0] == "model-0"
    assert metrics.model_label("model-0") == "model-0"  # a labelled model keeps its label
    assert metrics.sampler_label("euler_a") == "euler_a"
    assert metrics.sampler_label("made-up") == metrics.OTHER
