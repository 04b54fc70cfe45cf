"""A fake of Stability AI's REST API (v1 generation), checking each request against the
documented contract: Bearer key, `Accept: application/json`, JSON text-to-image, multipart
image-to-image and image-to-image/masking, only the documented fields and their ranges
(cfg_scale 0-35, steps 10-50, samples 1-10, seed 0-4294967295, sides multiples of 64 >= 128,
the sampler and mask_source enums). Anything else is answered as the service does: a 4xx with
`{id, name, message}`. Images come back as `artifacts` coloured by their seed.
"""

from __future__ import annotations

import base64
import email.parser
import io
import json
from typing import Any

from PIL import Image

from tests.generator.fake_http import JsonHandler, LoopbackServer

SAMPLERS = {"DDIM", "DDPM", "K_DPMPP_2M", "K_DPMPP_2S_ANCESTRAL", "K_DPM_2", "K_DPM_2_ANCESTRAL",
            "K_EULER", "K_EULER_ANCESTRAL", "K_HEUN", "K_LMS"}  # fmt: skip
COMMON = {"cfg_scale", "clip_guidance_preset", "sampler", "samples", "seed", "steps",
          "style_preset", "extras"}  # fmt: skip
FIELDS = {
    "text-to-image": COMMON | {"text_prompts", "height", "width"},
    "image-to-image": COMMON | {"text_prompts", "init_image", "init_image_mode",
                                "image_strength", "step_schedule_start", "step_schedule_end"},
    "image-to-image/masking": COMMON | {"text_prompts", "init_image", "mask_source",
                                        "mask_image"},
}  # fmt: skip
ENGINES = [{"id": "stable-diffusion-v1-6", "name": "Stable Diffusion v1.6",
            "description": "Stability-AI Stable Diffusion v1.6", "type": "PICTURE"}]  # fmt: skip


class ContractError(Exception):
    pass


def _check_range(body: dict[str, Any], name: str, lo: float, hi: float) -> None:
    if name in body and not lo <= float(body[name]) <= hi:
        raise ContractError(f"{name}: must be in [{lo:g}, {hi:g}], got {body[name]}")


