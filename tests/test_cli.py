"""The command line as operators run it: separate processes, exit codes, one-line errors."""
import json

from conftest import gpuhc


def isolated(tmp_path, text=""):
    cfg = tmp_path / "config.yaml"
    cfg.write_text("store: %s\nstate_dir: %s\ndetect: {slurm_features: false}\n%s"
                   % (tmp_path / "store", tmp_path / "state", text))
    return {"GPUHC_CONFIG": str(cfg)}


def test_healthy_h100_exits_0(tmp_path):
    res = gpuhc("check", "--simulate", "h100-healthy", env=isolated(tmp_path))
    assert res.returncode == 0, res.stderr
    assert "PASS" in res.stdout and "dgx-h100" in res.stdout
    # a scenario tried by hand is not recorded as this host (it would join the fleet in status)
    assert res.stderr == "gpuhc: note: simulated run not recorded (give --node NAME to record it as that node)\n"
    assert not (tmp_path / "store" / "nodes").exists() or not list((tmp_path / "store" / "nodes").iterdir())
    res = gpuhc("check", "--simulate", "h100-healthy", "--node", "gpu-009", env=isolated(tmp_path))
    assert res.returncode == 0 and res.stderr == "" and (tmp_path / "store" / "nodes" / "gpu-009").is_dir()


