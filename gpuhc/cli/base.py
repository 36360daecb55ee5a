"""The command line's common parts: the click group, options every command takes, config loading,
JSON output, the one-line errors and exit codes, logging to stderr and (in Slurm contexts) syslog."""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Dict

import click

from .. import __version__, config
from ..errors import GpuhcError
from ..model import EXIT_UNKNOWN, EXIT_USAGE

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
    return config.load(_state(ctx).get("config"))


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


class SyslogHandler(logging.Handler):
    """In a Slurm context the library's warnings (a result spooled, a corrupt record skipped) go
    to syslog as well: slurmd discards a prolog's stderr."""

    def __init__(self, context: str) -> None:
        super().__init__(logging.WARNING)
        self.context = context

    def emit(self, record: logging.LogRecord) -> None:
        from .. import syslogging

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


def finish(outcome: Any, as_json: bool) -> None:
    """Print a context run's result (its report as JSON, or one line per finding) and leave at once
    with its exit code: a check thread or a workload child stuck on a GPU is not waited for."""
    if as_json:
        emit_json(dict(outcome.report.to_dict(), action=outcome.action.to_dict(), exit_code=outcome.exit_code))
    else:
        click.echo("\n".join(outcome.lines))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(outcome.exit_code)


def run() -> None:
    main(prog_name="gpuhc")
