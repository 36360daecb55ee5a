"""All-reduce sweep with torch.distributed, measured like nccl-tests (issues 13 and 16).

The rank's side (:func:`run`: join the group, time each size, check the sums, bound every step by a timeout
and a watchdog; :class:`AllReduceRun`, :class:`SizeResult`) is :mod:`gpuhc.workloads.allreduce_rank`; the
launcher of ranks on this machine and the command line (:func:`launch_local`, :class:`LocalRun`,
:func:`format_table`, :func:`main`) are :mod:`gpuhc.workloads.allreduce_local`. This module is their public
face, and the entry point: each rank launch_local spawns runs ``python -m gpuhc.workloads.allreduce --rank R
...``, and so does a one-node run:
    python -m gpuhc.workloads.allreduce --launch-local 2 [--backend gloo] [--sizes 4096,1048576]
"""

import sys

from .allreduce_local import LocalRun, format_table, free_port, launch_local, main
from .allreduce_rank import DEFAULT_SIZES, DTYPE_BYTES, WATCHDOG_EXIT, AllReduceRun, SizeResult, bus_factor, run

# re-exported: callers import these from allreduce
__all__ = ["AllReduceRun", "DEFAULT_SIZES", "DTYPE_BYTES", "LocalRun", "SizeResult", "WATCHDOG_EXIT", "bus_factor",
           "format_table", "free_port", "launch_local", "main", "run"]

if __name__ == "__main__":
    sys.exit(main())
