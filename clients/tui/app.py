"""BoothStudio's terminal studio: the App, its modes (screens), health polling and settings.

The studio talks to the services only through the SDK's `AsyncBoothStudio`; every call runs in
a worker and reports back with a message, so the interface never waits on the network.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from textual import events, on, work
from textual.app import App
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.reactive import reactive
from textual.widgets import Input, TextArea

from boothstudio.clients.sdk import AsyncBoothStudio, AsyncGenerationStream, ServiceHealth
from boothstudio.clients.tui.commands import StudioCommands
from boothstudio.clients.tui.screens.base import StudioScreen
from boothstudio.clients.tui.screens.edit import EditScreen
from boothstudio.clients.tui.screens.gallery import GalleryScreen
from boothstudio.clients.tui.screens.generate import GenerateScreen
from boothstudio.clients.tui.screens.models import ModelsScreen
from boothstudio.clients.tui.screens.settings import SettingsScreen
from boothstudio.clients.tui.screens.train import TrainScreen
from boothstudio.clients.tui.settings import DEFAULT_THEME, ImageMethod, StudioSettings
from boothstudio.clients.tui.themes import STUDIO_THEMES
from boothstudio.clients.tui.widgets.fields import describe

ClientFactory = Callable[[StudioSettings], AsyncBoothStudio]


def default_client(settings: StudioSettings) -> AsyncBoothStudio:
    return AsyncBoothStudio(**settings.client_kwargs())


class StudioApp(App[None]):
    """The studio. Modes: generate, edit, gallery, train, models, settings."""

    CSS_PATH = "studio.tcss"
    TITLE = "BoothStudio"
    COMMANDS = App.COMMANDS | {StudioCommands}

    NAVIGATION: ClassVar[list[tuple[str, str, str]]] = [
        ("generate", "Generate", "f1"),
        ("edit", "Edit", "f2"),
        ("gallery", "Gallery", "f3"),
        ("train", "Train", "f4"),
        ("models", "Models", "f5"),
        ("settings", "Settings", "f6"),
    ]
    MODES: ClassVar[dict[str, Any]] = {
        "generate": GenerateScreen,
        "edit": EditScreen,
        "gallery": GalleryScreen,
        "train": TrainScreen,
        "models": ModelsScreen,
        "settings": SettingsScreen,
    }
    DEFAULT_MODE = "generate"
    BINDINGS: ClassVar[list[BindingType]] = [
        *(Binding(key, f"go('{mode}')", title) for mode, title, key in NAVIGATION),
        Binding("ctrl+t", "toggle_dark", "Theme", show=False),
    ]

    #: Health status per service ("SERVING", "UNAVAILABLE", ... or "UNKNOWN").
    health: reactive[dict[str, str]] = reactive(dict, always_update=True)
    #: Bumped when the catalog's models may have changed (a job succeeded, an import, a
    #: delete, or every `models_interval` seconds): screens with model lists reload them.
    models_version: reactive[int] = reactive(0)

    @dataclass
    class HealthChecked(Message):
        statuses: dict[str, str]

    def __init__(
        self,
        settings: StudioSettings | None = None,
        *,
        settings_path: Path | None = None,
        client_factory: ClientFactory = default_client,
        health_interval: float = 5.0,
        models_interval: float = 60.0,
        cursor_blink: bool = True,
        images: ImageMethod | None = None,
    ) -> None:
        super().__init__()
        if settings is None:
            base = StudioSettings.from_environment()
            if settings_path is not None:
                base = StudioSettings.load(settings_path, base)
        else:
            base = settings
        if images is not None:
            base = base.updated(images=images)
        self.settings = base
        self.settings_path = settings_path
        self.client_factory = client_factory
        self.health_interval = health_interval
        self.models_interval = models_interval
        self.cursor_blink = cursor_blink
        self._client: AsyncBoothStudio | None = None
        #: PNG bytes by gallery image id (thumbnails and full views share them).
        self.png_cache: dict[str, bytes] = {}
        self._handoff: dict[str, Any] = {}
        #: Running generations (Generate and Edit) by job id.
        self.generations: dict[str, AsyncGenerationStream] = {}
        for theme in STUDIO_THEMES:
            self.register_theme(theme)
        # Before mounting: a theme set later restyles every widget once more.
        self.set_theme(base.theme)

    # ------------------------------------------------------------------------------ client

    @property
    def client(self) -> AsyncBoothStudio:
        """The SDK client for the current settings (created inside the event loop)."""
        if self._client is None:
            self._client = self.client_factory(self.settings)
        return self._client

    @property
    def image_method(self) -> ImageMethod:
        return self.settings.images

    def apply_settings(self, settings: StudioSettings, *, save: bool = True) -> None:
        """Use new settings: reconnect, re-check health, save them."""
        old, self._client = self._client, None
        reconnect = settings.client_kwargs() != self.settings.client_kwargs()
        self.settings = settings
        self.set_theme(settings.theme)
        if old is not None and reconnect:
            self.close_client(old)
        elif old is not None:
            self._client = old
        if save and self.settings_path is not None:
            self.save_settings(settings, self.settings_path)
        self.poll_health()

    @work(group="io")
    async def close_client(self, client: AsyncBoothStudio) -> None:
        await client.close()

    @work(group="io", thread=True)
    def save_settings(self, settings: StudioSettings, path: Path) -> None:
        try:
            settings.save(path)
        except OSError as exc:
            self.call_from_thread(self.notify, f"cannot save settings: {exc}", severity="error")

    # ------------------------------------------------------------------------------- mount

    def on_mount(self) -> None:
        self.poll_health()
        if self.models_interval > 0:
            self.set_interval(self.models_interval, self.models_changed)

    def models_changed(self) -> None:
        """The catalog's models changed (or may have): every model list reloads."""
        self.models_version += 1

    async def on_unmount(self) -> None:
        if self._client is not None:
            await self._client.close()

    def set_theme(self, name: str) -> None:
        self.theme = name if name in self.available_themes else DEFAULT_THEME
        if self.settings.theme != self.theme:
            self.settings = self.settings.updated(theme=self.theme)

    @on(events.DescendantFocus)
    def _no_blink(self, event: events.DescendantFocus) -> None:
        if not self.cursor_blink and isinstance(event.widget, Input | TextArea):
            event.widget.cursor_blink = False

    # ------------------------------------------------------------------------------ health

    @work(exclusive=True, group="health")
    async def poll_health(self) -> None:
        """Ask every service for its health now and then every `health_interval` seconds."""
        while True:
            try:
                checks: list[ServiceHealth] = await self.client.health(timeout=2.0)
                statuses: dict[str, str] = {}
                for h in checks:
                    if statuses.get(h.service, "SERVING") == "SERVING":
                        statuses[h.service] = h.status
            except Exception as exc:
                statuses = {
                    s: type(exc).__name__.upper() for s in ("catalog", "generator", "trainer")
                }
            self.post_message(self.HealthChecked(statuses))
            if self.health_interval <= 0:
                return
            await asyncio.sleep(self.health_interval)

    @on(HealthChecked)
    def _health_checked(self, event: HealthChecked) -> None:
        self.health = event.statuses

    def action_check_health(self) -> None:
        self.poll_health()

    # ------------------------------------------------------------------------- generations

    def action_cancel_generation(self) -> None:
        """Cancel every running generation, whichever screen started it."""
        if not self.generations:
            self.notify("no generation is running")
        for job_id in list(self.generations):
            self.cancel_generation(job_id)

    @work(group="cancel")
    async def cancel_generation(self, job_id: str) -> None:
        """Ask the generator running `job_id` to stop; its stream ends Finished(CANCELLED)."""
        stream = self.generations.get(job_id)
        try:
            if stream is not None:
                await stream.cancel()
        except Exception as exc:
            self.notify(f"cancel: {describe(exc)}", severity="error", timeout=8)

    # -------------------------------------------------------------------------- navigation

    async def action_go(self, mode: str) -> None:
        if self.current_mode != mode:
            await self.switch_mode(mode)

    async def hand_over(self, mode: str, payload: Any) -> None:
        """Switch to `mode` and give its screen `payload` (reuse settings, an image, a model)."""
        self._handoff[mode] = payload
        await self.action_go(mode)
        screen = self.screen
        if isinstance(screen, StudioScreen) and screen.is_mounted:
            self.deliver(screen)

    def deliver(self, screen: StudioScreen) -> None:
        """Give `screen` what was handed over to it, if anything."""
        if screen.MODE in self._handoff:
            screen.receive(self._handoff.pop(screen.MODE))

    async def run_screen_action(self, mode: str, action: str) -> None:
        await self.action_go(mode)
        await self.screen.run_action(action)

    def action_toggle_dark(self) -> None:
        dark = self.current_theme.dark
        self.set_theme("booth-light" if dark else "booth-dark")
