"""What every studio screen shares: header, body, status bar, footer, and error display."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

from textual import on
from textual.app import ComposeResult
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header

from boothstudio.clients.sdk import AsyncBoothStudio, BoothStudioError
from boothstudio.clients.tui.widgets.fields import clear_errors, describe, show_violations
from boothstudio.clients.tui.widgets.status import StatusBar

if TYPE_CHECKING:
    from boothstudio.clients.tui.app import StudioApp


class StudioScreen(Screen[None]):
    """A top-level screen (one per app mode)."""

    #: The mode name of this screen (also shown in the header).
    MODE = ""
    TITLE_TEXT = ""

    @dataclass
    class Failed(Message):
        """A worker's call failed; `what` names the step (it prefixes the error shown)."""

        error: BaseException
        what: str

    @dataclass
    class Done(Message):
        """A worker finished something worth telling: said in the status bar and as a toast."""

        text: str

    class ModelsChanged(Message):
        """The catalog's models changed here (import, delete, a job's model): every screen's
        model list reloads."""

    def compose(self) -> ComposeResult:
        yield Header(icon="◆")
        yield from self.compose_body()
        yield StatusBar()
        yield Footer()

    def compose_body(self) -> ComposeResult:
        yield from ()

    def on_mount(self) -> None:
        self.sub_title = self.TITLE_TEXT
        self.watch(self.app, "models_version", self.reload_models, init=False)

    def reload_models(self) -> None:
        """The catalog's models changed (see StudioApp.models_changed): screens with a model
        list reload it."""

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
            if rest:  # no field of the form stands for these: say them in full
                lines = "; ".join(f"{v.field}: {v.description}" for v in rest)
                self.notify(f"{prefix}{lines}", severity="error", timeout=8)
                self.say(f"{prefix}{lines}")
            else:
                self.say(f"{prefix}check the highlighted fields")
            return
        self.say(f"{prefix}{describe(exc)}")
        self.notify(f"{prefix}{describe(exc)}", severity="error", timeout=8)

    @on(Failed)
    def _on_failed(self, event: Failed) -> None:
        self.failed(event)

    def failed(self, event: Failed) -> None:
        """Show a worker's failure (screens that also restore some state extend this)."""
        self.report_error(event.error, event.what)

    @on(ModelsChanged)
    def _models_changed(self) -> None:
        self.studio.models_changed()

    @on(Done)
    def done(self, event: Done) -> None:
        self.say(event.text)
        self.notify(event.text)

    def receive(self, payload: Any) -> None:
        """Something another screen handed over (see StudioApp.hand_over)."""


class _Dated(Protocol):
    @property
    def created_at(self) -> datetime | None: ...


D = TypeVar("D", bound=_Dated)


def newest_first(items: Iterable[D]) -> list[D]:
    """Gallery images or training jobs, newest first (undated ones last)."""
    return sorted(
        items, key=lambda i: i.created_at.timestamp() if i.created_at else 0.0, reverse=True
    )
