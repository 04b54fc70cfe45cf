"""The status bar at the bottom of every screen: each service's health and the last remark."""

from __future__ import annotations

from collections.abc import Mapping

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

SERVICES = ("catalog", "generator", "trainer")


class ServiceLight(Static):
    """One service: a dot coloured by its health (classes -serving, -down, -unknown)."""

    def __init__(self, service: str) -> None:
        super().__init__(id=f"health-{service}", classes="service-light -unknown")
        self.service = service
        self.status = "UNKNOWN"

    def on_mount(self) -> None:
        self.show("UNKNOWN")

    def show(self, status: str) -> None:
        self.status = status
        serving = status == "SERVING"
        unknown = status in ("UNKNOWN", "")
        self.set_class(serving, "-serving")
        self.set_class(unknown, "-unknown")
        self.set_class(not serving and not unknown, "-down")
        word = "up" if serving else ("?" if unknown else status.lower().replace("_", " "))
        self.update(f"● {self.service} {word}")


class StatusBar(Horizontal):
    """Health of the three services (from the app's `health`) and a short status line."""

    def compose(self) -> ComposeResult:
        for service in SERVICES:
            yield ServiceLight(service)
        yield Static("", id="status-line")

    def on_mount(self) -> None:
        self.watch(self.app, "health", self.show_health)

    def show_health(self, health: Mapping[str, str]) -> None:
        for light in self.query(ServiceLight):
            light.show(health.get(light.service, "UNKNOWN"))

    def say(self, text: str) -> None:
        self.query_one("#status-line", Static).update(text)
