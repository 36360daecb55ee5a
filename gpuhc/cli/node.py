"""Commands that run on a node: check, the Slurm contexts, bench, reset, ack, xid, scenarios, profiles."""
from __future__ import annotations

import logging
import os
import sys
from typing import List, Optional

import click

from ..errors import GpuhcError
from .base import NODE_HELP, SyslogHandler, _state, common_options, emit_json, error_line, finish, load_config, main


@main.command()
@common_options
@click.option("--suite", metavar="NAME", help="Suite of checks from config (prolog, epilog, lightweight, intensive...).")
@click.option("--check", "checks", metavar="NAME", multiple=True, help="Run only this check (repeatable).")
@click.option("--node", metavar="NAME", help=NODE_HELP)
@click.option("--context", "context_name", default="check", hidden=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-a", "--all", "show_all", is_flag=True, help="Show every finding, passes included.")
@click.option("--no-record", is_flag=True, help="Do not write the result to the store. A run with --simulate is "
              "recorded only when --node names the node it stands for.")
@click.pass_context
def check(ctx: click.Context, suite: Optional[str], checks: List[str], node: Optional[str], context_name: str,
          as_json: bool, show_all: bool, no_record: bool) -> None:
    """Run health checks on this node and print the findings."""
    from .. import contexts, output
    from ..contexts.check import Check
    from ..contexts.pipeline import run as run_pipeline

    if suite and checks:
        # --check runs only the named checks: the report would carry the suite's name (which
        # resume weighs by suite_depth) for checks that suite did not run
        raise GpuhcError("--suite %s and --check: give one (--check runs only the named checks)" % suite)
    context = contexts.get("check") if context_name == "check" else Check(context_name)
    outcome = run_pipeline(load_config(ctx), context, node=node, simulate=_state(ctx).get("simulate"),
                           suite=suite, checks=checks, record=not no_record)
    if as_json:
        emit_json(outcome.report.to_dict())
    else:
        click.echo(output.report_text(outcome.report, outcome.detection, show_all))
    for note in outcome.notes:
        click.echo("gpuhc: %s" % note, err=True)
    if outcome.run_ctx.gpu.hung is not None:
        # A thread is stuck in the GPU library: leave without waiting for it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(outcome.exit_code)
    ctx.exit(outcome.exit_code)


@main.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="A JSON list of names and descriptions.")
def scenarios(as_json: bool) -> None:
    """List the bundled simulated nodes."""
    from .. import scenario
    from ..output import table

    rows = scenario.describe_all()
    if as_json:
        emit_json([{"name": n, "description": d} for n, d in rows])
    else:
        click.echo(table(rows, ["SCENARIO", "DESCRIPTION"]))


@main.command()
@common_options
@click.option("--json", "as_json", is_flag=True, help="A JSON list of the profiles with every key they set.")
@click.pass_context
def profiles(ctx: click.Context, as_json: bool) -> None:
    """List the instance profiles in effect."""
    from .. import profiles as profile_file
    from ..output import table

    profs = profile_file.load(load_config(ctx).get("profiles"))
    if as_json:
        emit_json([p.to_dict() for p in profs.values()])
        return
    rows = [(p.name, p.gpus if p.gpus is not None else "-", p.model or "-", p.nvlinks if p.nvlinks is not None else "-",
             "yes" if p.nvswitch else "-", p.efa or p.ib or "-", p.description) for p in profs.values()]
    click.echo(table(rows, ["PROFILE", "GPUS", "MODEL", "NVLINKS", "NVSWITCH", "NICS", "DESCRIPTION"]))


@main.command()
@common_options
@click.argument("source", default="-", metavar="[FILE|-]")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of events.")
@click.option("--gpu-name", default="", metavar="NAME", help="GPU model for the catalog's conditional rules (e.g. A100).")
@click.option("--strict", is_flag=True, help="Strict mode of the catalog (Xid 165 ISOLATE); also on where config sets "
              "xid.strict.")
