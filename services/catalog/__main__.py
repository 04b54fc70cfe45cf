"""`python -m services.catalog`: run the catalog service (see `--help`)."""

from services.catalog.servicer import build
from shared.server import exit_service

if __name__ == "__main__":
    exit_service("catalog", build)
