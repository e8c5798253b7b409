"""Cross-compiled artifacts for the device profiles: the right machine code, or objects plus a link command."""

import shutil
import tarfile

import pytest

from repfx_deploy.compile import CompileConfig, compile_onnx
from repfx_deploy.targets import get_profile, resolve_tvm_target

pytestmark = pytest.mark.tvm

# ELF e_machine values: what the linked library will run on
EM_AARCH64, EM_ARM = 0xB7, 0x28


def _compile(profile_name, onnx_path, out):
    profile = get_profile(profile_name)
    out.mkdir()
    config = CompileConfig(target=resolve_tvm_target(profile), link=profile.link, tuning_db=out.parent / "db")
    return compile_onnx(onnx_path, out, config)


@pytest.mark.parametrize(("profile", "machine", "gxx"), [("rpi4", EM_AARCH64, "aarch64-linux-gnu-g++"), ("rpi3-armv7", EM_ARM, "arm-linux-gnueabihf-g++")])
def test_linux_device_profile_gives_shared_library_for_its_cpu(tmp_path, tiny_onnx, profile, machine, gxx):
    if shutil.which(gxx) is None:
        pytest.skip(f"{gxx} is not installed (scripts/setup.sh installs it)")
    artifact = _compile(profile, tiny_onnx, tmp_path / profile)
    data = artifact.library_path.read_bytes()
    assert data[:4] == b"\x7fELF" and int.from_bytes(data[18:20], "little") == machine
    assert artifact.manifest["link"] == {"kind": "shared", "linker": gxx}
    assert artifact.manifest["target"]["mtriple"] == get_profile(profile).target_dict["mtriple"]


def test_android_profile_gives_objects_and_ndk_link_command(tmp_path, tiny_onnx):
    artifact = _compile("pixel1", tiny_onnx, tmp_path / "pixel1")
    assert artifact.library_path.name == "model.tar"
    with tarfile.open(artifact.library_path) as tar:
        assert set(tar.getnames()) >= {"lib0.o", "devc.o"}
    link = artifact.manifest["link"]
    assert link["kind"] == "objects" and "aarch64-linux-android24-clang++ -shared" in link["command"]
