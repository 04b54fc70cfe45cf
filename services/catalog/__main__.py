"""`python -m services.catalog`: run the catalog service (see `--help`)."""

from services.catalog.servicer import build
from shared.server import run_service

if __name__ == "__main__":
    raise SystemExit(run_service("catalog", build))
