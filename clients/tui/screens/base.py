"""What every studio screen shares: header, body, status bar, footer, and error display."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from textual.app import ComposeResult
from textual.screen import Screen
from textual.widgets import Footer, Header

from clients.sdk import AsyncBoothStudio, BoothStudioError
from clients.tui.widgets.fields import clear_errors, describe, show_violations
from clients.tui.widgets.status import StatusBar

if TYPE_CHECKING:
    from clients.tui.app import StudioApp


class StudioScreen(Screen[None]):
    """A top-level screen (one per app mode)."""

    #: The mode name of this screen (also shown in the header).
    MODE = ""
    TITLE_TEXT = ""

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        yield from self.compose_body()
        yield StatusBar()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        yield from ()

    def on_mount(self) -> None:
        self.sub_title = self.TITLE_TEXT

    def on_screen_resume(self) -> None:
        self.studio.deliver(self)

    @property
    def studio(self) -> StudioApp:
        return cast("StudioApp", self.app)

    @property
    def client(self) -> AsyncBoothStudio:
        return self.studio.client

    def say(self, text: str) -> None:
        """Put `text` in the status bar."""
        for bar in self.query(StatusBar):
            bar.say(text)

    def clear_field_errors(self) -> None:
        clear_errors(self)

    def report_error(self, exc: BaseException, what: str = "") -> None:
        """Show a failure: field violations next to their fields, anything else as a toast."""
        clear_errors(self)
        prefix = f"{what}: " if what else ""
        if isinstance(exc, BoothStudioError) and exc.violations:
            rest = show_violations(self, exc.violations)
            if rest:
                lines = "; ".join(f"{v.field}: {v.description}" for v in rest)
                self.notify(f"{prefix}{lines}", severity="error", timeout=8)
            self.say(f"{prefix}check the highlighted fields")
            return
        self.say(f"{prefix}{describe(exc)}")
        self.notify(f"{prefix}{describe(exc)}", severity="error", timeout=8)

    def receive(self, payload: Any) -> None:
        """Something another screen handed over (see StudioApp.hand_over)."""
