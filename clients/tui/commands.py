"""Command palette (ctrl+p): every screen, the main actions and the themes."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, cast

from textual.command import DiscoveryHit, Hit, Hits, Provider

if TYPE_CHECKING:
    from boothstudio.clients.tui.app import StudioApp

Command = tuple[str, Callable[[], object], str]


class StudioCommands(Provider):
    """Go to a screen, run a screen's action, switch theme."""

    def commands(self) -> list[Command]:
        app = cast("StudioApp", self.app)
        out: list[Command] = []
        for mode, title, key in app.NAVIGATION:
            out.append(
                (f"Go to {title}", partial(app.action_go, mode), f"{key}: the {title} screen")
            )
        run = app.run_screen_action
        out += [
            ("Generate images", partial(run, "generate", "generate"), "ctrl+g on Generate"),
            ("Cancel generation", app.action_cancel_generation, "escape on Generate and Edit"),
            ("Inpaint / img2img", partial(run, "edit", "generate"), "ctrl+g on Edit"),
            ("Pick an image to edit", partial(run, "edit", "pick"), "ctrl+l on Edit"),
            ("Refresh gallery", partial(run, "gallery", "refresh"), "ctrl+r on Gallery"),
            ("Create training job", partial(run, "train", "create"), "ctrl+n on Train"),
            ("Refresh training jobs", partial(run, "train", "refresh"), "ctrl+r on Train"),
            ("Refresh models", partial(run, "models", "refresh"), "ctrl+r on Models"),
            ("Import a model", partial(run, "models", "import_model"), "ctrl+i on Models"),
            ("Check service health", app.action_check_health, "poll the services now"),
            ("Toggle light/dark theme", app.action_toggle_dark, "ctrl+t"),
        ]
        for name in sorted(app.available_themes):
            out.append((f"Theme: {name}", partial(app.set_theme, name), "switch the theme"))
        return out

    async def discover(self) -> Hits:
        for name, callback, help_text in self.commands():
            yield DiscoveryHit(name, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for name, callback, help_text in self.commands():
            score = matcher.match(name)
            if score > 0:
                yield Hit(score, matcher.highlight(name), callback, help=help_text)
