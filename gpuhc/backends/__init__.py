"""Backends: the only code that touches the world (NVML, host, Slurm)."""
