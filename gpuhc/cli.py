"""Command line: one thin command per verb; parses, calls one function, prints."""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Dict, List, Optional

import click

from . import __version__
from . import config as C
from .errors import GpuhcError
from .model import EXIT_UNKNOWN, EXIT_USAGE

EXIT_INTERRUPTED = 130
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
NODE_HELP = "Slurm's name for this node (default $SLURMD_NODENAME, else the short hostname)."


def _state(ctx: click.Context) -> Dict[str, Any]:
    ctx.ensure_object(dict)
    return ctx.obj


def _store_option(key: str):
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            _state(ctx)[key] = value
        return value
    return callback


def common_options(fn):
    """--config and --simulate, accepted before or after the command name."""
    fn = click.option("--simulate", metavar="NAME|FILE", expose_value=False, callback=_store_option("simulate"),
                      help="Run against a simulated node (bundled scenario name or YAML file; %n = node name).")(fn)
    fn = click.option("--config", "config_path", metavar="PATH", expose_value=False, callback=_store_option("config"),
                      help="Configuration file (default $GPUHC_CONFIG or /etc/gpuhc/config.yaml).")(fn)
    return fn


def load_config(ctx: click.Context) -> Dict[str, Any]:
    return C.load(_state(ctx).get("config"))


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=False))


def error_line(exc: Exception, who: str = "gpuhc") -> str:
    """The one line an error prints: a usage or configuration error, else an internal error."""
    if isinstance(exc, GpuhcError):
        return "%s: error: %s" % (who, exc)
    return "%s: internal error: %s: %s (GPUHC_DEBUG=1 shows the traceback)" % (who, type(exc).__name__, exc)


class Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GpuhcError as exc:
            click.echo(error_line(exc), err=True)
            ctx.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            # 128 + SIGINT, as a shell says; click would exit 1, which means "unhealthy"
            click.echo("gpuhc: interrupted", err=True)
            ctx.exit(EXIT_INTERRUPTED)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            if os.environ.get("GPUHC_DEBUG"):
                raise
            click.echo(error_line(exc), err=True)
            ctx.exit(EXIT_UNKNOWN)


@click.group(cls=Group, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="gpuhc")
@common_options
def main() -> None:
    """gpuhc: Slurm-native GPU health checks, drains and quarantine."""
    _log_to_stderr()


class _LogFormat(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return "gpuhc: %s: %s" % (record.levelname.lower(), record.getMessage())


class _SyslogHandler(logging.Handler):
    """In a Slurm context the library's warnings (a result spooled, a corrupt record skipped) go
    to syslog as well: slurmd discards a prolog's stderr."""

    def __init__(self, context: str) -> None:
        super().__init__(logging.WARNING)
        self.context = context

    def emit(self, record: logging.LogRecord) -> None:
        from . import syslogging

        syslogging.send(["gpuhc %s: %s: %s" % (self.context, record.levelname.lower(), record.getMessage())],
                        "LOG_WARNING")


def _log_to_stderr() -> None:
    """Warnings of the library (a corrupt record skipped, a result spooled) as one stderr line each."""
    logger = logging.getLogger("gpuhc")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(_LogFormat())
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)


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
    from . import contexts, output
    from .contexts.check import Check
    from .contexts.pipeline import run as run_pipeline

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
    from . import scenario
    from .output import table

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
    from . import profiles as P
    from .output import table

    profs = P.load(load_config(ctx).get("profiles"))
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
    from . import xid as X
    from .output import table

    cond = X.Conditions.from_config(load_config(ctx)["xid"], gpu_name=gpu_name, strict=strict)
    from .backends.host import LOG_READ_MAX, read_regular

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
    events = X.describe(X.scan(data.decode("utf-8", "replace")), cond)
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
    from . import session
    from .backends.gpu import parse_bus_id
    from .checks.xid import acknowledge

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


@main.command()
@common_options
@click.option("-N", "--Node", "per_node", is_flag=True, help="One row per node (last check, context, top finding).")
@click.option("-R", "--list-reasons", "reasons", is_flag=True, help="One row per distinct reason, like sinfo -R.")
@click.option("-p", "--partition", metavar="PARTITION[,...]", help="Only these Slurm partitions.")
@click.option("-n", "--nodes", "nodelist", metavar="NODELIST", help="Only these nodes (hostlist: gpu-[001-064]).")
@click.option("-t", "--states", metavar="STATE[,...]",
              help="Only these health states: healthy, monitor, stale, never-checked, error, would-drain, "
                   "unhealthy, drained, quarantine, drained-admin, down.")
