import os

import pytest

from gpuhc import profiles as P
from gpuhc.errors import ProfileError

from conftest import ROOT


def test_bundled_file_is_the_repository_file():
    assert os.path.samefile(P.PACKAGE_FILE, os.path.join(ROOT, "instance-profiles.conf"))


def test_bundled_profiles_cover_the_fleet():
    profs = P.load()
    for name, gpus, efa, nvlinks in [("p4d.24xlarge", 8, 4, 12), ("p4de.24xlarge", 8, 4, 12), ("p5.48xlarge", 8, 32, 18),
                                     ("p5e.48xlarge", 8, 32, 18), ("p5en.48xlarge", 8, 16, 18),
                                     ("p6-b200.48xlarge", 8, 8, 18)]:
        p = profs[name]
        assert (p.gpus, p.efa, p.nvlinks, p.nvswitch, p.auto) == (gpus, efa, nvlinks, True, False), name
    for name in ("dgx-a100", "dgx-h100", "dgx-h200", "hgx-b200", "a30-2gpu", "generic"):
        assert name in profs
    assert profs["a30-2gpu"].nvlinks == 0 and profs["a30-2gpu"].gpus == 2
    assert profs["generic"].gpus is None and profs["generic"].expects_gpus is None
    assert profs["dgx-h100"].ecc is True and profs["dgx-h100"].mig == "no"


@pytest.mark.parametrize("line,needle", [
    ("bad gpus=eight", "gpus='eight'"),
    ("bad gpus=-1", "must not be negative"),
    ("bad colour=red", "unknown key 'colour'"),
    ("bad gpus", "expected key=value"),
    ('bad model="H100', "No closing quotation"),
    ("gpus=8", "starts with the profile name"),
    ("bad nvswitch=maybe", "expected yes or no"),
    ("bad gpus=8 gpus=4", "given twice"),
    ("dup gpus=1\ndup gpus=2", "already used"),
    ("x aliases=p5\ny aliases=p5", "already used"),
    ("bad ib_rate=nan", "expected a finite number"),
    ("bad memory_gib=inf", "expected a finite number"),
    ("bad gpus=99999999999999999999999", "too large"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, needle):
    path = tmp_path / "profiles.conf"
    path.write_text("# header\n\nok gpus=1\n" + line + "\n")
    with pytest.raises(ProfileError) as exc:
        P.load(str(path))
    msg = str(exc.value)
    assert msg.startswith("%s:4:" % path) or msg.startswith("%s:5:" % path), msg
    assert needle in msg


def test_missing_file_is_one_line_error(tmp_path):
    with pytest.raises(ProfileError, match="cannot read"):
        P.load(str(tmp_path / "nope.conf"))


def test_comments_quotes_and_aliases():
    profs = P.parse('# c\nbig gpus=8 model="H100 80GB" aliases=a,b  # trailing\n', "x")
    assert profs["big"].model == "H100 80GB" and profs["big"].aliases == ("a", "b")
    assert P.lookup(profs, "b").name == "big"
    assert profs["generic"].source == "built-in"


def test_detection_order():
    profs = P.load()
    asked = []

    def src(name, value):
        def f():
            asked.append(name)
            return value
        return f

    d = P.detect(profs, forced="p5", features=src("features", ["p4d"]))
    assert (d.profile.name, d.how, asked) == ("p5.48xlarge", "config", [])
    d = P.detect(profs, features=src("features", ["rack7", "dgx-a100"]), instance_type=src("imds", "p5.48xlarge"))
    assert (d.profile.name, d.how) == ("dgx-a100", "slurm-feature") and "imds" not in asked
    d = P.detect(profs, features=src("f2", ["rack7"]), instance_type=src("imds2", "p5en.48xlarge"),
                 gpu_model=src("nvml", ("NVIDIA H100 80GB HBM3", 8)))
    assert (d.profile.name, d.how) == ("p5en.48xlarge", "instance-type") and "nvml" not in asked
    d = P.detect(profs, instance_type=lambda: "m7i.large", gpu_model=lambda: ("NVIDIA H100 80GB HBM3", 8))
    assert (d.profile.name, d.how) == ("dgx-h100", "gpu-model") and "m7i.large" in d.notes[0]
    # cloud profiles (auto=no) are never picked by GPU model alone
    d = P.detect(profs, gpu_model=lambda: ("NVIDIA A100-SXM4-40GB", 8))
    assert d.profile.name == "dgx-a100"
    d = P.detect(profs, gpu_model=lambda: ("NVIDIA H100 80GB HBM3", 4))
    assert (d.profile.name, d.how) == ("generic", "fallback")
    with pytest.raises(ProfileError, match="'nope'"):
        P.detect(profs, forced="nope")


def test_non_utf8_file_names_file_and_line(tmp_path):
    path = tmp_path / "profiles.conf"
    path.write_bytes(b"ok gpus=1\nbad model=\"H\xff100\"\n")
    with pytest.raises(ProfileError, match=r"profiles.conf:2: not UTF-8 text \(byte 0xff\)"):
        P.load(str(path))
