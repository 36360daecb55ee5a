"""gpuhc: Slurm-native GPU health checks and quarantine."""

__version__ = "0.1.0"
