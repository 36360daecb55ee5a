"""Who is to blame when a multi-node all-reduce fails: pairwise rounds, bisection, conviction.

Pure functions over plain data (no torch, no Slurm, no store), so the nccl command can call them inside a job
(bisection over the job's own nodes with ``srun -w``) and on the controller (pairwise rounds and the pair
history), and the tests and ``bench/blame.py`` call them on simulated fleets.

A *run* is one all-reduce over a group of nodes: a :class:`GroupResult`. Runs over one node judge that node's
own bandwidth against the one-node threshold and are no evidence about partners: blame ignores them.

The rule that convicts a node or suspects a link (:func:`convict`, with its reasons and limits) is in
:mod:`gpuhc.controller.conviction`; the pairwise rounds (:func:`pair_rounds`) and the plan that narrows a
failure down round by round (:class:`Bisection`) are in :mod:`gpuhc.controller.bisection`. This module is
their public face: callers import from here.
"""
from __future__ import annotations

from .bisection import Bisection, default_rounds, pair_rounds
from .conviction import EXACT_PAIRS_UP_TO, Evidence, Group, GroupResult, Pair, Verdict, _Knowledge, convict

# re-exported: callers import these from blame (the tests reach _Knowledge for rule 4c)
__all__ = ["Bisection", "EXACT_PAIRS_UP_TO", "Evidence", "Group", "GroupResult", "Pair", "Verdict", "_Knowledge",
           "convict", "default_rounds", "pair_rounds"]
