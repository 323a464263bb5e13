"""The Docker image's entrypoint: TorchServe and the page (``serve``), or Triton (``triton``).

    entrypoint.py serve      # default CMD: TorchServe + the page in the foreground until SIGTERM
    entrypoint.py triton [triton_serve flags]      # the PyTriton binding, bound to 0.0.0.0
    entrypoint.py health     # HEALTHCHECK: exit 0 only when what `serve`/`triton` started is ready
    entrypoint.py ready [MANAGEMENT_URL]   # KServe pod readiness: a READY TorchServe worker

The work is ``scripts.ops.container``'s, which reuses ``scripts.ops`` (the same start sequence,
config writer and TorchServe client as ``make run`` and the page).
"""

import sys

from scripts.ops.container import main

if __name__ == "__main__":
    sys.exit(main())
