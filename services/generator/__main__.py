"""`python -m services.generator`: run the generator service (see `--help`)."""

import logging
import os
import sys

from services.generator.servicer import build
from shared.server import run_service


def main() -> None:
    code = run_service("generator", build)
    # The stop hooks have run (jobs cancelled, gallery closed). The device thread may still be
    # inside a model load or a step that cannot be interrupted; Python would join it at exit
    # (ThreadPoolExecutor threads are not daemons) and hold SIGTERM past the grace period.
    # Nothing it does can matter any more: flush what was said and leave now.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
