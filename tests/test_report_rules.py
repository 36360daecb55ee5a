"""The rules of `gpuhc report` on fixtures: scores (fleet/scoring.py), trends and anomalies
(fleet/anomalies.py), incidents, Xid occurrences and lemons (fleet/reliability.py). Pure functions: no store."""
import pytest

from gpuhc.fleet import anomalies as A
from gpuhc.fleet import reliability as R
from gpuhc.fleet import scoring as S
from gpuhc.fleet.benchmarks import compare

DAY = 86400.0
GPUS = list(range(8))


def healthy(node="gpu-001", **over):
    f = S.NodeFacts(node, gpus=list(GPUS), has_memory=True, has_thermal=True, has_interconnect=True, has_compute=True,
                    records=40, temperature_max={g: 40.0 for g in GPUS})
    for key, value in over.items():
        setattr(f, key, value)
    return f


# ---- scores ---------------------------------------------------------------------------------------------

def test_a_healthy_node_scores_100_everywhere():
    result = S.score_node(healthy())
    assert result["overall"] == 100
    assert all(result[d].value == 100 and not result[d].reasons for d in S.DIMENSIONS)
    assert result["gpus"] == {}            # no GPU lost a point: none listed (each scores 100)


def test_fast_growing_corrected_ecc_scores_low_on_memory():
    slow = S.score_node(healthy(ecc_corrected_per_day={2: 20.0}))
    fast = S.score_node(healthy(ecc_corrected_per_day={2: 3000.0}))
    assert slow["memory"].value == 90 and fast["memory"].value == 40
    assert "ecc_rate: GPU2 corrected ECC +3000/day (-60)" in fast["memory"].reasons
    assert fast["gpus"] == {2: 59}           # GPU2: memory 40, the others 100: 0.6 * 40 + 0.4 * 88
    assert fast["overall"] == 59 and fast["thermal"].value == 100
    assert fast["overall"] < slow["overall"] < 100


def test_uncorrectable_ecc_and_a_remap_failure_are_worse_than_corrected_growth():
    unc = S.score_node(healthy(ecc_uncorrected_growth={0: 2.0}))
    failed = S.score_node(healthy(remap_failed={5: 1.0}, worst={"memory_remap": 4}))
    assert unc["memory"].value == 40
    assert failed["memory"].value == 10       # -80 to 20, then the ISOLATE finding caps it at 10
    assert any(r.startswith("cap: worst memory_remap finding ISOLATE") for r in failed["memory"].reasons)


def test_the_worst_severity_a_dimensions_checks_found_caps_it():
    for rank, cap in ((1, 80), (2, 50), (3, 30), (4, 10)):
        assert S.score_node(healthy(worst={"nvlink": rank}))["interconnect"].value == cap
    assert S.score_node(healthy(worst={"xid": 4}))["interconnect"].value == 100     # not an interconnect check


def test_thermal_rules_margin_first_then_temperature_and_throttling():
    hot = S.score_node(healthy(temperature_max={0: 88.0}))
    margin = S.score_node(healthy(temperature_max={0: 88.0}, temperature_margin_min={0: 12.0}))
    throttled = S.score_node(healthy(throttled_share=0.6))
    assert hot["thermal"].value == 60
    assert margin["thermal"].value == 100      # the GPU's own margin to slowdown says 12 C: fine
    assert throttled["thermal"].value == 60


def test_a_straggler_scores_low_on_compute():
    one = S.score_node(healthy(stragglers=["matmul_tflops"]))
    two = S.score_node(healthy(stragglers=["matmul_tflops", "hbm_gbps"], drift=["matmul_tflops"]))
    assert one["compute"].value == 60 and two["compute"].value == 30
    assert S.score_node(healthy(miscompute={3: 12.0}))["compute"].value == 0


def test_reliability_counts_xid_events_by_tier_drains_and_mtbi():
    lemon = S.score_node(healthy(xid_gpu_tiers={3: {"REBOOT": 3}}, drains=3, mtbi_s=0.8 * DAY))
    one = S.score_node(healthy(xid_gpu_tiers={3: {"MONITOR": 1}}))
    assert lemon["reliability"].value == 0 and lemon["gpus"][3] < 50
    assert one["reliability"].value == 95
    assert S.score_node(healthy(records=0))["reliability"].value is None


def test_a_dimension_without_data_is_left_out_of_the_overall():
    f = healthy(has_compute=False, stragglers=["matmul_tflops"])
    result = S.score_node(f)
    assert result["compute"].value is None and result["overall"] == 100


def test_overall_is_weighted_towards_the_lowest_dimension():
    scores = {d: S.Score(100) for d in S.DIMENSIONS}
    scores["memory"] = S.Score(0)
    assert S.overall(scores) == 32                 # 0.6 * 0 + 0.4 * 80


def test_pairs_count_only_where_blame_points_at_the_node():
    assert S.score_node(healthy(pair_runs=4, pair_failures=2))["interconnect"].value == 60
    assert S.score_node(healthy(pair_runs=4, pair_failures=1))["interconnect"].value == 90