def test_text_output_says_what_to_do(tmp_path):
    res = gpuhc("check", "--simulate", "h100-pcie-x8", "--no-record", env=isolated(tmp_path))
    assert res.returncode == 1
    todo = res.stdout.split("What to do:\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert todo and todo[0].startswith("  RESET pcie GPU") and "reseat the GPU or riser" in todo[0], todo
    healthy = gpuhc("check", "--simulate", "h100-healthy", "--no-record", env=isolated(tmp_path))
    assert "What to do" not in healthy.stdout


def test_xid79_json_exits_1_with_finding_on_gpu3(tmp_path):
    res = gpuhc("--simulate", "h100-xid79", "check", "--json", "--node", "gpu-007", env=isolated(tmp_path))
    assert res.returncode == 1, res.stderr
    report = json.loads(res.stdout)
    for key in ("node", "context", "profile", "overall", "started", "ended", "gpuhc_version", "schema_version", "findings"):
        assert key in report
    assert report["node"] == "gpu-007" and report["context"] == "check" and report["overall"] == "REBOOT"
    xid = [f for f in report["findings"] if f["check"] == "xid" and f["severity"] == "REBOOT"]
    assert xid and xid[0]["gpu"]["index"] == 3 and xid[0]["gpu"]["pci_bus_id"] == "0000:5d:00.0"
    assert set(xid[0]) >= {"check", "severity", "gpu", "message", "remediation", "metrics"}
    assert set(xid[0]["gpu"]) == {"index", "uuid", "pci_bus_id"}


def test_node_name_comes_from_slurm(tmp_path):
    env = isolated(tmp_path)
    env["SLURMD_NODENAME"] = "gpu-042"
    res = gpuhc("check", "--simulate", "h100-healthy", "--json", env=env)
    assert json.loads(res.stdout)["node"] == "gpu-042"


def test_no_driver_on_this_machine_says_so_in_one_line(tmp_path):
    # this machine has no NVIDIA driver: the real NVML path must say so, exit 3, no traceback
    res = gpuhc("check", env=isolated(tmp_path))
    assert res.returncode == 3, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr
    nvml_rows = [l for l in res.stdout.splitlines() if l.startswith("ERROR") and "nvml" in l]
    assert len(nvml_rows) == 1 and ("not found" in nvml_rows[0] or "not loaded" in nvml_rows[0])


def test_no_driver_where_profile_expects_no_gpu_is_skip(tmp_path):
    profiles = tmp_path / "profiles.conf"
    profiles.write_text("login gpus=0 description=\"login node\"\n")
    res = gpuhc("check", env=isolated(tmp_path, "profiles: %s\nprofile: login\n" % profiles))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "SKIP" in res.stdout and "expects no GPU" in res.stdout


def test_config_error_is_one_line_exit_2(tmp_path):
    res = gpuhc("check", "--simulate", "h100-healthy", env=isolated(tmp_path, "timeouts: {check: soon}\n"))
    assert res.returncode == 2
    assert res.stdout == "" and len(res.stderr.strip().splitlines()) == 1
    assert "timeouts.check: expected a number of seconds above 0" in res.stderr and "Traceback" not in res.stderr


def test_unknown_scenario_and_check_are_usage_errors(tmp_path):
    res = gpuhc("check", "--simulate", "h100-nope", env=isolated(tmp_path))
    assert res.returncode == 2 and "unknown scenario 'h100-nope'" in res.stderr
    res = gpuhc("check", "--simulate", "h100-healthy", "--check", "ecc", "--check", "bogus", env=isolated(tmp_path))
    assert res.returncode == 2 and "unknown check 'bogus'" in res.stderr
    res = gpuhc("check", "--bogus-flag")
    assert res.returncode == 2


def test_selected_checks_only(tmp_path):
    res = gpuhc("check", "--simulate", "h100-pcie-x8", "--check", "pcie", "--json", env=isolated(tmp_path))
    report = json.loads(res.stdout)
    assert res.returncode == 1 and {f["check"] for f in report["findings"]} == {"nvml", "pcie"}
    assert report["suite"] == "custom"


def test_hung_nvml_process_exits_within_budget(tmp_path):
    import time
    t0 = time.monotonic()
    res = gpuhc("check", "--simulate", "h100-nvml-hang", env=isolated(tmp_path, "timeouts: {check: 1}\n"), timeout=20)
    assert time.monotonic() - t0 < 5
    assert res.returncode == 1 and "did not return within 1s" in res.stdout


def test_scenarios_and_profiles_listings():
    res = gpuhc("scenarios")
    assert res.returncode == 0 and "h100-healthy" in res.stdout and "Xid 79" in res.stdout
    res = gpuhc("scenarios", "--json")
    names = {s["name"] for s in json.loads(res.stdout)}
    assert {"h100-healthy", "a100-healthy", "a30-healthy", "h100-xid79"} <= names
    res = gpuhc("profiles", "--json")
    assert res.returncode == 0 and any(p["name"] == "p5.48xlarge" for p in json.loads(res.stdout))


def test_bad_arguments_are_one_line_usage_errors(tmp_path):
    """Arguments that cannot name a node, a GPU or a sane node list are refused up front (exit 2),
    instead of running and losing the result or hanging on a huge expansion."""
    env = isolated(tmp_path, "slurm: {backend: none}\n")
    for args, needle in [
        (["check", "--node", "a/b"], "--node: invalid node name 'a/b'"),
        (["check", "--node", ""], "--node: invalid node name ''"),
        (["prolog", "--node", "../x"], "--node: invalid node name"),
        (["ack", "--gpu", "xyz"], "--gpu 'xyz': expected a PCI bus id"),
        (["ack", "--node", "a/b"], "--node: invalid node name"),
        (["reset", "--gpu", "0000:zz:00.0"], "--gpu '0000:zz:00.0': expected an NVML index or a PCI bus id"),
        (["reset", "--gpu", "0000:ff:00.0"], "--gpu 0000:ff:00.0: no NVIDIA GPU at that PCI address"),
        (["resume", "gpu-[1-99999999]"], "99999999 names, more than the 1000000 gpuhc takes"),
        (["status", "-n", "gpu-[1-5000],n[1-1000][1-1000]"], "more than the 1000000"),
        (["status", "-o", "%99999999999999999999N"], "width 99999999999999999999 at column 1 is more than 1000"),
        (["status", "-o", "%P %2000000000N"], "width 2000000000 at column 4 is more than 1000"),
    ]:
        res = gpuhc("--simulate", "h100-healthy", *args, env=env, timeout=30)
        assert res.returncode == 2 and needle in res.stderr and len(res.stderr.splitlines()) == 1, (args, res.stderr)


def test_xid_reads_stdin_bytes_that_are_not_utf8(tmp_path):
    import os
    import subprocess
    import sys
    from conftest import ROOT

    line = b"[ 5.0] NVRM: Xid (PCI:0000:3b:00): 79, pid=1, name=p\xff\xfe, GPU has fallen off the bus.\n"
    env = dict(os.environ, PYTHONIOENCODING="utf-8:strict", **isolated(tmp_path))
    res = subprocess.run([sys.executable, "-m", "gpuhc", "xid", "-", "--json"], input=line, capture_output=True,
                         env=env, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    assert [e["xid"] for e in json.loads(res.stdout)] == [79]


def test_slurm_contexts_and_ack_print_json(tmp_path):
    """Automation wraps the prolog (or runs it by hand on a suspect node) and wants the report and
    what gpuhc did as JSON, like every other command; exit codes stay the prolog's."""
    import os
    import subprocess
    import sys
    from conftest import ROOT

    env = dict(os.environ, SLURMD_NODENAME="gpu-007", SLURM_JOB_ID="77",
               **isolated(tmp_path, "slurm: {backend: none}\n"))
    res = subprocess.run([sys.executable, "-m", "gpuhc", "prolog", "--simulate", "h100-xid79", "--json"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    out = json.loads(res.stdout)                      # nothing but the JSON on stdout
    assert res.returncode == out["exit_code"] == 0    # no Slurm to drain with: no requeue
    assert out["node"] == "gpu-007" and out["context"] == "prolog" and out["job_id"] == "77"
    assert out["overall"] == "REBOOT" and out["action"]["kind"] == "skip"
    assert any(f["check"] == "xid" and f["severity"] == "REBOOT" for f in out["findings"])
    res = subprocess.run([sys.executable, "-m", "gpuhc", "ack", "--simulate", "h100-xid79", "--json"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout) == {"node": "gpu-007", "acknowledged": 1, "xid": None, "pci_bus_id": None}


def test_show_and_history_refuse_bad_arguments_before_doing_anything(tmp_path):
    """`gpuhc history NODE --since ""` (an unset shell variable) showed the whole history as if no
    --since was given; `gpuhc show '../x'` asked Slurm about the name before refusing it."""
    res = gpuhc("history", "gpu-001", "--since", "", env=isolated(tmp_path))
    assert res.returncode == 2 and "--since ''" in res.stderr
    res = gpuhc("show", "../x", env=isolated(tmp_path, "slurm: {backend: cli}\n"))
    assert res.returncode == 2 and "invalid node name" in res.stderr and len(res.stderr.splitlines()) == 1