@click.pass_context
def xid(ctx: click.Context, source: str, as_json: bool, gpu_name: str, strict: bool) -> None:
    """Every Xid/SXid event in a saved kernel log (dmesg, journalctl, syslog), classified as the xid
    check classifies it (config's xid.overrides and xid.sxid_overrides included)."""
    from .. import xid as kernel_xid
    from ..output import table

    cond = kernel_xid.Conditions.from_config(load_config(ctx)["xid"], gpu_name=gpu_name, strict=strict)
    from ..backends.host import LOG_READ_MAX, read_regular

    if source == "-":
        data = sys.stdin.buffer.read(LOG_READ_MAX + 1)
    else:
        data = read_regular(source, LOG_READ_MAX)     # a regular file only (not a FIFO, not /dev/zero)
        if data is None:
            raise GpuhcError("%s: cannot read (missing, unreadable or not a regular file)" % source)
    if len(data) > LOG_READ_MAX:
        raise GpuhcError("%s: larger than %d MiB: give the part to read (e.g. tail -c or journalctl --since)"
                         % (source, LOG_READ_MAX >> 20))
    # lines are counted as the check counts them (newlines only), so `line` is what grep -n says
    events = kernel_xid.describe(kernel_xid.scan(data.decode("utf-8", "replace")), cond)
    if as_json:
        emit_json(events)
        return
    rows = [(e["time"] or "-", e["pci_bus_id"], ("SXid " if e["kind"] == "sxid" else "") + str(e["xid"]),
             e["severity"], e["resolution"], e["message"]) for e in events]
    click.echo(table(rows, ["TIME", "PCI", "XID", "SEVERITY", "RESOLUTION", "MESSAGE"]) if rows else "no Xid or SXid events")


@main.command()
@common_options
@click.option("--node", metavar="NAME", help=NODE_HELP)
@click.option("--xid", "xid_number", type=int, metavar="N", help="Only this Xid number.")
@click.option("--gpu", "pci_bus_id", metavar="BUS_ID", help="Only this GPU (PCI bus id, e.g. 0000:5d:00.0).")
@click.option("--json", "as_json", is_flag=True, help="Print node, count acknowledged, xid and pci_bus_id as JSON.")
@click.pass_context
def ack(ctx: click.Context, node: Optional[str], xid_number: Optional[int], pci_bus_id: Optional[str],
        as_json: bool) -> None:
    """Acknowledge the active Xid events of this node: they stop causing findings until they recur."""
    from .. import session
    from ..backends.gpu import parse_bus_id
    from ..checks.xid import acknowledge

    cfg = load_config(ctx)
    if pci_bus_id is not None and parse_bus_id(pci_bus_id) is None:
        raise GpuhcError("--gpu %r: expected a PCI bus id like 0000:5d:00.0" % pci_bus_id)
    name = session.node_name(node)
    n = acknowledge(cfg["state_dir"], name, xid_number, pci_bus_id)
    which = "".join([" Xid %d" % xid_number if xid_number is not None else "",
                     " on GPU %s" % parse_bus_id(pci_bus_id) if pci_bus_id is not None else ""])
    if as_json:
        emit_json({"node": name, "acknowledged": n, "xid": xid_number,
                   "pci_bus_id": parse_bus_id(pci_bus_id) if pci_bus_id is not None else None})
    elif n:
        click.echo("%s: acknowledged %d Xid event(s)%s" % (name, n, which))
    else:
        click.echo("%s: no active Xid event%s to acknowledge (state in %s)" % (name, which, cfg["state_dir"]))


def _context_command(context: str, doc: str):
    @click.option("--node", metavar="NAME", help=NODE_HELP)
    @click.option("--json", "as_json", is_flag=True,
                  help="Print the report and what was done as JSON instead of one line per finding.")
    @common_options
    @click.pass_context
    def command(ctx: click.Context, node: Optional[str], as_json: bool) -> None:
        from .. import contexts
        from ..contexts.pipeline import process_started

        logging.getLogger("gpuhc").addHandler(SyslogHandler(context))
        try:
            outcome = contexts.run(load_config(ctx), context, node=node, simulate=_state(ctx).get("simulate"),
                                   started=process_started())
        except Exception as exc:
            # slurmd discards the output: without this line a misconfigured node drains with
            # Slurm's "Prolog error" and nothing on it says why (stderr gets the line from Group)
            from .. import syslogging

            syslogging.send([error_line(exc, "gpuhc %s" % context)], "LOG_ERR")
            raise
        finish(outcome, as_json)
    command.__doc__ = doc
    return main.command(name=context)(command)


_context_command("prolog", "Slurm Prolog: check, drain an unhealthy node and exit 1 so the job is requeued.")
_context_command("epilog", "Slurm Epilog: what happened during the job; drain and attribute findings to the job.")
_context_command("healthcheck", "Slurm HealthCheckProgram: non-invasive checks; drains like the prolog, resumes on evidence.")