def test_every_rule_is_documented_once():
    ids = [(d, r) for d, r, _ in S.RULES]
    assert len(ids) == len(set(ids))
    assert {d for d, _ in ids} == set(S.DIMENSIONS)


# ---- anomalies ------------------------------------------------------------------------------------------

def test_a_healthy_fleet_has_no_anomaly():
    newest = {}
    for n in range(40):
        newest["gpu-%03d" % n] = {"thermal_power.temperature_c": 34.0 + (n % 3), "ecc.aggregate_corrected": 12.0,
                                  "gpu_bench.matmul_tflops": 790.0 + (n % 5) - 2,
                                  "allreduce_node.busbw_gbps": 468.0 + (n % 4) * 0.5, "nvlink.active_links": 18.0}
    profiles = {n: "dgx-h100" for n in newest}
    assert A.fleet_outliers(newest, profiles) == []
    figures = {n: {"matmul_tflops": v["gpu_bench.matmul_tflops"], "busbw_gbps": v["allreduce_node.busbw_gbps"]}
               for n, v in newest.items()}
    assert compare(figures, "dgx-h100", ["matmul_tflops", "busbw_gbps"]) == []
    for n in newest:
        assert A.own_drift(n, {"thermal_power.temperature_c": [34.0, 35.0, 34.0, 35.0],
                               "gpu_bench.matmul_tflops": [790.0, 788.0, 791.0]}) == []
    points = [[34.0 + (i % 3) for i in range(40)] for _ in range(7)]
    trends = A.fleet_trends({("dgx-h100", "thermal_power.temperature_c"): points}, [float(d) for d in range(7)])
    assert trends[0]["drift"] is None


def test_a_straggler_is_flagged_against_its_profile():
    newest = {"gpu-%03d" % n: {"gpu_bench.matmul_tflops": 790.0} for n in range(20)}
    newest["gpu-007"] = {"gpu_bench.matmul_tflops": 600.0}
    newest["a100-01"] = {"gpu_bench.matmul_tflops": 250.0}             # another profile: not compared with these
    profiles = {n: "dgx-h100" for n in newest}
    profiles["a100-01"] = "a100"
    found = A.fleet_outliers(newest, profiles)
    assert [(x["node"], x["worse"]) for x in found] == [("gpu-007", True)]
    assert found[0]["z"] < -3 and found[0]["median"] == 790.0
    stragglers = compare({n: {"matmul_tflops": v["gpu_bench.matmul_tflops"]} for n, v in newest.items()
                          if profiles[n] == "dgx-h100"}, "dgx-h100", ["matmul_tflops"])
    assert [s.node for s in stragglers] == ["gpu-007"]


def test_the_robust_scale_has_a_floor():
    """Identical readings (MAD 0) do not turn a one-degree difference into an anomaly, but a real outlier
    among them still shows."""
    values = [34.0] * 20
    assert A.robust_z(35.0, values, 2.0) == pytest.approx(0.5)
    assert A.robust_z(80.0, values, 2.0) > 3
    assert A.robust_z(35.0, values[:4], 2.0) is None            # fewer than 5 peers


def test_own_history_flags_a_drift_in_the_bad_direction_only():
    up = A.own_drift("n", {"thermal_power.temperature_c": [40.0, 41.0, 40.0, 60.0]})
    down = A.own_drift("n", {"thermal_power.temperature_c": [60.0, 61.0, 60.0, 40.0]})
    slower = A.own_drift("n", {"gpu_bench.matmul_tflops": [790.0, None, 792.0, 700.0]})
    assert [x["metric"] for x in up] == ["thermal_power.temperature_c"] and down == []
    assert slower[0]["ratio"] == pytest.approx(700 / 792, abs=1e-4)


def test_fleet_drift_a_decline_every_node_shares():
    edges = [float(d) for d in range(5)]
    falling = [[790.0 - 30 * b] * 10 for b in range(5)]
    trends = A.fleet_trends({("dgx-h100", "gpu_bench.matmul_tflops"): falling}, edges)
    assert trends[0]["drift"]["ratio"] == pytest.approx(670 / 790, abs=1e-4)
    assert A.fleet_outliers({"n%d" % i: {"gpu_bench.matmul_tflops": 670.0} for i in range(10)},
                            {"n%d" % i: "dgx-h100" for i in range(10)}) == []       # the peers see nothing


def test_ecc_growth_per_day_and_a_counter_that_went_down():
    rates = A.ecc_growth({0: 12.0, 1: 500.0}, {0: 3012.0, 1: 20.0}, 2 * DAY)
    assert rates == {0: 1500.0, 1: 10.0}       # GPU1 swapped or cleared: grows from 0


def test_per_gpu_and_reduce_read_the_series_forms():
    assert A.per_gpu(5, [0, 1]) == {0: 5.0, 1: 5.0}
    assert A.per_gpu([1, None, 3], [0, 1, 2]) == {0: 1.0, 2: 3.0}
    assert A.reduce([1, None, 3], "max") == 3.0 and A.reduce([1, None, 3], "min") == 1.0
    assert A.reduce(True, "max") is None and A.reduce("x", "min") is None


