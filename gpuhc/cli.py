"""Command line: one thin command per verb; parses, calls one function, prints."""
from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, List, Optional

import click

from . import __version__
from . import config as C
from .errors import GpuhcError
from .model import EXIT_UNKNOWN, EXIT_USAGE

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


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


class Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GpuhcError as exc:
            click.echo("gpuhc: error: %s" % exc, err=True)
            ctx.exit(EXIT_USAGE)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:
            if os.environ.get("GPUHC_DEBUG"):
                raise
            click.echo("gpuhc: internal error: %s: %s (GPUHC_DEBUG=1 shows the traceback)"
                       % (type(exc).__name__, exc), err=True)
            ctx.exit(EXIT_UNKNOWN)


@click.group(cls=Group, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="gpuhc")
@common_options
def main() -> None:
    """gpuhc: Slurm-native GPU health checks, drains and quarantine."""


@main.command()
@common_options
@click.option("--suite", metavar="NAME", help="Suite of checks from config (prolog, epilog, lightweight, intensive...).")
@click.option("--check", "checks", metavar="NAME", multiple=True, help="Run only this check (repeatable).")
@click.option("--node", metavar="NAME", help="Node name (default $SLURMD_NODENAME).")
@click.option("--context", "context_name", default="check", hidden=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("-a", "--all", "show_all", is_flag=True, help="Show every finding, passes included.")
@click.pass_context
def check(ctx: click.Context, suite: Optional[str], checks: List[str], node: Optional[str], context_name: str,
          as_json: bool, show_all: bool) -> None:
    """Run health checks on this node and print the findings."""
    from . import output, session

    cfg = load_config(ctx)
    report, detection, run_ctx = session.run(cfg, context_name, suite=suite, checks=checks, node=node,
                                             simulate=_state(ctx).get("simulate"))
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(output.report_text(report, detection, show_all))
    code = report.exit_code
    if run_ctx.gpu.hung is not None:
        # A thread is stuck in the GPU library: leave without waiting for it.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    ctx.exit(code)


@main.command()
@click.option("--json", "as_json", is_flag=True)
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
@click.option("--json", "as_json", is_flag=True)
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
@click.argument("source", default="-", metavar="[FILE|-]")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of events.")
@click.option("--gpu-name", default="", metavar="NAME", help="GPU model for the catalog's conditional rules (e.g. A100).")
@click.option("--strict", is_flag=True, help="Strict mode of the catalog (Xid 165 ISOLATE).")
def xid(source: str, as_json: bool, gpu_name: str, strict: bool) -> None:
    """Every Xid/SXid event in a saved kernel log (dmesg, journalctl, syslog), classified."""
    from . import xid as X
    from .output import table

    if source == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            with open(source, errors="replace") as fh:
                lines = fh.read().splitlines()
        except OSError as exc:
            raise GpuhcError("%s: cannot read: %s" % (source, exc.strerror or exc)) from None
    events = X.describe(X.parse(lines), X.Conditions(gpu_name=gpu_name, strict=strict))
    if as_json:
        emit_json(events)
        return
    rows = [(e["time"] or "-", e["pci_bus_id"], ("SXid " if e["kind"] == "sxid" else "") + str(e["xid"]),
             e["severity"], e["resolution"], e["message"]) for e in events]
    click.echo(table(rows, ["TIME", "PCI", "XID", "SEVERITY", "RESOLUTION", "MESSAGE"]) if rows else "no Xid or SXid events")


@main.command()
@common_options
@click.option("--node", metavar="NAME", help="Node name (default $SLURMD_NODENAME).")
@click.option("--xid", "xid_number", type=int, metavar="N", help="Only this Xid number.")
@click.option("--gpu", "pci_bus_id", metavar="BUS_ID", help="Only this GPU (PCI bus id, e.g. 0000:5d:00.0).")
@click.pass_context
def ack(ctx: click.Context, node: Optional[str], xid_number: Optional[int], pci_bus_id: Optional[str]) -> None:
    """Acknowledge the active Xid events of this node: they stop causing findings until they recur."""
    from . import session
    from .checks.xid import acknowledge

    cfg = load_config(ctx)
    n = acknowledge(cfg["state_dir"], session.node_name(node), xid_number, pci_bus_id)
    click.echo("acknowledged %d Xid event(s)" % n)


def run() -> None:
    main(prog_name="gpuhc")
