"""Commands that read the fleet's results: status, show, history, export, stragglers, report, store init."""
from __future__ import annotations

from typing import Optional

import click

from .base import Group, common_options, load_config, main


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
    from ..fleet.slurm_view import slurm_view
    from ..status import status_text

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
    from ..fleet.slurm_view import slurm_view
    from ..status import show_text
    from ..store import check_node_name

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
    from ..status import history_text

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
    from ..export import export_prometheus
    from ..fleet.slurm_view import slurm_view
    from ..hostlist import expand

    cfg = load_config(ctx)
    text = export_prometheus(cfg, output, nodelist, slurm=slurm_view(cfg, expand(nodelist, "--nodes") if nodelist else None))
    if text:
        click.echo(text, nl=False)


@main.group("store", cls=Group)
def store_group() -> None:
    """The result store."""


@store_group.command("init")
@click.argument("path")
def store_init(path: str) -> None:
    """Mark PATH as the store (once, with the shared filesystem mounted there)."""
    from ..store import init_store

    click.echo(init_store(path))


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
    from ..fleet.benchmarks import stragglers_text

    text, code = stragglers_text(load_config(ctx), partition, nodelist, metric, as_json)
    click.echo(text)
    ctx.exit(code)


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
    from ..fleet.report import report_output

    text = report_output(load_config(ctx), partition, nodelist, since, "json" if as_json else fmt, output,
                         progress=lambda line: click.echo("gpuhc: %s" % line, err=True))
    if text:
        click.echo(text, nl=False)