def parse_multipart(content_type: str, raw: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """(fields with text_prompts rebuilt as a list, files)."""
    msg = email.parser.BytesParser().parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
    if not msg.is_multipart():
        raise ContractError("expected multipart/form-data")
    fields: dict[str, Any] = {}
    files: dict[str, bytes] = {}
    prompts: dict[int, dict[str, Any]] = {}
    for part in msg.get_payload():  # type: ignore[union-attr]
        name = part.get_param("name", header="content-disposition")
        data = part.get_payload(decode=True)
        if part.get_filename():
            files[name] = data
        elif name.startswith("text_prompts["):
            idx, key = name[len("text_prompts["):-1].split("][")
            prompts.setdefault(int(idx), {})[key] = data.decode()
        else:
            fields[name] = data.decode()
    if prompts:
        fields["text_prompts"] = [
            {"text": p["text"], "weight": float(p.get("weight", 1))}
            for _, p in sorted(prompts.items())]
    return fields, files


def check(kind: str, body: dict[str, Any], files: dict[str, bytes]) -> None:
    unknown = set(body) | set(files)
    unknown -= FIELDS[kind]
    if unknown:
        raise ContractError(f"unknown fields {sorted(unknown)}")
    prompts = body.get("text_prompts")
    if not prompts or not all(isinstance(p, dict) and "text" in p for p in prompts):
        raise ContractError("text_prompts: required, a list of {text, weight}")
    if any(len(p["text"]) > 2000 for p in prompts):
        raise ContractError("text_prompts: text longer than 2000 characters")
    _check_range(body, "cfg_scale", 0, 35)
    _check_range(body, "steps", 10, 50)
    _check_range(body, "samples", 1, 10)
    _check_range(body, "seed", 0, 4294967295)
    if "sampler" in body and body["sampler"] not in SAMPLERS:
        raise ContractError(f"sampler: not one of {sorted(SAMPLERS)}")
    for side in ("width", "height"):
        if side in body and (int(body[side]) % 64 or int(body[side]) < 128):
            raise ContractError(f"{side}: must be a multiple of 64 and >= 128")
    if kind != "text-to-image" and "init_image" not in files:
        raise ContractError("init_image: required")
    if kind == "image-to-image":
        if body.get("init_image_mode", "IMAGE_STRENGTH") != "IMAGE_STRENGTH":
            raise ContractError("init_image_mode: this fake knows IMAGE_STRENGTH only")
        _check_range(body, "image_strength", 0, 1)
    if kind == "image-to-image/masking":
        source = body.get("mask_source")
        if source not in ("MASK_IMAGE_WHITE", "MASK_IMAGE_BLACK", "INIT_IMAGE_ALPHA"):
            raise ContractError("mask_source: required, MASK_IMAGE_WHITE|BLACK|INIT_IMAGE_ALPHA")
        if source != "INIT_IMAGE_ALPHA":
            if "mask_image" not in files:
                raise ContractError("mask_image: required for this mask_source")
            sizes = {Image.open(io.BytesIO(files[k])).size for k in ("init_image", "mask_image")}
            if len(sizes) != 1:
                raise ContractError("mask_image: must be the size of init_image")


class FakeHosted(LoopbackServer):
    def __init__(self, api_key: str = "sk-test") -> None:
        self.api_key = api_key
        #: (kind, engine, fields, files) of every accepted generation
        self.requests: list[tuple[str, str, dict[str, Any], dict[str, bytes]]] = []
        fake = self

        class Handler(JsonHandler):
            def _error(self, code: int, name: str, message: str) -> None:
                self._json(code, {"id": "fake", "name": name, "message": message})

            def _authorised(self) -> bool:
                if self.headers.get("Authorization") != f"Bearer {fake.api_key}":
                    self._error(401, "unauthorized", "missing or invalid API key")
                    return False
                return True

            def do_GET(self) -> None:
                if not self._authorised():
                    return
                if self.path == "/v1/engines/list":
                    self._json(200, ENGINES)
                else:
                    self._error(404, "not_found", self.path)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if not self._authorised():
                    return
                prefix = "/v1/generation/"
                engine, _, kind = self.path[len(prefix):].partition("/")
                if not self.path.startswith(prefix) or kind not in FIELDS:
                    self._error(404, "not_found", self.path)
                    return
                if engine not in {e["id"] for e in ENGINES}:
                    self._error(404, "not_found", f"engine {engine} does not exist")
                    return
                if self.headers.get("Accept") != "application/json":
                    self._error(400, "bad_request", "Accept must be application/json here")
                    return
                ctype = self.headers.get("Content-Type", "")
                try:
                    if kind == "text-to-image":
                        if ctype != "application/json":
                            raise ContractError("text-to-image takes application/json")
                        body, files = json.loads(raw), {}
                    else:
                        if not ctype.startswith("multipart/form-data"):
                            raise ContractError(f"{kind} takes multipart/form-data")
                        body, files = parse_multipart(ctype, raw)
                    check(kind, body, files)
                except (ContractError, ValueError, KeyError) as exc:
                    self._error(400, "bad_request", str(exc))
                    return
                fake.requests.append((kind, engine, body, files))
                if "init_image" in files:
                    size = Image.open(io.BytesIO(files["init_image"])).size
                else:
                    size = (int(body.get("width", 512)), int(body.get("height", 512)))
                seed = int(body.get("seed", 0))
                filtered = any("forbidden" in p["text"] for p in body["text_prompts"])
                artifacts = []
                for k in range(int(body.get("samples", 1))):
                    buf = io.BytesIO()
                    Image.new("RGB", size, ((seed + k) % 256, 50, 200)).save(buf, format="PNG")
                    artifacts.append({"base64": base64.b64encode(buf.getvalue()).decode(),
                                      "seed": seed + k,
                                      "finishReason": "CONTENT_FILTERED" if filtered
                                      else "SUCCESS"})  # fmt: skip
                self._json(200, {"artifacts": artifacts})

        self.serve(Handler)
