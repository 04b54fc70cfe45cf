"""Generated images shown as tiles (picture + caption), and a progress line with ETA."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import ProgressBar, Static

from boothstudio.clients.tui.images import image_widget
from boothstudio.clients.tui.settings import ImageMethod


class ResultTile(Vertical):
    """One generated image and what it is (seed, gallery id)."""

    def __init__(
        self, png: bytes, caption: str, method: ImageMethod, *, image_id: str = ""
    ) -> None:
        super().__init__(classes="result-tile")
        self.png = png
        self.caption = caption
        self.method = method
        self.image_id = image_id

    def compose(self) -> ComposeResult:
        yield image_widget(self.png, self.method, classes="result-image")
        yield Static(self.caption, classes="result-caption")


class JobProgress(Horizontal):
    """A progress bar with the server's own ETA (the bar's clock-based ETA stays off)."""

    def compose(self) -> ComposeResult:
        yield ProgressBar(total=1, show_eta=False, classes="job-bar")
        yield Static("idle", classes="job-eta")

    def reset(self, text: str = "idle") -> None:
        # A known total: an indeterminate bar animates (and would never look the same twice).
        self.query_one(ProgressBar).update(total=1, progress=0)
        self.query_one(".job-eta", Static).update(text)

    def show(self, done: float, total: float, text: str) -> None:
        self.query_one(ProgressBar).update(total=max(total, 1), progress=done)
        self.query_one(".job-eta", Static).update(text)

    def download(self, done: int, total: int) -> None:
        """The model being copied to the server's replica (its first use there)."""
        share = done / total if total else 0.0
        self.show(done, total, f"downloading model {share:.0%} of {total / 1e6:.1f} MB")

    def finish(self, text: str) -> None:
        bar = self.query_one(ProgressBar)
        bar.update(total=bar.total or 1, progress=bar.total or 1)
        self.query_one(".job-eta", Static).update(text)


def eta_text(seconds: float) -> str:
    if seconds <= 0:
        return ""
    if seconds < 60:
        return f"ETA {seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    return f"ETA {minutes}m{secs:02d}s"
