"""The torch engine: code that loads GPUs (DESIGN section 2, `workloads/`).

- `stress.run`: sustained matmul load on every device, results compared across devices and
  against a CPU float64 reference (issue 13, gpu_stress).
- `bench.matmul`, `bench.hbm`, `bench.pcie`, `bench.p2p`: dense matmul TFLOP/s and copy
  bandwidths (issue 13, gpu_bench).
- `allreduce.run`, `allreduce.launch_local`, `allreduce.format_table`: a torch.distributed
  all-reduce sweep measured like nccl-tests (issues 13 and 16).

Plain functions returning dataclasses (each has `as_dict()`); no check, store or Slurm code here.
Every function takes a device ("cuda", "cuda:N" or "cpu") and runs for real on the CPU (the tests),
with the same code path as on a GPU wherever the hardware allows.

Importing this package, or any module in it, does not import torch: torch is imported inside the
functions, so only the processes that run a workload pay for it (the prolog never does).
"""

__all__ = ["stress", "bench", "allreduce"]
