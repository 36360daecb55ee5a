"""A small fleet over several days, for `gpuhc report`'s tests and the README's picture: real reports of
bundled scenarios (gpuhc.session.run), recorded with Store.record at chosen start times.

Nodes (profile dgx-h100, the scenarios'):
- gpu-001..gpu-008: healthy (a prolog every 6 hours, an epilog after it, a bench run once a day);
- gpu-009: the Xid-prone lemon: Xid 79 (GPU fell off the bus) once a day, drained by its prolog each time,
  resumed by its healthcheck hours later; its all-reduce pair runs fail;
- gpu-010: the slow node: one GPU 25% slow under stress (h100-gpu-slow's bench run), prologs pass;
- gpu-011: the quarantined node: a row-remap failure drains it on day 3, the quarantine's verdict is
  REPLACE, and it stays drained;
- gpu-012: healthy but for its corrected ECC count, which grows by about 3,000 a day on GPU2.
"""
import copy

from gpuhc import session
from gpuhc.contexts.quarantine import verdict as quarantine_verdict
from gpuhc.store import PairHistory, Store

HOUR = 3600.0
DAY = 86400.0
HEALTHY = ["gpu-%03d" % n for n in range(1, 9)] + ["gpu-012"]
LEMON, SLOW, QUARANTINED, ECC = "gpu-009", "gpu-010", "gpu-011", "gpu-012"
PROBLEMS = (LEMON, SLOW, QUARANTINED, ECC)


def _templates(cfg):
    out = {}
    for key, (scenario, context) in {"prolog": ("h100-healthy", "prolog"), "epilog": ("h100-healthy", "epilog"),
                                      "healthcheck": ("h100-healthy", "healthcheck"),
                                      "bench": ("h100-healthy", "bench"), "xid79": ("h100-xid79", "prolog"),
                                      "slow": ("h100-gpu-slow", "bench"),
                                      "remap": ("h100-row-remap-failure", "prolog"),
                                      "quarantine": ("h100-row-remap-failure", "quarantine")}.items():
        report, _, _ = session.run(cfg, context, node="gpu-000", simulate=scenario)
        out[key] = report
    return out


def _at(template, node, started, action=None, job=None):
    r = copy.deepcopy(template)
    duration = r.ended - r.started
    r.node, r.started, r.ended = node, started, started + duration
    r.action = action
    r.job_id = job
    return r


def build(cfg, now, days=5):
    """Record the fleet's reports and pair runs over the ``days`` before ``now``; returns the node names."""
    t = _templates(cfg)
    store = Store.from_config(cfg)
    start = now - days * DAY
    job = [1000]

    def record(report):
        job[0] += 1
        if report.job_id is None and report.context in ("prolog", "epilog"):
            report.job_id = str(job[0])
        assert store.record(report) == "stored"

    for node in HEALTHY + [SLOW]:
        for k in range(days * 4):
            ts = start + k * 6 * HOUR + int(node[-3:]) * 37
            record(_at(t["prolog"], node, ts))
            record(_at(t["epilog"], node, ts + 2 * HOUR))
        for d in range(days):
            bench = t["slow"] if node == SLOW else t["bench"]
            record(_at(bench, node, start + d * DAY + 20 * HOUR))
    # the ECC grower: GPU2's lifetime corrected count rises 3,000 a day
    reports = store.history(ECC)
    for report in reports:
        grown = int(12 + 3000 * (report.started - start) / DAY)
        for f in report.findings:
            if f.check == "ecc" and f.gpu is not None and f.gpu.index == 2:
                f.metrics["aggregate_corrected"] = grown
                f.metrics["volatile_corrected"] = grown - 12
    _rewrite(store, cfg, ECC, reports)
    # the lemon: a healthy morning, Xid 79 at noon (drained), resumed by its healthcheck in the evening
    for d in range(days):
        day = start + d * DAY
        record(_at(t["prolog"], LEMON, day + 2 * HOUR))
        record(_at(t["xid79"], LEMON, day + 12 * HOUR, action="drain"))
        record(_at(t["healthcheck"], LEMON, day + 14 * HOUR, action="held"))
        record(_at(t["healthcheck"], LEMON, day + 18 * HOUR, action="resume"))
        record(_at(t["prolog"], LEMON, day + 20 * HOUR))
    # the quarantined node: healthy, then a remap failure, quarantine, verdict REPLACE
    for k in range(8):
        record(_at(t["prolog"], QUARANTINED, start + k * 6 * HOUR))
    record(_at(t["remap"], QUARANTINED, start + 2 * DAY + 3 * HOUR, action="drain"))
    q = _at(t["quarantine"], QUARANTINED, start + 2 * DAY + 6 * HOUR, action="drain")
    q.verdict = quarantine_verdict(q)
    record(q)
    for k in range(4):
        record(_at(t["healthcheck"], QUARANTINED, start + 3 * DAY + k * 12 * HOUR, action="held"))
    # multi-node all-reduce: pairs of healthy nodes pass; every pair with the lemon fails
    pairs = PairHistory.from_config(cfg)
    nodes = HEALTHY[:6] + [LEMON]
    sizes = [1 << 20, 1 << 24, 1 << 28, 1 << 30]
    for d in range(days):
        for i, a in enumerate(nodes):
            b = nodes[(i + 1 + d) % len(nodes)]
            if a == b:
                continue
            bad = LEMON in (a, b)
            figs = [{"size_bytes": s, "busbw_gbps": round((20 if bad else 45) * (1 - 2 ** -(i + 3 + n)), 3)}
                    for n, s in enumerate(sizes)]
            pairs.append({"nodes": sorted([a, b]), "passed": not bad, "time": start + d * DAY + 8 * HOUR + i * 60,
                          "job_id": str(5000 + d * 10 + i), "busbw_gbps": figs[-1]["busbw_gbps"],
                          "size_bytes": sizes[-1], "sizes": figs, "purpose": "pair"})
    return sorted(HEALTHY + [LEMON, SLOW, QUARANTINED])


def _rewrite(store, cfg, node, reports):
    """Replace a node's records by the changed ones (the ECC grower): its directory removed, then recorded."""
    import os
    import shutil

    shutil.rmtree(os.path.join(cfg["store"], "nodes", node))
    for r in sorted(reports, key=lambda r: r.started):
        assert store.record(r) == "stored"


if __name__ == "__main__":
    # python tests/report_fleet.py DIR: the fleet's store in DIR/store and its config in DIR/config.yaml
    # (the README's picture: GPUHC_CONFIG=DIR/config.yaml gpuhc report --since 5d --format html ...)
    import os
    import sys
    import time

    from gpuhc import config as C
    from gpuhc.store import init_store

    base = os.path.abspath(sys.argv[1])
    os.makedirs(base, exist_ok=True)
    init_store(os.path.join(base, "store"))
    conf = os.path.join(base, "config.yaml")
    with open(conf, "w") as fh:
        fh.write("store: %s/store\nstate_dir: %s/state\ndetect: {slurm_features: false, cloud_metadata: false}\n"
                 "slurm: {backend: none}\n" % (base, base))
    print("%d nodes in %s/store; GPUHC_CONFIG=%s" % (len(build(C.load(conf), time.time())), base, conf))
