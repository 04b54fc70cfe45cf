"""Gallery thumbnails: a picture and its prompt and seed; focusing or clicking one selects it
(the Gallery screen and the gallery picker of Edit)."""

from __future__ import annotations

from dataclasses import dataclass

from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Static

from boothstudio.clients.sdk import GalleryImage
from boothstudio.clients.tui.images import image_widget, set_image
from boothstudio.clients.tui.settings import ImageMethod


class Thumb(Vertical, can_focus=True):
    """A thumbnail; focusing or clicking it selects the image."""

    @dataclass
    class Selected(Message):
        thumb: Thumb

        @property
        def control(self) -> Thumb:
            return self.thumb

    def __init__(self, image: GalleryImage, png: bytes | None, method: ImageMethod) -> None:
        super().__init__(classes="thumb", id=f"thumb-{image.image_id}")
        self.image = image
        self.png = png
        self.method = method

    def compose(self) -> ComposeResult:
        yield image_widget(self.png, self.method, classes="thumb-image")
        caption = self.image.prompt[:18] or "(no prompt)"
        yield Static(f"{caption}\nseed {self.image.seed}", classes="thumb-caption")

    def show_png(self, png: bytes) -> None:
        self.png = png
        for picture in self.query(".thumb-image"):  # none yet: compose uses self.png
            set_image(picture, png)

    def on_focus(self) -> None:
        self.post_message(self.Selected(self))

    def on_click(self) -> None:
        self.focus()
