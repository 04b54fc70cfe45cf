"""Write the README's per-service settings tables from the settings models (one source).

    python tools/settings_reference.py           # rewrite the README section
    python tools/settings_reference.py --check   # exit 1 when the README is out of date

The section lies between `<!-- settings:begin -->` and `<!-- settings:end -->` in README.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT)]

from pydantic import BaseModel  # noqa: E402

from boothstudio.services.catalog.settings import CatalogSettings  # noqa: E402
from boothstudio.services.generator.settings import GeneratorSettings  # noqa: E402
from boothstudio.services.settings import env_names  # noqa: E402
from boothstudio.services.trainer.settings import TrainerSettings  # noqa: E402

BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"
MODELS: dict[str, type[BaseModel]] = {
    "catalog": CatalogSettings,
    "generator": GeneratorSettings,
    "trainer": TrainerSettings,
}


def _default(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return f"`{value}`" if value != "" else '""'


def reference() -> str:
    lines = [BEGIN, "<!-- written by tools/settings_reference.py from services/*/settings.py -->"]
    for service, model in MODELS.items():
        lines += ["", f"`{service}:`", "", "| setting | type | default | also from | meaning |",
                  "|---|---|---|---|---|"]
        for name, info in model.model_fields.items():
            kind = getattr(info.annotation, "__name__", str(info.annotation))
            env = " ".join(f"`{v}`" for v in env_names(model, service, name))
            lines.append(
                f"| `{name}` | {kind} | {_default(info.default)} | {env} | {info.description} |"
            )
    lines.append(END)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when README.md is stale")
    args = parser.parse_args()
    readme = ROOT / "README.md"
    text = readme.read_text()
    start, end = text.index(BEGIN), text.index(END) + len(END)
    updated = text[:start] + reference() + text[end:]
    if args.check:
        if updated != text:
            print("README.md settings tables are stale: run python tools/settings_reference.py")
            return 1
        return 0
    readme.write_text(updated)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