@click.option("-o", "--format", "fmt", metavar="FORMAT",
              help="Fields as in sinfo, %[.][size]X: %N nodes, %D count, %P partition, %t health, %s severity, "
                   "%T Slurm state, %c context, %j job id, %L last check, %a age, %R (or %E) reason, %W where, "
                   "%p profile, %A action.")
@click.option("--noheader", is_flag=True, help="No header line.")
@click.option("--json", "as_json", is_flag=True, help="JSON for automation (groups, nodes with -N, reasons with -R).")
@click.pass_context
def status(ctx: click.Context, per_node: bool, reasons: bool, partition: Optional[str], nodelist: Optional[str],
           states: Optional[str], fmt: Optional[str], noheader: bool, as_json: bool) -> None:
    """Health of every node in the store, grouped like sinfo."""
    from .fleet.slurm_view import slurm_view
    from .status import status_text

    cfg = load_config(ctx)
    click.echo(status_text(cfg, per_node=per_node, reasons=reasons, partitions=partition, nodelist=nodelist,
                           states=states, fmt=fmt, as_json=as_json, header=not noheader, slurm=slurm_view(cfg)))


@main.command()
@common_options
@click.argument("node")
@click.option("--json", "as_json", is_flag=True, help="The report as JSON.")
@click.pass_context
def show(ctx: click.Context, node: str, as_json: bool) -> None:
    """The newest full report of NODE, every finding included."""
    from .fleet.slurm_view import slurm_view
    from .status import show_text
    from .store import check_node_name

    cfg = load_config(ctx)
    check_node_name(node)             # a bad name is an error before Slurm is asked about it
    view = slurm_view(cfg, [node])
    click.echo(show_text(cfg, node, as_json=as_json, slurm=(view or {}).get(node)))


@main.command()
@common_options
@click.argument("node")
@click.option("--since", metavar="DURATION", help="Only results of the last DURATION (30m, 2h, 7d).")
@click.option("--check", metavar="NAME", help="Only results in which this check ran, and its findings.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list of the reports.")
@click.pass_context
def history(ctx: click.Context, node: str, since: Optional[str], check: Optional[str], as_json: bool) -> None:
    """The results of NODE over time, newest first."""
    from .status import history_text

    click.echo(history_text(load_config(ctx), node, since=since, check=check, as_json=as_json))


@main.group(cls=Group)
@common_options
def export() -> None:
    """Export the store's results to other systems."""


@export.command()
@common_options
@click.option("--output", metavar="FILE", help="Write the file atomically (node_exporter's textfile directory).")
@click.option("-n", "--nodes", "nodelist", metavar="NODELIST",
              help="Only these nodes (hostlist), e.g. the node itself: -n $SLURMD_NODENAME.")
@click.pass_context
def prometheus(ctx: click.Context, output: Optional[str], nodelist: Optional[str]) -> None:
    """Newest results as Prometheus text format (node_exporter textfile collector)."""
    from .export import export_prometheus
    from .fleet.slurm_view import slurm_view
    from .hostlist import expand

    cfg = load_config(ctx)
    text = export_prometheus(cfg, output, nodelist, slurm=slurm_view(cfg, expand(nodelist, "--nodes") if nodelist else None))
    if text:
        click.echo(text, nl=False)


