"""`python -m services.trainer`: run the trainer service (see `--help`)."""

from services.trainer.servicer import build
from shared.server import run_service

if __name__ == "__main__":
    raise SystemExit(run_service("trainer", build))
