"""`python -m boothstudio.clients.sdk`: the `boothstudio` command line."""

from boothstudio.clients.sdk.cli import run

run()
