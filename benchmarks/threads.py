"""Pin the BLAS/OpenMP thread pools to ``--threads`` before NumPy starts them (import this first).

A benchmark that compares against single-threaded peers must fix the pools' size before NumPy is
imported: the variables are read once, when the libraries load.
"""

from __future__ import annotations

import os
import sys

#: Variables the BLAS and OpenMP runtimes read their pool size from.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")


def threads_from_argv(argv: list[str]) -> int:
    """``--threads`` from the command line (default: every core)."""
    for i, arg in enumerate(argv):
        if arg == "--threads" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--threads="):
            return int(arg.split("=", 1)[1])
    return os.cpu_count() or 1


THREADS = threads_from_argv(sys.argv)
for _variable in THREAD_VARIABLES:
    os.environ[_variable] = str(THREADS)
