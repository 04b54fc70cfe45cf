"""SDK and CLI for queue priorities and textual-inversion embeddings, against the real services
(conftest.py's stack). The embedding file is written with safetensors' numpy API: this test
process stays free of torch."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from boothstudio.clients.sdk import ModelKind, Priority
from boothstudio.clients.sdk._convert import generate_request
from boothstudio.clients.sdk.errors import InvalidArgument
from boothstudio.v1 import generator_pb2
from tests.sdk.conftest import Stack
from tests.sdk.test_cli import on


def test_priority_reaches_the_request() -> None:
    assert generate_request("x", {"priority": "batch"}).priority == generator_pb2.PRIORITY_BATCH
    assert generate_request("x", {"priority": Priority.INTERACTIVE}).priority == (
        generator_pb2.PRIORITY_INTERACTIVE)
    assert generate_request("x", {}).priority == generator_pb2.PRIORITY_UNSPECIFIED
    with pytest.raises(InvalidArgument) as err:
        generate_request("x", {"priority": "urgent"})
    assert err.value.fields == ["priority"]


def test_cli_batch_priority_and_embeddings(stack: Stack, tmp_path: Path, tiny_model: Path) -> None:
    small = ("--steps", "2", "-W", "64", "-H", "64", "-o", str(tmp_path), "--seed", "3")
    res = on(stack, "--json", "generate", "a red circle", "--priority", "batch", *small)
    assert res.returncode == 0, res.stderr
    image_id = json.loads(res.stdout)["images"][0]["image_id"]
    with stack.client() as client:
        stored = client.get_image(image_id, metadata_only=True)
        assert stored.raw.request.priority == generator_pb2.PRIORITY_BATCH
    res = on(stack, "generate", "a red circle", "--priority", "urgent", *small)
    assert res.returncode == 2 and "--priority" in res.stderr

    width = json.loads((tiny_model / "text_encoder" / "config.json").read_text())["hidden_size"]
    vectors = np.random.default_rng(0).normal(size=(4, width)).astype(np.float32)
    path = tmp_path / "glow-style.safetensors"
    save_file({"emb_params": vectors}, str(path))
    with stack.client() as client:
        base = next(m.id for m in client.list_models().items if m.builtin)
    res = on(stack, "models", "import", str(path), "--kind", "embedding", "--base-model", base)
    assert res.returncode == 0, res.stderr
    assert "embedding_vectors: 4" in res.stdout and f"embedding_widths:  [{width}]" in res.stdout
    try:
        res = on(stack, "models", "list", "--kind", "embedding")
        header, row = res.stdout.splitlines()[:2]
        assert "TOKENS" in header and row.split()[0] == "glow-style" and " 4 " in row
        with stack.client() as client:
            model = client.get_model("glow-style")
            assert model.kind == ModelKind.EMBEDDING and model.embedding_vectors == 4
            result = client.generate("a red circle, glow-style", steps=2, seed=3, skip_gallery=True)
            assert 'TI hashes: "glow-style: ' in result[0].image.info["parameters"]
    finally:
        with stack.client() as client:
            client.delete_model("glow-style")
