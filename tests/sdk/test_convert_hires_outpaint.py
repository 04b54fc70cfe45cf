"""The SDK's hires fix and outpainting parameters: request fields as the service reads them, bad
values named by field before any call, and a gallery image's settings reused as they were."""

from __future__ import annotations

import pytest

from boothstudio.clients.sdk import HiresFix, InvalidArgument, Outpaint
from boothstudio.clients.sdk._convert import _params_from_gallery, generate_request
from boothstudio.v1 import generator_pb2


def test_hires_fix_from_a_dataclass_a_mapping_or_true() -> None:
    req = generate_request("x", {"hires": HiresFix(upscaler="lanczos", denoising_strength=0.4)})
    assert req.hires.upscaler == "lanczos" and req.hires.denoising_strength == pytest.approx(0.4)
    assert not req.hires.HasField("steps") and not req.hires.HasField("first_pass_width")
    req = generate_request("x", {"hires": {"steps": 0, "first_pass_width": 64}})
    assert req.hires.HasField("steps") and req.hires.first_pass_width == 64
    assert generate_request("x", {"hires": True}).HasField("hires")  # all defaults
    assert not generate_request("x", {"hires": False}).HasField("hires")
    assert not generate_request("x", {}).HasField("hires")


def test_outpaint_sides() -> None:
    req = generate_request("x", {"outpaint": Outpaint(left=32, top=16)})
    assert (req.outpaint.left, req.outpaint.top, req.outpaint.right) == (32, 16, 0)
    assert not req.outpaint.HasField("feather")
    req = generate_request("x", {"outpaint": {"bottom": 8, "feather": 0}})
    assert req.outpaint.bottom == 8 and req.outpaint.HasField("feather")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"hires": {"steps": "many"}}, "hires.steps"),
        ({"hires": {"strength": 0.5}}, "hires.strength"),
        ({"hires": 2}, "hires"),
        ({"outpaint": {"left": "wide"}}, "outpaint.left"),
        ({"outpaint": {"lft": 3}}, "outpaint.lft"),
    ],
)
def test_bad_values_name_the_field(params: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as e:
        generate_request("x", params)
    assert e.value.fields == [field]


def test_gallery_reuse_keeps_hires_and_outpaint() -> None:
    request = generate_request("x", {"hires": {"upscaler": "nearest", "steps": 7},
                                     "outpaint": {"left": 16, "feather": 4}})
    params = _params_from_gallery(generator_pb2.GalleryImage(request=request, seed=3))
    assert params["hires"] == HiresFix(upscaler="nearest", steps=7)
    assert params["outpaint"] == Outpaint(left=16, feather=4)
    again = generate_request("x", params)
    assert again.hires == request.hires and again.outpaint == request.outpaint
