"""The Generate stream's ModelDownload event (a model pulled from the artifact store to the
replica, before the first step) in the SDK and the CLI's progress line (no server).
The event through a real Generator: tests/stores/test_model_download.py.

Rerun: `.venv/bin/pytest tests/sdk/test_model_download.py -q`
"""

from __future__ import annotations

import io

from boothstudio.clients.sdk import ModelDownload
from boothstudio.clients.sdk import _convert as cv
from boothstudio.clients.sdk.cli.generate import show_generate_event
from boothstudio.clients.sdk.cli.output import Output, fmt_bytes
from boothstudio.v1 import generator_pb2 as pb


def test_a_download_event_is_typed_with_its_share_done() -> None:
    event = cv.generate_event(pb.GenerateResponse(
        job_id="gen_1",
        model_download=pb.ModelDownload(model_id="sd15", bytes_done=450, bytes_total=1000),
    ))
    assert event == ModelDownload("gen_1", "sd15", 450, 1000)
    assert isinstance(event, ModelDownload) and event.fraction == 0.45
    assert ModelDownload("gen_1", "sd15", 0, 0).fraction == 0.0


def test_the_cli_progress_line_says_downloading_model_and_the_share() -> None:
    out = Output(json_mode=False, progress="always", quiet=False)
    out.err = io.StringIO()
    out.live = False
    show_generate_event(ModelDownload("gen_1", "sd15", 1_200_000_000, 2_600_000_000), out)
    line = out.err.getvalue()
    assert "downloading model 46%" in line and "(1.2 GB of 2.6 GB)" in line


def test_sizes_read_as_people_write_them() -> None:
    assert [fmt_bytes(n) for n in (512, 45_300, 7_100_000, 2_600_000_000)] == [
        "512 B", "45.3 KB", "7.1 MB", "2.6 GB"]
