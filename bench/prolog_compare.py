"""Prolog latency of two source trees side by side on the same machine (median and max of 20 whole
processes each, two rounds, alternating): python bench/prolog_compare.py [gpuhc args...] with the
baseline tree checked out at /tmp/old (git worktree add /tmp/old COMMIT)."""
import os, subprocess, sys, time, statistics, tempfile
CMD = sys.argv[1:] or ["prolog"]
def bench(tree, n=20):
    d = tempfile.mkdtemp()
    cfg = os.path.join(d, "c.yaml")
    open(cfg, "w").write("store: %s/store\nstate_dir: %s/state\nslurm: {backend: none}\ndetect: {cloud_metadata: false}\n" % (d, d))
    os.makedirs(d + "/store", mode=0o755)
    open(d + "/store/.gpuhc-store", "w").write('{"gpuhc_store": 1}\n')
    env = dict(os.environ, GPUHC_CONFIG=cfg, PYTHONPATH=tree, SLURMD_NODENAME="gpu-001")
    walls = []
    for i in range(n + 1):
        t = time.monotonic()
        subprocess.run([sys.executable, "-m", "gpuhc", "--simulate", "h100-healthy"] + CMD, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i:
            walls.append(time.monotonic() - t)
    return statistics.median(walls), max(walls)
for round_ in range(2):
    for name, tree in (("baseline baa9dee", "/tmp/old"), ("now", "/work/main")):
        med, mx = bench(tree)
        print("%-18s median %.3f s  max %.3f s" % (name, med, mx))
