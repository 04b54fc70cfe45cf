"""`python -m clients.sdk.cli`: the `boothstudio` command line."""

from clients.sdk.cli import run

run()
