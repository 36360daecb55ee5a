"""Readers of the store for the fleet view (status, show/history, export, stragglers, report):
they never run a check. Slurm's view of the nodes is joined in here, read-only."""
