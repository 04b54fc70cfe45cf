"""`python -m boothstudio.services.catalog`: run the catalog service (see `--help`)."""

from boothstudio.services.catalog.servicer import build
from boothstudio.shared.server import exit_service

if __name__ == "__main__":
    exit_service("catalog", build)