def _context_command(context: str, doc: str):
    @click.option("--node", metavar="NAME", help=NODE_HELP)
    @click.option("--json", "as_json", is_flag=True,
                  help="Print the report and what was done as JSON instead of one line per finding.")
    @common_options
    @click.pass_context
    def command(ctx: click.Context, node: Optional[str], as_json: bool) -> None:
        from . import contexts

        logging.getLogger("gpuhc").addHandler(_SyslogHandler(context))
        try:
            outcome = contexts.run(load_config(ctx), context, node=node, simulate=_state(ctx).get("simulate"))
        except Exception as exc:
            # slurmd discards the output: without this line a misconfigured node drains with
            # Slurm's "Prolog error" and nothing on it says why (stderr gets the line from Group)
            from . import syslogging

            syslogging.send([error_line(exc, "gpuhc %s" % context)], "LOG_ERR")
            raise
        if as_json:
            emit_json(dict(outcome.report.to_dict(), action=outcome.action.to_dict(), exit_code=outcome.exit_code))
        else:
            click.echo("\n".join(outcome.lines))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(outcome.exit_code)     # never wait for a check thread stuck in the GPU library
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
    from . import reset as R
    from .output import table

    if every and gpus:
        raise GpuhcError("--all and --gpu %s: give one (--all resets every GPU)" % " --gpu ".join(gpus))
    rows = R.reset(load_config(ctx), node=node, simulate=_state(ctx).get("simulate"), wanted=gpus,
                   every=every, force=force)
    if as_json:
        emit_json([{"gpu": r.gpu, "pci_bus_id": r.pci_bus_id, "result": r.result, "detail": r.detail} for r in rows])
    else:
        click.echo(table([(r.gpu, r.pci_bus_id, r.result, r.detail) for r in rows], ["GPU", "PCI", "RESULT", "DETAIL"]))
    ctx.exit(0 if all(r.result == "reset" for r in rows) else 1)


@main.command()
@common_options
@click.argument("nodelist")
@click.option("--force", is_flag=True, help="Resume any gpuhc drain now and acknowledge the findings that caused it.")
@click.option("--json", "as_json", is_flag=True, help="A JSON list: node, result, why.")
@click.pass_context
def resume(ctx: click.Context, nodelist: str, force: bool, as_json: bool) -> None:
    """Resume nodes gpuhc drained: on enough passes, or now with --force. Other drains are refused."""
    from .hostlist import expand
    from .output import table
    from .resume import resume_nodes

    rows = resume_nodes(load_config(ctx), expand(nodelist), force)
    if as_json:
        emit_json([{"node": n, "result": r, "why": w} for n, r, w in rows])
    else:
        click.echo(table(rows, ["NODE", "RESULT", "WHY"]))
    ctx.exit(0 if all(r in ("resumed", "skipped") for _, r, _ in rows) else 1)


@main.group("store", cls=Group)
def store_group() -> None:
    """The result store."""


