"""Several concepts in one training job, from the client side: kohya-style folders and concept
pictures uploaded as datasets.

A kohya training folder (as kohya's sd-scripts and the GUIs built on them read it) holds one
subfolder per concept named ``<repeats>_<identifier> <class>``, e.g.::

    train/
      10_zwx dog/      0.png  0.txt  1.jpg ...     (a .txt beside a picture is its caption)
      5_qlo cat/       ...

Each subfolder maps onto one `DreamBoothConfig.concepts` entry: repeats 10, identifier "zwx",
class noun "dog", its pictures (with their .txt captions) uploaded as the concept's dataset.
kohya's regularisation folders (class images) have no counterpart: the trainer generates and
caches each concept's class images itself (its prior_preservation settings).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from boothstudio.clients.sdk.errors import invalid

_KOHYA_NAME = re.compile(r"^(\d+)_(\S+)\s+(\S.*)$")


def parse_kohya_name(name: str) -> tuple[int, str, str] | None:
    """(repeats, identifier, class noun) of a folder named ``<repeats>_<identifier> <class>``;
    None for any other name."""
    m = _KOHYA_NAME.match(name.strip())
    if m is None:
        return None
    return int(m.group(1)), m.group(2), " ".join(m.group(3).split())


def kohya_concepts(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The concepts of a kohya-style folder, in name order: mappings of DreamBoothConfig
    concept settings plus ``images`` (the subfolder, uploaded by create_training_job)."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise invalid("kohya", f"no such folder: {folder}")
    out = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        parsed = parse_kohya_name(sub.name)
        if parsed is None:
            continue
        repeats, identifier, class_noun = parsed
        out.append({"identifier": identifier, "class_noun": class_noun, "repeats": repeats,
                    "images": sub})
    if not out:
        raise invalid("kohya", f"{folder} has no '<repeats>_<identifier> <class>' subfolder")
    return out


def settings_only(options: Mapping[str, Any]) -> dict[str, Any]:
    """`options` with each concept's ``images`` left out (they are uploaded, not settings)."""
    concepts = options.get("concepts")
    if not concepts or isinstance(concepts, str | bytes):
        return dict(options)
    return {**options, "concepts": [
        {k: v for k, v in c.items() if k != "images"} if isinstance(c, Mapping) else c
        for c in concepts]}


def concept_uploads(options: dict[str, Any]) -> list[tuple[dict[str, Any], Any, str]]:
    """The concepts whose ``images`` (a folder or list of files) are to be uploaded: (the
    concept's settings, now without ``images``, to get its ``dataset_id``; the images; a
    dataset name). `options["concepts"]` becomes those copies."""
    out = []
    concepts = []
    for i, concept in enumerate(options.get("concepts") or []):
        if not isinstance(concept, Mapping):
            raise invalid(f"config.concepts[{i}]", "expected a mapping of concept settings")
        concept = dict(concept)
        images = concept.pop("images", None)
        if images is not None:
            name = f"concept {i}: {concept.get('identifier', '')} {concept.get('class_noun', '')}"
            out.append((concept, images, name.strip()))
        concepts.append(concept)
    if concepts:
        options["concepts"] = concepts
    return out


__all__ = ["concept_uploads", "kohya_concepts", "parse_kohya_name", "settings_only"]
