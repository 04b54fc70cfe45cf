"""`python -m boothstudio.clients.sdk.cli`: the `boothstudio` command line."""

from boothstudio.clients.sdk.cli import run

run()
