"""A1111 prompt weighting syntax."""

from __future__ import annotations

import pytest

from boothstudio.services.diffusion.prompt_weights import parse_weights


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a red circle", [("a red circle", 1.0)]),
        ("a (red:1.5) circle", [("a ", 1.0), ("red", 1.5), (" circle", 1.0)]),
        ("(red)", [("red", 1.1)]),
        ("((red))", [("red", pytest.approx(1.21))]),
        ("[red]", [("red", pytest.approx(1 / 1.1))]),
        ("\\(literal\\)", [("(literal)", 1.0)]),
        ("(unclosed", [("unclosed", 1.1)]),
        ("", [("", 1.0)]),
    ],
)
def test_parse_weights(text: str, expected: list) -> None:  # type: ignore[type-arg]
    assert parse_weights(text) == expected


def test_token_rows_weigh_tokens_pad_and_flag_truncation() -> None:
    import torch
    from transformers import CLIPTokenizer

    from boothstudio.services.diffusion.loading import embedded_model_dir
    from boothstudio.services.diffusion.prompt_weights import apply_emphasis, token_rows

    tokenizer = CLIPTokenizer.from_pretrained(embedded_model_dir() / "tokenizer")
    length = tokenizer.model_max_length
    rows, weight_rows, truncated = token_rows(tokenizer, ["a (red:1.5) circle", "red " * length])
    assert [len(r) for r in rows] == [length, length] and truncated == [False, True]
    red = tokenizer("red", add_special_tokens=False).input_ids
    assert rows[0][0] == tokenizer.bos_token_id and 1.5 in weight_rows[0]
    assert [t for t, w in zip(rows[0], weight_rows[0], strict=True) if w == 1.5] == red
    embeddings = torch.randn(2, length, 8)
    emphasised = apply_emphasis(embeddings, weight_rows)
    assert torch.allclose(emphasised.mean(dim=(1, 2)), embeddings.mean(dim=(1, 2)), atol=1e-5)
    assert apply_emphasis(embeddings, [[1.0] * length] * 2) is embeddings