# ---- incidents, Xids, lemons ------------------------------------------------------------------------------

class Rec:
    def __init__(self, **env):
        self.env = env


def rec(t, o="PASS", c="prolog", **extra):
    return Rec(t=float(t), c=c, p="dgx-h100", o=o, **extra)


def test_incidents_returns_and_time_drained():
    h = 3600.0
    records = [rec(0), rec(1 * h, "REBOOT", a="drain", e="REBOOT xid: Xid 79", x=[[3, 79, 1, 3]], w={"xid": 3}),
               rec(2 * h, "REBOOT", c="healthcheck", a="held", x=[[3, 79, 1, 3]], w={"xid": 3}),
               rec(5 * h, c="healthcheck", a="resume"), rec(6 * h),
               rec(30 * h, "REBOOT", a="drain", x=[[3, 79, 2, 3]], w={"xid": 3}),
               rec(31 * h, "ISOLATE", c="quarantine", a="drain", v="REPLACE", e="ISOLATE memory_remap GPU6: ...")]
    tl = R.walk(records, None, 0.0, 40 * h, [10 * h, 35 * h], 86400.0)
    assert [(i.start, i.end, i.tier) for i in tl.incidents] == [(1 * h, 5 * h, "REBOOT"), (30 * h, None, "ISOLATE")]
    assert tl.drains == 3 and tl.resumes == 1 and len(tl.incidents) == 2       # the verdict's drain: same incident
    assert tl.ttr() == [4 * h]
    assert tl.drained_s == pytest.approx(4 * h + 10 * h)
    assert tl.mtbi(40 * h) == pytest.approx(20 * h)
    # the held record repeats the event: not a new one; after the resume (event cleared) it comes back twice
    assert [(x.t, x.count) for x in tl.xids] == [(1 * h, 1), (30 * h, 2)]
    assert tl.verdicts == [(31 * h, "REPLACE", "ISOLATE memory_remap GPU6: ...")]
    assert [R.HEALTH[s] for s in tl.health] == ["PASS", "ISOLATE"]
    assert R.recurring_xids(tl.xids) == {79: 2}


def test_a_prolog_means_the_node_was_back_in_service():
    records = [rec(0, "RESET", a="drain"), rec(100, c="prolog")]
    tl = R.walk(records, None, 0.0, 1000.0, [], 86400.0)
    assert tl.incidents[0].end == 100 and tl.incidents[0].how == "prolog"


def test_drained_before_the_window_counts_from_its_start_not_as_an_incident():
    prior = rec(-500, "REBOOT", a="drain", e="REBOOT xid: Xid 79")
    tl = R.walk([rec(100, c="healthcheck", a="held", o="REBOOT"), rec(400, c="healthcheck", a="resume")], prior,
                0.0, 1000.0, [50.0, 500.0], 86400.0)
    assert tl.incidents == [] and tl.drained_s == pytest.approx(400.0)
    assert [R.HEALTH[s] for s in tl.health] == ["REBOOT", "PASS"]


def test_held_drained_since_before_the_window_takes_the_tier_and_verdict_of_what_drained_it():
    cause = rec(-5000, "ISOLATE", c="quarantine", a="drain", v="REPLACE", e="ISOLATE memory_remap GPU6: no spare rows")
    prior = rec(-100, "PASS", c="healthcheck", a="held")
    prior.cause = cause
    tl = R.walk([], prior, 0.0, 1000.0, [500.0], 86400.0)
    assert tl.drained_at_start.tier == "ISOLATE" and tl.drained_at_start.evidence.startswith("ISOLATE memory_remap")
    assert tl.verdict_before == (-5000.0, "REPLACE", cause.env["e"]) and tl.incidents == []
    assert [R.HEALTH[s] for s in tl.health] == ["ISOLATE"]


def test_health_is_none_before_the_first_record_and_once_stale():
    tl = R.walk([rec(100)], None, 0.0, 10 * DAY, [50.0, 200.0, 3 * DAY], DAY)
    assert [R.HEALTH[s] for s in tl.health] == ["none", "PASS", "none"]


def test_lemons_and_fleet_figures():
    h = 3600.0
    lemon = [rec(d * DAY + h * k, "REBOOT" if k == 1 else "PASS", a={1: "drain", 2: "resume"}.get(k))
             for d in range(4) for k in range(3)]
    timelines = {"gpu-009": R.walk(lemon, None, 0.0, 4 * DAY, [], DAY), "gpu-001": R.walk([rec(0), rec(DAY)], None,
                                                                                           0.0, 4 * DAY, [], DAY)}
    found = R.lemons(timelines, 4 * DAY, 3)
    assert [x["node"] for x in found] == ["gpu-009"]
    assert found[0]["incidents"] == 4 and found[0]["intervals_s"] == [DAY] * 3
    fleet = R.fleet_figures(timelines, 4 * DAY)
    assert fleet["incidents"] == 4 and fleet["ttr_median_s"] == h and fleet["mtbi_s"] == pytest.approx(2 * DAY)
