"""Commands that act on the fleet through Slurm from the controller: resume, quarantine, sweep, nccl."""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Optional

import click

from ..errors import GpuhcError
from .base import NODE_HELP, SyslogHandler, _state, common_options, emit_json, finish, load_config, main


@main.command()
@common_options
@click.argument("nodelist")
@click.option("--force", is_flag=True, help="Resume any gpuhc drain now and acknowledge the findings that caused it.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list: node, result, why.")
@click.pass_context
def resume(ctx: click.Context, nodelist: str, force: bool, as_json: bool) -> None:
    """Resume nodes gpuhc drained: on enough passes, or now with --force. Other drains are refused."""
    from ..hostlist import expand
    from ..output import table
    from ..resume import resume_nodes

    rows = resume_nodes(load_config(ctx), expand(nodelist), force)
    if as_json:
        emit_json([{"node": n, "result": r, "why": w} for n, r, w in rows])
    else:
        click.echo(table(rows, ["NODE", "RESULT", "WHY"]))
    ctx.exit(0 if all(r in ("resumed", "skipped") for _, r, _ in rows) else 1)


@main.command()
@common_options
@click.option("-p", "--partition", metavar="PARTITION[,...]", help="Only idle nodes of these Slurm partitions.")
@click.option("--max-nodes", type=int, metavar="N", help="At most N jobs this run (default sweep.max_nodes).")
@click.option("--interval", metavar="DURATION",
              help="Skip nodes deep-checked within DURATION (30m, 24h, 7d; default sweep.interval).")
@click.option("--suite", metavar="NAME", help="The suite the jobs run (default context_suites.sweep).")
@click.option("--dry-run", is_flag=True, help="Print what would be submitted; submit and change nothing.")
@click.option("--run-here", is_flag=True,
              help="On a node: run the sweep's checks here and act on them (what sbatch/sweep.sbatch runs; "
                   "takes --node, --suite, --json).")
@click.option("--node", metavar="NAME", help=NODE_HELP)
@click.option("--json", "as_json", is_flag=True, help="JSON: what was chosen and why, job ids, the quarantine step.")
@click.pass_context
def sweep(ctx: click.Context, partition: Optional[str], max_nodes: Optional[int], interval: Optional[str],
          suite: Optional[str], dry_run: bool, run_here: bool, node: Optional[str], as_json: bool) -> None:
    """Controller (cron): send short exclusive check jobs to the idle nodes deep-checked longest
    ago, a few at a time; only one sweep runs at a time. With --run-here: the job's step on its node."""
    cfg = load_config(ctx)
    if run_here:
        from ..contexts import sweep as sweep_context
        from ..contexts.pipeline import run as run_pipeline

        extra = [n for n, v in (("-p", partition), ("--max-nodes", max_nodes), ("--interval", interval),
                                ("--dry-run", dry_run)) if v not in (None, False)]
        if extra:
            raise GpuhcError("--run-here runs the checks on this node: %s is the controller's" % ", ".join(extra))
        logging.getLogger("gpuhc").addHandler(SyslogHandler("sweep"))
        outcome = run_pipeline(cfg, sweep_context.CONTEXT, node=node, simulate=_state(ctx).get("simulate"), suite=suite,
                               progress=sweep_context.progress_to_stderr)
        finish(outcome, as_json)
    from ..controller.sweep import sweep as run_sweep
    from ..controller.sweep import text
    from ..status import parse_duration

    if node:
        raise GpuhcError("--node goes with --run-here (the controller picks the nodes)")
    result = run_sweep(cfg, partitions=partition.split(",") if partition else None, max_nodes=max_nodes,
                       interval=parse_duration(interval, "--interval") if interval else None, suite=suite,
                       dry_run=dry_run)
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(text(result), err=not result.ran)
    for note in result.notes:
        click.echo("gpuhc sweep: %s" % note, err=True)
    if result.error:
        click.echo("gpuhc sweep: error: %s" % result.error, err=True)
    ctx.exit(result.exit_code)


@main.command()
@common_options
@click.argument("nodelist", required=False)
@click.option("--force", is_flag=True, help="Take over a node an operator drained (its reason is kept).")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--list", "show_list", is_flag=True, help="Every node in quarantine: reservation, job, state, reason.")
@click.option("--cancel", is_flag=True, help="End the quarantine of NODELIST: job cancelled, node drained as it came, "
              "reservation deleted.")
@click.option("--reconcile", is_flag=True, help="Repair leftovers: reservations with no live job, nodes that left "
              "quarantine without a verdict (gpuhc sweep runs this).")
@click.option("--run", "run_here", is_flag=True, help="On the node, inside the quarantine job (sbatch/quarantine.sbatch): "
              "the quarantine suite, the verdict, acting on it.")
@click.option("--finish", "finish_node", metavar="NODE", help="After NODE's quarantine job: wait for it to leave Slurm, "
              "make sure the node carries a verdict, delete the reservation (the job's epilog starts this).")