@store_group.command("init")
@click.argument("path")
def store_init(path: str) -> None:
    """Mark PATH as the store (once, with the shared filesystem mounted there)."""
    from .store import init_store

    click.echo(init_store(path))


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
    from .contexts import bench as B
    from .contexts.pipeline import run as run_pipeline

    cfg = load_config(ctx)
    if collect:
        from .fleet.benchmarks import collect_job
        from .hostlist import expand

        text, code = collect_job(cfg, expand(collect, "--collect"), job, as_json)
        click.echo(text)
        ctx.exit(code)
    if duration is not None:
        if duration <= 0:
            raise GpuhcError("--duration %g: expected a number of seconds above 0" % duration)
        cfg["gpu_stress"]["durations"]["bench"] = duration
    if device:
        cfg["deep"]["device"] = device
    outcome = run_pipeline(cfg, B.CONTEXT, node=node, simulate=_state(ctx).get("simulate"),
                           checks=checks or [], suite=None if checks else "bench", record=not no_record,
                           progress=B.progress_to_stderr)
    if as_json:
        emit_json(outcome.report.to_dict())
    else:
        click.echo(B.text(outcome.report, outcome.detection))
    for note in outcome.notes:
        click.echo("gpuhc: %s" % note, err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(outcome.exit_code)      # a workload child or a GPU call may still be stuck: do not wait for it


@main.command()
@common_options
@click.option("-p", "--partition", metavar="PARTITION[,...]", help="Only nodes of these Slurm partitions.")
@click.option("-n", "--nodes", "nodelist", metavar="NODELIST", help="Only these nodes (hostlist).")
@click.option("--metric", type=click.Choice(["matmul_tflops", "stress_tflops", "hbm_gbps", "pcie_gbps", "p2p_gbps",
                                             "busbw_gbps"]), help="Only this figure (default: every one).")
@click.option("--json", "as_json", is_flag=True, help="JSON: stragglers, drift, groups.")
@click.pass_context
def stragglers(ctx: click.Context, partition: Optional[str], nodelist: Optional[str], metric: Optional[str],
               as_json: bool) -> None:
    """Nodes slower than the other nodes of their profile (below 90% of the median, or robust z < -3)
    or than their own best, by their newest benchmark figures in the store. Drains nothing."""
    from .fleet.benchmarks import stragglers_text

    text, code = stragglers_text(load_config(ctx), partition, nodelist, metric, as_json)
    click.echo(text)
    ctx.exit(code)


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
        from .contexts import sweep as S
        from .contexts.pipeline import run as run_pipeline

        extra = [n for n, v in (("-p", partition), ("--max-nodes", max_nodes), ("--interval", interval),
                                ("--dry-run", dry_run)) if v not in (None, False)]
        if extra:
            raise GpuhcError("--run-here runs the checks on this node: %s is the controller's" % ", ".join(extra))
        logging.getLogger("gpuhc").addHandler(_SyslogHandler("sweep"))
        outcome = run_pipeline(cfg, S.CONTEXT, node=node, simulate=_state(ctx).get("simulate"), suite=suite,
                               progress=S.progress_to_stderr)
        if as_json:
            emit_json(dict(outcome.report.to_dict(), action=outcome.action.to_dict(), exit_code=outcome.exit_code))
        else:
            click.echo("\n".join(outcome.lines))
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(outcome.exit_code)     # never wait for a check thread stuck in the GPU library
    from .controller.sweep import sweep as run_sweep
    from .controller.sweep import text
    from .status import parse_duration

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
    from . import quarantine_cli as Q

    text, code = Q.main(load_config(ctx), nodelist=nodelist, force=force, dry_run=dry_run, show_list=show_list,
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
        from .controller.nccl_pairs import pairs, text

        outcome = pairs(cfg, pairs_nodelist, quick=quick, device=device, ntasks_per_node=ntasks_per_node,
                        sizes=sizes, dry_run=dry_run)
        click.echo(json.dumps(outcome.to_dict(), indent=2) if as_json else text(outcome))
        ctx.exit(outcome.exit_code)
    if job_bisect:
        from .contexts.nccl_job import job_bisect as run_job

        base = [sys.executable, "-m", "gpuhc"] + [x for k in ("config", "simulate") if _state(ctx).get(k)
                                                   for x in ("--" + k, _state(ctx)[k])]
        code = run_job(cfg, device=device, ntasks_per_node=ntasks_per_node, bisect=False if no_bisect else None,
                       pair=pair_job, sizes=sizes, base_command=base, out=lambda line: click.echo(line))
        sys.stdout.flush()
        ctx.exit(code)
    from .contexts.nccl import parse_sizes, run_rank

    record, code = run_rank(cfg, device=device, sizes=parse_sizes(sizes), algo=algo, purpose=purpose, step=step,
                            simulate=_state(ctx).get("simulate"),
                            out=(lambda line: None) if as_json else (lambda line: click.echo(line)))
    if as_json and record is not None:
        emit_json(record)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)     # never wait for a torch thread stuck in a collective


# ---- gpuhc report (issue 17): the fleet's health over a window ------------------------------------------
@main.command()
@common_options
@click.option("-p", "--partition", metavar="PARTITION[,...]", help="Only nodes of these Slurm partitions.")
@click.option("-n", "--nodes", "nodelist", metavar="NODELIST", help="Only these nodes (hostlist: gpu-[001-064]).")
@click.option("--since", metavar="DURATION", help="The window: the last DURATION (30m, 12h, 7d, 4w; default "
              "report.since, 7 days).")
@click.option("--format", "fmt", type=click.Choice(["text", "markdown", "html", "json"]), default="text",
              show_default=True, help="text and markdown: tables; html: one self-contained file with plots; json: "
              "the same data for automation.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--output", metavar="FILE", help="Write the report to FILE (atomically) instead of standard output.")
@click.pass_context
def report(ctx: click.Context, partition: Optional[str], nodelist: Optional[str], since: Optional[str], fmt: str,
           as_json: bool, output: Optional[str]) -> None:
    """The fleet's health over a window, from the store: summary, what needs a person, 0-100 scores on
    five dimensions, trends and anomalies, lemons and reliability figures, benchmark and all-reduce
    figures, the pair history and a node x check matrix. Progress goes to stderr on a large store."""
    from .fleet.report import report_output

    text = report_output(load_config(ctx), partition, nodelist, since, "json" if as_json else fmt, output,
                         progress=lambda line: click.echo("gpuhc: %s" % line, err=True))
    if text:
        click.echo(text, nl=False)


def run() -> None:
    main(prog_name="gpuhc")
