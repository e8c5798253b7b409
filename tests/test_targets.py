import pytest

from repfx_deploy.errors import TargetError
from repfx_deploy.targets import get_profile, list_profiles, load_profile_file


def test_host_profile_is_shipped_and_detected():
    profile = get_profile("host")
    assert profile.is_host and "tvm" in profile.runtimes
    assert "host" in list_profiles()


def test_unknown_target_names_known_ones():
    with pytest.raises(TargetError, match="Known targets: .*host"):
        get_profile("toaster")


def test_target_file_with_unknown_key_refused(tmp_path):
    path = tmp_path / "dev.toml"
    path.write_text('name = "dev"\ndescription = "d"\nspeed = 3\n[tvm_target]\nkind = "llvm"\n')
    with pytest.raises(TargetError, match="unknown keys"):
        load_profile_file(path)


def test_target_file_loads_user_device(tmp_path):
    path = tmp_path / "dev.toml"
    path.write_text('name = "dev"\ndescription = "a board"\nthreads = 4\n[tvm_target]\nkind = "llvm"\nmtriple = "aarch64-linux-gnu"\nmattr = ["+neon"]\n')
    profile = get_profile(target_file=path)
    assert profile.target_dict["mattr"] == ["+neon"] and profile.threads == 4 and not profile.is_host


def test_duplicate_profile_names_in_one_folder_refused(tmp_path, monkeypatch):
    for f in ("a.toml", "b.toml"):
        (tmp_path / f).write_text('name = "same"\ndescription = "d"\n[tvm_target]\nkind = "llvm"\n')
    monkeypatch.setenv("REPFX_TARGETS_DIR", str(tmp_path))
    with pytest.raises(TargetError, match="Two profiles"):
        list_profiles()


def test_shipped_profiles_cover_the_devices_and_validate():
    profiles = list_profiles()
    assert {"host", "pixel1", "rpi4", "rpi3-armv7", "jetson-nano"} <= set(profiles)
    assert profiles["pixel1"].os == "android" and profiles["pixel1"].link == "objects"
    assert profiles["rpi3-armv7"].target_dict["mfloat-abi"] == "hard"
    assert all(p.target_dict.get("num-cores") for name, p in profiles.items() if name != "host")


def test_profile_with_unknown_link_kind_refused(tmp_path):
    path = tmp_path / "dev.toml"
    path.write_text('name = "dev"\ndescription = "d"\nlink = "zip"\n[tvm_target]\nkind = "llvm"\n')
    with pytest.raises(TargetError, match="link"):
        load_profile_file(path)


_BASE = 'name = "dev"\ndescription = "d"\n[tvm_target]\nkind = "llvm"\n[estimator]\n'


def _with_estimator(tmp_path, body):
    path = tmp_path / "dev.toml"
    path.write_text(_BASE + body)
    return path


def test_every_shipped_profile_states_its_estimator():
    for name, profile in list_profiles().items():
        est = profile.estimator
        assert est is not None, name
        assert est.accuracy and est.calibrated_on and est.runtime and est.accuracy_pct > 0
    assert list_profiles()["host"].estimator.method == "lookup table"
    assert "uncalibrated" in list_profiles()["rpi4"].estimator.accuracy


def test_estimator_table_loads(tmp_path):
    profile = load_profile_file(_with_estimator(tmp_path, 'accuracy = "about 30 %"\nconv_gmacs = 12\nfuse_elementwise = false\n'))
    assert profile.estimator.conv_gmacs == 12.0 and not profile.estimator.fuse_elementwise
    assert profile.to_dict()["estimator"]["accuracy"] == "about 30 %"


@pytest.mark.parametrize("body,match", [
    ("speed = 3\n", "unknown keys"),
    ("conv_gmacs = -1\n", "positive"),
    ("bandwidth_gbs = 0\n", "positive"),
    ("conv_gmacs = \"fast\"\n", "wrong type"),
    ("method = \"guess\"\n", "method"),
    ("overhead_us = -2\n", "overhead_us"),
    ("accuracy = \"\"\n", "accuracy"),
    ("fuse_elementwise = 1\n", "wrong type"),
    ("lut_weight_gbs = -1\n", "lut_weight_gbs"),
])
def test_estimator_table_refuses_bad_values(tmp_path, body, match):
    with pytest.raises(TargetError, match=match):
        load_profile_file(_with_estimator(tmp_path, body))
