"""A fake AUTOMATIC1111 webui: the documented /sdapi/v1 endpoints, recording what it was sent.

It answers only payloads that use the webui's real field names (cfg_scale, sampler_name,
scheduler, seed, batch_size, ...); an unknown field is a 422, as the webui's pydantic models
would refuse extra fields where they are strict, so a drifting translation fails loudly here.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from typing import Any

from PIL import Image

from tests.generator.fake_http import JsonHandler, LoopbackServer

TXT2IMG_FIELDS = {
    "prompt", "negative_prompt", "styles", "seed", "subseed", "subseed_strength",
    "sampler_name", "scheduler", "batch_size", "n_iter", "steps", "cfg_scale", "width",
    "height", "restore_faces", "tiling", "eta", "s_noise", "s_churn", "s_tmin", "s_tmax",
    "override_settings", "override_settings_restore_afterwards", "send_images", "save_images",
}  # fmt: skip
IMG2IMG_FIELDS = TXT2IMG_FIELDS | {
    "init_images", "denoising_strength", "mask", "mask_blur", "inpainting_fill",
    "inpaint_full_res", "inpainting_mask_invert",
}  # fmt: skip


class FakeA1111(LoopbackServer):
    def __init__(self, step_seconds: float = 0.02) -> None:
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.step_seconds = step_seconds
        self.state = {"sampling_step": 0, "sampling_steps": 0}
        self.interrupted = threading.Event()
        fake = self

        class Handler(JsonHandler):
            def do_GET(self) -> None:
                if self.path.startswith("/sdapi/v1/samplers"):
                    self._json(200, [{"name": "DPM++ 2M", "aliases": [], "options": {}}])
                elif self.path.startswith("/sdapi/v1/progress"):
                    self._json(
                        200,
                        {"progress": 0.5, "eta_relative": 0.1, "state": dict(fake.state),
                         "current_image": None},
                    )  # fmt: skip
                else:
                    self._json(404, {"detail": "Not Found"})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                path = self.path
                fake.requests.append((path, body))
                if path == "/sdapi/v1/interrupt":
                    fake.interrupted.set()
                    self._json(200, {})
                    return
                allowed = {"/sdapi/v1/txt2img": TXT2IMG_FIELDS,
                           "/sdapi/v1/img2img": IMG2IMG_FIELDS}.get(path)  # fmt: skip
                if allowed is None:
                    self._json(404, {"detail": "Not Found"})
                    return
                extra = set(body) - allowed
                if extra:
                    self._json(422, {"detail": f"unknown fields {sorted(extra)}"})
                    return
                fake.interrupted.clear()
                steps = int(body.get("steps", 50))
                fake.state["sampling_steps"] = steps
                for i in range(steps):
                    if fake.interrupted.is_set():
                        break
                    fake.state["sampling_step"] = i + 1
                    time.sleep(fake.step_seconds)
                n = int(body.get("batch_size", 1))
                seed = int(body.get("seed", -1))
                images = []
                for k in range(n):
                    img = Image.new("RGB", (body.get("width", 512), body.get("height", 512)),
                                    ((seed + k) % 256, 100, 150))  # fmt: skip
                    buf = io.BytesIO()
                    img.save(buf, format="PNG")
                    images.append(base64.b64encode(buf.getvalue()).decode())
                info = json.dumps({"all_seeds": [seed + k for k in range(n)], "seed": seed})
                self._json(200, {"images": images, "parameters": body, "info": info})

        self.serve(Handler)
