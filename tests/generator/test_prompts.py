"""A1111 prompt weighting syntax."""

from __future__ import annotations

import pytest

from boothstudio.services.diffusion.pipelines import parse_weights


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
