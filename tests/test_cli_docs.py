"""Where the documentation (README.md, slurm/README.md, `gpuhc --help`) promised an operator one
thing and the command line did another (found by a review reading the docs for the first time):
`gpuhc xid` classifying without the site's Xid overrides, `--suite` silently ignored beside
`--check`, `--all` silently winning over `--gpu` in a reset, global options refused after
`export` and `scenarios`, a prolog's configuration error and store warnings missing from syslog
(slurmd discards the output), and options without help."""
import json
import os
import subprocess
import sys

import click

import test_cli
from conftest import ROOT, gpuhc
from gpuhc import cli


def isolated(tmp_path, text=""):
    """test_cli's scratch config, with no Slurm to ask."""
    return test_cli.isolated(tmp_path, "slurm: {backend: none}\n" + text)


def test_xid_command_classifies_with_the_config_overrides_and_strict_mode(tmp_path):
    """A site sets `xid: {overrides: {43: RESET}, strict: true}` (README's per-Xid severity
    overrides) and runs `gpuhc xid /var/log/kern.log` to see what gpuhc makes of a log. The command
    showed the catalog's MONITOR for both Xid 43 and Xid 165 while the xid check drained for them:
    it must classify as the check does, with --config accepted after the command name."""
    log = tmp_path / "kern.log"
    log.write_text("[ 9001.000220] NVRM: Xid (PCI:0000:18:00): 43, pid=51001, name=python, Ch 00000008\n"
                   "[ 9002.000000] NVRM: Xid (PCI:0000:2a:00): 165, pid='<unknown>', name=<unknown>, "
                   "Power Smoothing HW Circuitry lifetime exhausted\n")
    plain = gpuhc("xid", str(log), "--json", env=isolated(tmp_path))
    assert plain.returncode == 0, plain.stderr
    assert [e["severity"] for e in json.loads(plain.stdout)] == ["MONITOR", "MONITOR"]
    env = isolated(tmp_path, "xid: {overrides: {43: RESET}, strict: true}\n")
    res = gpuhc("xid", "--config", env["GPUHC_CONFIG"], str(log), "--json")
    assert res.returncode == 0, res.stderr
    assert [(e["xid"], e["severity"]) for e in json.loads(res.stdout)] == [(43, "RESET"), (165, "ISOLATE")]
    bad = gpuhc("xid", str(log), env=isolated(tmp_path, "xid: {overrides: {43: FATAL}}\n"))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "xid.overrides.43" in bad.stderr


def test_suite_and_check_together_is_a_usage_error(tmp_path):
    """`gpuhc check --suite intensive --check xid --node gpu-001` ran only nvml and xid but recorded
    the report as suite `intensive`, a suite deep enough (resume.suite_depth) to count towards
    resuming a node drained by the intensive suite. The help says --check runs only that check, so
    the pair is a one-line usage error (exit 2) and nothing is recorded."""
    env = isolated(tmp_path)
    res = gpuhc("check", "--simulate", "h100-healthy", "--suite", "intensive", "--check", "xid",
                "--node", "gpu-001", env=env)
    assert res.returncode == 2, res.stdout
    assert res.stderr == "gpuhc: error: --suite intensive and --check: give one (--check runs only the named checks)\n"
    assert not (tmp_path / "store" / "nodes" / "gpu-001").exists()
    assert gpuhc("check", "--simulate", "h100-healthy", "--check", "xid", "--no-record", env=env).returncode == 0


def test_reset_with_gpu_and_all_is_a_usage_error_and_resets_nothing(tmp_path):
    """An operator types `gpuhc reset --gpu 3 --all` (meaning GPU 3, the --all left over from the
    previous command line): every GPU of the node was reset. A reset is disruptive, so naming GPUs
    and asking for all of them at once is a one-line usage error (exit 2) that resets nothing."""
    res = gpuhc("reset", "--simulate", "h100-healthy", "--node", "gpu-001", "--gpu", "3", "--all",
                env=isolated(tmp_path))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr == "gpuhc: error: --all and --gpu 3: give one (--all resets every GPU)\n"