@click.option("--job", metavar="JOBID", help="With --finish: the quarantine job.")
@click.option("--node", metavar="NAME", help=NODE_HELP)
@click.option("--json", "as_json", is_flag=True, help="JSON objects instead of a table.")
@click.pass_context
def quarantine(ctx: click.Context, nodelist: Optional[str], force: bool, dry_run: bool, show_list: bool, cancel: bool,
               reconcile: bool, run_here: bool, finish_node: Optional[str], job: Optional[str], node: Optional[str],
               as_json: bool) -> None:
    """Exclusive deep diagnostics on suspect nodes through a maintenance reservation, and a verdict:
    return to service, reset, reboot or replace. Run on the controller or a login node."""
    from . import quarantine_modes

    text, code = quarantine_modes.main(load_config(ctx), nodelist=nodelist, force=force, dry_run=dry_run, show_list=show_list,
                        cancel=cancel, reconcile=reconcile, run_here=run_here, finish_node=finish_node, job=job,
                        node=node, simulate=_state(ctx).get("simulate"), as_json=as_json)
    if text:
        click.echo(text)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@main.command()
@common_options
@click.option("--pairs", "pairs_nodelist", metavar="NODELIST",
              help="Controller: all-reduce every pair of these nodes as jobs (rounds of disjoint pairs), then "
                   "convict and drain as a bisection does.")
@click.option("--quick", is_flag=True, help="With --pairs: two rounds only (every node with two partners).")
@click.option("--job-bisect", is_flag=True,
              help="Inside sbatch/nccl-allreduce.sbatch: run the job's nodes, and on failure find the node to "
                   "blame with srun steps on subsets of the allocation.")
@click.option("--no-bisect", is_flag=True, help="With --job-bisect: measure and record only.")
@click.option("--pair", "pair_job", is_flag=True, hidden=True)
@click.option("--step", is_flag=True, hidden=True)
@click.option("--purpose", type=click.Choice(["run", "bisect", "pair"]), default="run", hidden=True)
@click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]),
              help="cuda (NCCL, one rank per GPU) or cpu (gloo); default nccl.device (auto).")
@click.option("--ntasks-per-node", type=click.IntRange(1), metavar="N",
              help="Ranks per node for --job-bisect and --pairs (default: the job's, else one per GPU).")
@click.option("--sizes", metavar="BYTES[,...]", help="Message sizes (default nccl.sizes, else 1 MiB..8 GiB on GPUs).")
@click.option("--algo", metavar="NAME", help="NCCL_ALGO for this run (pairs always run Ring).")
@click.option("--dry-run", is_flag=True, help="With --pairs: print the rounds; submit nothing.")
@click.option("--json", "as_json", is_flag=True, help="JSON: the run's record, or the pairs' jobs and verdict.")
@click.pass_context
def nccl(ctx: click.Context, pairs_nodelist: Optional[str], quick: bool, job_bisect: bool, no_bisect: bool,
         pair_job: bool, step: bool, purpose: str, device: Optional[str], ntasks_per_node: Optional[int],
         sizes: Optional[str], algo: Optional[str], dry_run: bool, as_json: bool) -> None:
    """Multi-node all-reduce like nccl-tests: under srun, one rank per GPU (the default); in a batch job
    with --job-bisect (sbatch/nccl-allreduce.sbatch); over pairs from the controller with --pairs."""
    cfg = load_config(ctx)
    if pairs_nodelist:
        from ..controller.nccl_pairs import pairs, text

        outcome = pairs(cfg, pairs_nodelist, quick=quick, device=device, ntasks_per_node=ntasks_per_node,
                        sizes=sizes, dry_run=dry_run)
        click.echo(json.dumps(outcome.to_dict(), indent=2) if as_json else text(outcome))
        ctx.exit(outcome.exit_code)
    if job_bisect:
        from ..contexts.nccl_job import job_bisect as run_job

        base = [sys.executable, "-m", "gpuhc"] + [x for k in ("config", "simulate") if _state(ctx).get(k)
                                                   for x in ("--" + k, _state(ctx)[k])]
        code = run_job(cfg, device=device, ntasks_per_node=ntasks_per_node, bisect=False if no_bisect else None,
                       pair=pair_job, sizes=sizes, base_command=base, out=lambda line: click.echo(line))
        sys.stdout.flush()
        ctx.exit(code)
    from ..contexts.nccl import parse_sizes, run_rank

    record, code = run_rank(cfg, device=device, sizes=parse_sizes(sizes), algo=algo, purpose=purpose, step=step,
                            simulate=_state(ctx).get("simulate"),
                            out=(lambda line: None) if as_json else (lambda line: click.echo(line)))
    if as_json and record is not None:
        emit_json(record)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)     # never wait for a torch thread stuck in a collective
