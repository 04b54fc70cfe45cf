"""`boothstudio-tui` / `python -m boothstudio.clients.tui`: start the studio."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from boothstudio.clients.tui.settings import IMAGE_METHODS, StudioSettings, default_settings_path

if TYPE_CHECKING:
    from boothstudio.clients.tui.app import StudioApp


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="boothstudio-tui", description="BoothStudio terminal studio")
    p.add_argument("--catalog", help="catalog address host:port")
    p.add_argument("--generator", help="generator address(es), comma-separated")
    p.add_argument("--trainer", help="trainer address host:port")
    p.add_argument("--api-key", help="API key (default: BOOTHSTUDIO_API_KEY)")
    p.add_argument("--theme", help="theme name (booth-dark, booth-light, textual-dark, ...)")
    p.add_argument("--images", choices=IMAGE_METHODS, help="how images are drawn (default auto)")
    p.add_argument("--settings", help="settings file (default ~/.config/boothstudio/studio.json)")
    p.add_argument("--no-save", action="store_true", help="do not read or write a settings file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    build_app(argv).run()


def build_app(argv: list[str] | None = None) -> StudioApp:
    """The studio as the command line `argv` sets it up (not started)."""
    from pathlib import Path

    args = parse_args(argv)
    path = None if args.no_save else Path(args.settings or default_settings_path())
    base = StudioSettings.from_environment()
    if path is not None:
        base = StudioSettings.load(path, base)
    settings = base.updated(
        catalog=args.catalog,
        generator=args.generator,
        trainer=args.trainer,
        api_key=args.api_key,
        theme=args.theme,
        images=args.images,
    )
    # Importing the app imports textual-image, which asks the terminal what it can draw: that
    # has to happen before Textual takes the terminal over.
    from boothstudio.clients.tui.app import StudioApp

    return StudioApp(settings, settings_path=None if path is None else path)