@main.command()
@common_options
@click.option("--node", metavar="NAME", help=NODE_HELP)
@click.option("--gpu", "gpus", multiple=True, metavar="INDEX|BUS_ID",
              help="A GPU to reset (repeatable). Default: the GPUs with an active RESET-tier Xid (what a reset resolves).")
@click.option("--all", "every", is_flag=True, help="Every GPU NVML lists.")
@click.option("--force", is_flag=True, help="Reset even while Slurm shows jobs on the node, or cannot say.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list: gpu, pci_bus_id, result, detail.")
@click.pass_context
def reset(ctx: click.Context, node: Optional[str], gpus: List[str], every: bool, force: bool, as_json: bool) -> None:
    """Reset GPUs (nvidia-smi --gpu-reset) on a node without jobs; the Xids a reset resolves stop counting."""
    from .. import reset as gpu_reset
    from ..output import table

    if every and gpus:
        raise GpuhcError("--all and --gpu %s: give one (--all resets every GPU)" % " --gpu ".join(gpus))
    rows = gpu_reset.reset(load_config(ctx), node=node, simulate=_state(ctx).get("simulate"), wanted=gpus,
                   every=every, force=force)
    if as_json:
        emit_json([{"gpu": r.gpu, "pci_bus_id": r.pci_bus_id, "result": r.result, "detail": r.detail} for r in rows])
    else:
        click.echo(table([(r.gpu, r.pci_bus_id, r.result, r.detail) for r in rows], ["GPU", "PCI", "RESULT", "DETAIL"]))
    ctx.exit(0 if all(r.result == "reset" for r in rows) else 1)


@main.command()
@common_options
@click.option("--check", "checks", metavar="NAME", multiple=True,
              help="Only this deep check (repeatable): gpu_stress, gpu_bench, allreduce_node. Default: all three.")
@click.option("--duration", type=float, metavar="S", help="gpu_stress's load, seconds (default gpu_stress.duration).")
@click.option("--device", type=click.Choice(["cuda", "cpu"]),
              help="Where the torch workloads run (default: CUDA; cpu runs the same code on the CPU, small sizes; "
                   "a simulated node uses its scenario's figures unless this is given).")
@click.option("--node", metavar="NAME", help=NODE_HELP)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--no-record", is_flag=True, help="Do not write the result to the store.")
@click.option("--collect", metavar="NODELIST", help="Run nothing: show these nodes' newest bench figures side by side "
              "(of --job), with the median and the nodes below it; what sbatch/benchmark.sbatch ends with.")
@click.option("--job", metavar="JOBID", help="With --collect: only the figures of this Slurm job.")
@click.pass_context
def bench(ctx: click.Context, checks: List[str], duration: Optional[float], device: Optional[str], node: Optional[str],
          as_json: bool, no_record: bool, collect: Optional[str], job: Optional[str]) -> None:
    """Load this node's GPUs: stress with result comparison, matmul/HBM/PCIe/P2P benchmarks, the
    node's all-reduce; print the per-GPU figures and record them. The node must be the job's alone."""
    from ..contexts import bench as bench_context
    from ..contexts.pipeline import run as run_pipeline

    cfg = load_config(ctx)
    if collect:
        from ..fleet.benchmarks import collect_job
        from ..hostlist import expand

        text, code = collect_job(cfg, expand(collect, "--collect"), job, as_json)
        click.echo(text)
        ctx.exit(code)
    if duration is not None:
        if duration <= 0:
            raise GpuhcError("--duration %g: expected a number of seconds above 0" % duration)
        cfg["gpu_stress"]["durations"]["bench"] = duration
    if device:
        cfg["deep"]["device"] = device
    outcome = run_pipeline(cfg, bench_context.CONTEXT, node=node, simulate=_state(ctx).get("simulate"),
                           checks=checks or [], suite=None if checks else "bench", record=not no_record,
                           progress=bench_context.progress_to_stderr)
    if as_json:
        emit_json(outcome.report.to_dict())
    else:
        click.echo(bench_context.text(outcome.report, outcome.detection))
    for note in outcome.notes:
        click.echo("gpuhc: %s" % note, err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(outcome.exit_code)      # a workload child or a GPU call may still be stuck: do not wait for it