def test_global_options_are_accepted_after_export_and_scenarios(tmp_path):
    """README: global options `--config PATH`, `--simulate NAME|FILE` (also accepted after the
    command name). `gpuhc export --config /etc/gpuhc/test.yaml prometheus` and
    `gpuhc scenarios --config ...` were usage errors ("No such option '--config'")."""
    env = isolated(tmp_path)
    assert gpuhc("check", "--simulate", "h100-healthy", "--node", "gpu-001", env=env).returncode == 0
    res = gpuhc("export", "--config", env["GPUHC_CONFIG"], "prometheus", "-n", "gpu-001")
    assert res.returncode == 0, res.stderr
    assert 'gpuhc_node_severity{node="gpu-001"} 0' in res.stdout
    res = gpuhc("scenarios", "--config", env["GPUHC_CONFIG"], "--json")
    assert res.returncode == 0 and "h100-healthy" in {s["name"] for s in json.loads(res.stdout)}


SYSLOG_SHIM = """
import sys, syslog
out = sys.argv[1]
def record(prio, line):
    with open(out, "a") as fh:
        fh.write("%d %s\\n" % (prio, line))
syslog.openlog = lambda *a, **k: None
syslog.syslog = record
sys.argv = ["gpuhc"] + sys.argv[2:]
from gpuhc.cli import run
run()
"""


def _with_syslog(tmp_path, *args, env):
    log = tmp_path / "syslog.txt"
    log.write_text("")
    full = dict(os.environ)
    full.pop("GPUHC_CONFIG", None)
    full.update(env)
    res = subprocess.run([sys.executable, "-c", SYSLOG_SHIM, str(log)] + list(args), capture_output=True,
                         text=True, env=full, cwd=ROOT, timeout=60)
    return res, log.read_text().splitlines()


def test_a_prolog_configuration_error_and_store_warnings_reach_syslog(tmp_path):
    """slurm/README: slurmd discards a prolog's output, so every line gpuhc prints also goes to
    syslog. A typo in /etc/gpuhc/config.yaml made every prolog exit 2 (Slurm drains each node with
    "Prolog error") while syslog held nothing that said why; a shared store that could not be
    written (results spooled) was as silent. Both must reach syslog."""
    import syslog

    env = isolated(tmp_path, "stor: /shared/gpuhc\n")
    res, lines = _with_syslog(tmp_path, "prolog", "--simulate", "h100-healthy", "--node", "gpu-001", env=env)
    assert res.returncode == 2
    assert res.stderr.startswith("gpuhc: error: %s: unknown key 'stor'" % env["GPUHC_CONFIG"])
    assert lines == ["%d gpuhc prolog: error: %s" % (syslog.LOG_ERR, res.stderr.split("gpuhc: error: ", 1)[1].rstrip())]

    (tmp_path / "afile").write_text("")
    os.symlink(str(tmp_path / "afile"), str(tmp_path / "alink"))   # config load does not follow links: a store
    cfg = tmp_path / "spool.yaml"                                   # under a plain file is refused there
    cfg.write_text("store: %s\nstate_dir: %s\nslurm: {backend: none}\ndetect: {slurm_features: false}\n"
                   % (tmp_path / "alink" / "store", tmp_path / "state"))
    res, lines = _with_syslog(tmp_path, "prolog", "--simulate", "h100-healthy", "--node", "gpu-001",
                              env={"GPUHC_CONFIG": str(cfg)})
    assert res.returncode == 0, res.stderr
    assert "result spooled to" in res.stderr
    warnings = [line for line in lines if line.startswith("%d " % syslog.LOG_WARNING)]
    assert len(warnings) == 1 and "gpuhc prolog: warning: store" in warnings[0] and "result spooled to" in warnings[0]
    assert "%d gpuhc prolog PASS on gpu-001" % syslog.LOG_INFO in lines


def _options(group, path=()):
    for name, command in sorted(group.commands.items()):
        if isinstance(command, click.Group):
            yield from _options(command, path + (name,))
        yield from (((" ".join(path + (name,))), p) for p in command.params
                    if isinstance(p, click.Option) and not p.hidden)


def test_every_option_has_help():
    """`gpuhc scenarios --help`, `profiles`, `ack`, `reset` and `resume` listed a bare `--json`
    with nothing saying what it prints. Every option shown in a command's help says what it does."""
    missing = ["%s %s" % (cmd, p.opts[0]) for cmd, p in _options(cli.main) if not p.help]
    assert missing == []


