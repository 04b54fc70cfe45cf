"""BoothStudio's terminal studio (Textual): generate, edit, browse, train and manage models.

    boothstudio-tui                      # or: python -m boothstudio.clients.tui

Talks to the services only through the SDK (`clients.sdk.AsyncBoothStudio`); never imports
torch. See `boothstudio.clients.tui.app.StudioApp`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from boothstudio.clients.tui.app import StudioApp

__all__ = ["StudioApp", "main"]


def __getattr__(name: str) -> Any:
    if name == "StudioApp":
        from boothstudio.clients.tui.app import StudioApp

        return StudioApp
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> None:
    from boothstudio.clients.tui.cli import main as run

    run(argv)
