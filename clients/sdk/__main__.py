"""`python -m clients.sdk`: the `boothstudio` command line."""

from clients.sdk.cli import run

run()
