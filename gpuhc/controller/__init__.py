"""Controller-side commands — sweep, quarantine, nccl pairs — plan and submit Slurm jobs and never touch GPUs; planning is pure.

The planning modules here (``blame``: pairwise rounds, bisection, conviction) are pure functions over plain
data, tested without Slurm; the commands around them do the submitting.
"""
