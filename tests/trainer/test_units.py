"""Pure helpers of the trainer, without services."""

from __future__ import annotations

from services.trainer.train import class_prompts
from tests.trainer.helpers import P


def _config(from_captions: bool) -> P.DreamBoothConfig:
    cfg = P.DreamBoothConfig(identifier="zwx", class_prompt="a circle")
    cfg.prior_preservation.class_prompts_from_captions = from_captions
    return cfg


def test_class_prompts_drop_the_identifier_and_keep_caption_order() -> None:
    captions = ["a {identifier} circle on a gray background", "a ZWX circle on a green background",
                "", "a zwx circle on a gray background"]
    assert class_prompts(_config(True), captions) == [
        "a circle on a gray background", "a circle on a green background", "a circle"]


def test_class_prompts_default_to_the_class_prompt() -> None:
    assert class_prompts(_config(False), ["a zwx circle on a gray background"]) == ["a circle"]
    assert class_prompts(_config(True), []) == ["a circle"]
