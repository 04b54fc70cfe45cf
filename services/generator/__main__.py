"""`python -m services.generator`: run the generator service (see `--help`)."""

from services.generator.servicer import build
from shared.server import run_service

if __name__ == "__main__":
    raise SystemExit(run_service("generator", build))