def test_node_help_names_the_hostname_fallback():
    """`--node NAME  Node name (default $SLURMD_NODENAME)`: outside Slurm the node is the short
    hostname (by which `gpuhc check` records a run by hand), which the help did not say."""
    helps = {p.help for _, p in _options(cli.main) if p.name == "node"}
    assert helps == {"Slurm's name for this node (default $SLURMD_NODENAME, else the short hostname)."}


def test_small_wording_traps_of_the_review(tmp_path):
    """What the docs review reported in files it could not touch: with slurm.backend: none the
    prolog said 'node state could not be read from Slurm' (it was never asked); a DCGM refusal
    pointed at sbatch/quarantine.sbatch, which does not exist; a profile value that is not a number
    showed Python's wording; `status -o ''` silently used the default format."""
    env = dict(isolated(tmp_path), SLURMD_NODENAME="gpu-001")
    res = gpuhc("prolog", "--simulate", "h100-xid79", "--json", env=env)
    assert "no Slurm to act through" in json.loads(res.stdout)["action"]["why"]
    res = gpuhc("check", "--simulate", "h100-dcgm-fail", "--check", "dcgm", "--no-record",
                env=isolated(tmp_path, "dcgm: {level: 3}\n"))
    assert "quarantine.sbatch" not in res.stdout and "dcgm.exclusive: true" in res.stdout, res.stdout
    profiles = tmp_path / "p.conf"
    profiles.write_text('x gpus=eight model="H100"\n')
    res = gpuhc("profiles", env=isolated(tmp_path, "profiles: %s\n" % profiles))
    assert res.returncode == 2 and res.stderr.strip() == "gpuhc: error: %s:1: gpus='eight': expected a whole number" % profiles
    gpuhc("check", "--simulate", "h100-healthy", "--node", "gpu-001", env=isolated(tmp_path))
    res = gpuhc("status", "-o", "", env=isolated(tmp_path))
    assert res.returncode == 2 and "empty format" in res.stderr


def test_what_to_do_names_the_fix_for_a_checker_error(tmp_path):
    """A check that could not run (ERROR) carries what to fix so it can (install DCGM, load a
    module); the 'What to do' list left ERROR findings out, so the hint was only in --json."""
    from gpuhc.model import Finding, Severity
    from gpuhc.output import remedies

    lines = remedies([Finding("dcgm", Severity.ERROR, "dcgmi not found", remediation="install datacenter-gpu-manager"),
                      Finding("ecc", Severity.PASS, "ok", remediation="nothing"),
                      Finding("fabric", Severity.SKIP, "no NVSwitch", remediation="nothing")])
    assert lines == ["ERROR dcgm: install datacenter-gpu-manager"]


def test_ctrl_c_exits_130_not_the_unhealthy_code(tmp_path, monkeypatch):
    """An operator interrupts `gpuhc xid` on a big log (or a long check) with Ctrl-C: exit 1 would
    read as 'unhealthy' to a wrapper script; 130 is what a shell reports for SIGINT."""
    from click.testing import CliRunner

    from gpuhc import xid as X

    def interrupted(text, first_line=1):
        raise KeyboardInterrupt

    monkeypatch.setattr(X, "scan", interrupted)
    log = tmp_path / "kern.log"
    log.write_text("[ 1.0] NVRM: Xid (PCI:0000:3b:00): 79, GPU has fallen off the bus.\n")
    monkeypatch.setenv("GPUHC_CONFIG", isolated(tmp_path)["GPUHC_CONFIG"])
    result = CliRunner().invoke(cli.main, ["xid", str(log)])
    assert result.exit_code == 130 and "interrupted" in result.output, (result.exit_code, result.output)


def test_export_of_nodes_without_results_says_so(tmp_path):
    """`gpuhc export prometheus -n gpu-0O1` (a typo) wrote an empty file and said nothing; it is
    not an error (a node's first export can come before its first result), but it warns."""
    env = isolated(tmp_path)
    gpuhc("check", "--simulate", "h100-healthy", "--node", "gpu-001", env=env)
    res = gpuhc("export", "prometheus", "-n", "gpu-[001-003]", env=env)
    assert res.returncode == 0 and 'node="gpu-001"' in res.stdout
    assert res.stderr.strip() == "gpuhc: warning: no result in the store for gpu-[002-003]"
