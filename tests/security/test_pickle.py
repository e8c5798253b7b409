"""No model file runs code it carries without --trust-pickle (issue 19, item 1).

Every malicious file is built here with a real payload: a pickle whose ``__reduce__`` returns ``os.system`` with
a command that creates a marker file (or, where the format has no pickle, the format's own way to run code).
Each is loaded through ``load_model`` and through the CLI (``inspect`` and ``export``); the marker must never
appear, and the refusal is exit code 2 naming the file and ``--trust-pickle``, without a traceback. Benign files
of each format still load without the flag, and files that hold real Python objects load with it.
"""

import io
import json
import logging
import os
import pickle
import shlex
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tiny_models
import torch
import torch.nn as nn
from typer.testing import CliRunner

from repfx_deploy.cli.app import app
from repfx_deploy.errors import DataError, InputError, ModelLoadError, UntrustedPickleError
from repfx_deploy.ingest.loader import LoadOptions, load_model
from repfx_deploy.spec import InputSpec

runner = CliRunner()
LINEAR_IN = (InputSpec("x", (1, 3)),)


@pytest.fixture(autouse=True)
def _quiet_torch_export():
    # torch.export.load logs a traceback at WARNING when it falls back to the pre-2.8 layout
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


class Payload:
    """Unpickling this runs ``touch marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def harmless_sample_inputs():
    """A callable no weights-only allowlist holds: a pickle naming it is refused untrusted, loads trusted."""
    return ((torch.zeros(1, 3),), {})


class HarmlessReduce:
    def __reduce__(self):
        return (harmless_sample_inputs, ())


class Linear3(nn.Module):
    """A weight, a buffer and a lifted constant: each kind of payload a .pt2 archive stores."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("shift", torch.ones(2))
        self.scale = torch.tensor([2.0, 3.0])

    def forward(self, x):
        return self.fc(x) * self.scale + self.shift


class WritesOnLoad(nn.Module):
    """TorchScript whose ``__setstate__`` (run by torch.jit.load) writes ``path``."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.w = torch.ones(3)
        self.path = path

    def forward(self, x):
        return x * self.w

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.w, self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.w, self.path, self.training = state
        torch.save(self.w, self.path)


class HarmlessSetstate(nn.Module):
    """TorchScript with a ``__setstate__`` that does nothing but restore its fields."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.ones(3)

    def forward(self, x):
        return x * self.w

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.w, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        self.w, self.training = state


class WritesOnForward(nn.Module):
    """TorchScript whose forward writes ``path`` (run when the loader checks the signature)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x):
        torch.save(x, self.path)
        return x


def _tsave(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.fixture(scope="session")
def base_program():
    torch.manual_seed(0)
    return torch.export.export(Linear3().eval(), (torch.randn(1, 3),))


@pytest.fixture(scope="session")
def base_pt2(tmp_path_factory, base_program) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "base.pt2"
    torch.export.save(base_program, path)
    return path


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes], *, append: dict[str, bytes] | None = None) -> Path:
    """Copy the archive ``src`` to ``dst`` with members (named below the archive's root folder) replaced or added."""
    with zipfile.ZipFile(src) as zin:
        root = zin.namelist()[0].split("/")[0]
        replace = {f"{root}/{k}": v for k, v in replace.items()}
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
            for info in zin.infolist():
                zout.writestr(info, replace.pop(info.filename, None) or zin.read(info.filename))
            for name, data in {**replace, **{f"{root}/{k}": v for k, v in (append or {}).items()}}.items():
                zout.writestr(name, data)
    return dst


def _member_json(path: Path, member: str) -> dict:
    with zipfile.ZipFile(path) as z:
        root = z.namelist()[0].split("/")[0]
        return json.loads(z.read(f"{root}/{member}"))


def _with_payload_config(base: Path, dst: Path, kind: str, path_name: str, payload: bytes) -> Path:
    config_name = f"data/{kind}/model_{kind}_config.json"
    config = _member_json(base, config_name)
    entry = next(iter(config["config"].values()))
    entry["use_pickle"], entry["path_name"] = True, path_name
    return _rewrite(base, dst, {config_name: json.dumps(config).encode()}, append={f"data/{kind}/{path_name}": payload})


def _with_program(base: Path, dst: Path, edit) -> Path:
    program = _member_json(base, "models/model.json")
    edit(program)
    return _rewrite(base, dst, {"models/model.json": json.dumps(program).encode()})


def _touch(marker: Path) -> str:
    return f"__import__('os').system({f'touch {shlex.quote(str(marker))}'!r})"


# Each builder writes one malicious file into ``tmp`` whose loading, unguarded, creates ``marker``.
def _pt(tmp, marker, **_):
    torch.save(Payload(marker), tmp / "evil.pt")
    return tmp / "evil.pt"


def _pth(tmp, marker, **_):
    torch.save({"state_dict": {"fc.weight": Payload(marker)}}, tmp / "evil.pth")
    return tmp / "evil.pth"


def _pt_legacy_format(tmp, marker, **_):
    torch.save({"fc.weight": Payload(marker)}, tmp / "old.pt", _use_new_zipfile_serialization=False)
    return tmp / "old.pt"


def _bin(tmp, marker, **_):
    torch.save({"fc.weight": Payload(marker)}, tmp / "weights.bin")
    return tmp / "weights.bin"


def _state_dict_in_zip(tmp, marker, **_):
    # a zip laid out like torch.save's, written by hand: its data.pkl is a plain pickle with the payload
    with zipfile.ZipFile(tmp / "weights.zip", "w") as z:
        z.writestr("weights/data.pkl", pickle.dumps({"fc.weight": Payload(marker)}, protocol=2))
        z.writestr("weights/version", "3\n")
        z.writestr("weights/byteorder", "little")
    return tmp / "weights.zip"


def _pt2_sample_inputs(tmp, marker, base, **_):
    return _rewrite(base, tmp / "inputs.pt2", {"data/sample_inputs/model.pt": _tsave(((Payload(marker),), {}))})


def _pt2_pickled_weight(tmp, marker, base, **_):
    return _with_payload_config(base, tmp / "weight.pt2", "weights", "evil_weight", _tsave(Payload(marker)))


def _pt2_pickled_constant(tmp, marker, base, **_):
    return _with_payload_config(base, tmp / "const.pt2", "constants", "tensor_evil", _tsave(Payload(marker)))


def _pt2_opaque_constant(tmp, marker, base, **_):
    return _with_payload_config(base, tmp / "opaque.pt2", "constants", "opaque_obj_0", pickle.dumps(Payload(marker)))


def _pt2_custom_object(tmp, marker, base, **_):
    return _with_payload_config(base, tmp / "custom.pt2", "constants", "custom_obj_0", _tsave({"a": 1}))


def _pt2_legacy_weights(tmp, marker, base, **_):
    return _rewrite(base, tmp / "lw.pt2", {}, append={"data/weights/model.pt": _tsave(Payload(marker))})


def _pt2_legacy_constants(tmp, marker, base, **_):
    return _rewrite(base, tmp / "lc.pt2", {}, append={"data/constants/model.pt": _tsave(Payload(marker))})


def _pt2_duplicate_member(tmp, marker, base, **_):
    return _rewrite(base, tmp / "dup.pt2", {}, append={"data/sample_inputs/model.pt": _tsave(((Payload(marker),), {}))})


def _pt2_aotinductor(tmp, marker, base, **_):
    return _rewrite(base, tmp / "aoti.pt2", {}, append={"data/aotinductor/model/model.so": b"\x7fELF not really"})


def _pt2_pre_2_8_layout(tmp, marker, program, **_):
    from torch._export.serde.schema import SCHEMA_VERSION
    from torch._export.serde.serialize import serialize

    artifact = serialize(program)
    with zipfile.ZipFile(tmp / "old.pt2", "w") as z:
        z.writestr("archive_format", "pt2")
        z.writestr("version", ".".join(map(str, SCHEMA_VERSION)))
        z.writestr("serialized_exported_program.json", artifact.exported_program)
        z.writestr("serialized_state_dict.pt", artifact.state_dict)
        z.writestr("serialized_constants.pt", artifact.constants)
        z.writestr("serialized_example_inputs.pt", _tsave(Payload(marker)))
    return tmp / "old.pt2"


def _pt2_sympy_expression(tmp, marker, base, **_):
    def edit(program):
        sizes = next(iter(program["graph_module"]["graph"]["tensor_values"].values()))["sizes"]
        sizes[0] = {"as_expr": {"expr_str": _touch(marker), "hint": {"as_int": 1}}}

    return _with_program(base, tmp / "sympy.pt2", edit)


def _pt2_placeholder_name(tmp, marker, base, **_):
    # torch.fx pastes placeholder names into the forward source it execs
    program = _member_json(base, "models/model.json")
    text = json.dumps(program).replace('"x"', json.dumps(f"x={_touch(marker)}"))
    return _rewrite(base, tmp / "name.pt2", {"models/model.json": text.encode()})


def _pt2_file_op_in_graph(tmp, marker, base, **_):
    def edit(program):
        save = {"target": "torch.ops.aten.save.default", "name": "save", "outputs": [], "metadata": {},
                "inputs": [{"name": "item", "arg": {"as_tensor": {"name": "x"}}, "kind": 1},
                           {"name": "filename", "arg": {"as_string": str(marker)}, "kind": 1}]}  # fmt: skip
        program["graph_module"]["graph"]["nodes"].insert(0, save)

    return _with_program(base, tmp / "save.pt2", edit)


def _torchscript_setstate(tmp, marker, **_):
    torch.jit.script(WritesOnLoad(str(marker))).save(str(tmp / "load.ts"))
    marker.unlink(missing_ok=True)  # scripting does not write it, but be sure the test sees only the load
    return tmp / "load.ts"


def _torchscript_forward(tmp, marker, **_):
    torch.jit.script(WritesOnForward(str(marker))).save(str(tmp / "forward.ts"))
    return tmp / "forward.ts"


def _hf_folder(tmp: Path) -> Path:
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import load_file

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32,
                                      architectures=["LlamaForCausalLM"])  # fmt: skip
    folder = tmp / "llama"
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")  # the pickled format older checkpoints use
    return folder


def _hf_pytorch_model_bin(tmp, marker, **_):
    folder = _hf_folder(tmp)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    torch.save({**state, "lm_head.weight": Payload(marker)}, folder / "pytorch_model.bin")
    return folder


def _hf_sharded_bin(tmp, marker, **_):
    folder = _hf_folder(tmp)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    (folder / "pytorch_model.bin").unlink()
    names = sorted(state)
    torch.save({k: state[k] for k in names[:3]}, folder / "pytorch_model-00001-of-00002.bin")
    torch.save({"x": Payload(marker)}, folder / "pytorch_model-00002-of-00002.bin")
    weight_map = {k: f"pytorch_model-0000{1 if i < 3 else 2}-of-00002.bin" for i, k in enumerate(names)}
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


MALICIOUS = {
    "pt": _pt,
    "pth": _pth,
    "pt_legacy_format": _pt_legacy_format,
    "bin": _bin,
    "state_dict_in_zip": _state_dict_in_zip,
    "pt2_sample_inputs": _pt2_sample_inputs,
    "pt2_pickled_weight": _pt2_pickled_weight,
    "pt2_pickled_constant": _pt2_pickled_constant,
    "pt2_opaque_constant": _pt2_opaque_constant,
    "pt2_custom_object": _pt2_custom_object,
    "pt2_legacy_weights": _pt2_legacy_weights,
    "pt2_legacy_constants": _pt2_legacy_constants,
    "pt2_duplicate_member": _pt2_duplicate_member,
    "pt2_aotinductor": _pt2_aotinductor,
    "pt2_pre_2_8_layout": _pt2_pre_2_8_layout,
    "pt2_sympy_expression": _pt2_sympy_expression,
    "pt2_placeholder_name": _pt2_placeholder_name,
    "pt2_file_op_in_graph": _pt2_file_op_in_graph,
    "torchscript_setstate": _torchscript_setstate,
    "torchscript_forward": _torchscript_forward,
    "hf_pytorch_model_bin": _hf_pytorch_model_bin,
    "hf_sharded_bin": _hf_sharded_bin,
}


@pytest.fixture(params=sorted(MALICIOUS))
def malicious(request, tmp_path, base_pt2, base_program):
    marker = tmp_path / "marker"
    path = MALICIOUS[request.param](tmp_path, marker, base=base_pt2, program=base_program)
    assert not marker.exists()
    return path, marker


def _shape_args(path: Path) -> list[str]:
    return [] if path.is_dir() else ["--input-shape", "1,3"]


def test_malicious_file_refused_when_loaded_without_trust(malicious):
    path, marker = malicious
    options = LoadOptions() if path.is_dir() else LoadOptions(input_specs=LINEAR_IN)
    with pytest.raises(UntrustedPickleError) as caught:
        load_model(path, options)
    assert str(path) in caught.value.problem and "--trust-pickle" in caught.value.fix
    assert not marker.exists()


@pytest.mark.parametrize("command", ["inspect", "export"])
def test_malicious_file_refused_by_cli_with_exit_2_when_untrusted(malicious, tmp_path, command):
    path, marker = malicious
    out = ["-o", str(tmp_path / "out.onnx")] if command == "export" else []
    result = runner.invoke(app, [command, str(path), *_shape_args(path), *out, "--json"])
    assert result.exit_code == 2, result.output
    error = json.loads(result.stdout)["error"]
    assert error["type"] == "UntrustedPickleError"
    assert str(path) in error["problem"] and "--trust-pickle" in error["fix"]
    assert "Traceback" not in result.output
    assert not marker.exists() and not (tmp_path / "out.onnx").exists()


def test_pt2_guards_not_run_when_untrusted(tmp_path, base_pt2):
    # the guard strings become a function that ExportedProgram.module() execs and the model's first call runs
    marker = tmp_path / "marker"
    path = _with_program(base_pt2, tmp_path / "guards.pt2", lambda p: p.update(guards_code=[f"{_touch(marker)} == 0"]))
    result = runner.invoke(app, ["inspect", str(path), "--json"])
    assert result.exit_code == 0, result.output
    assert not marker.exists()


# Benign files of each format load without the opt-in.
@pytest.mark.parametrize("name", ["sd.pt", "sd.pth", "sd.bin", "weights.zip", "legacy.pt"])
def test_state_dict_loads_without_trust(tmp_path, fixtures_dir, tiny_conv, name):
    path = tmp_path / name
    torch.save(tiny_conv.state_dict(), path, _use_new_zipfile_serialization=not name.startswith("legacy"))
    loaded = load_model(path, LoadOptions(arch="tiny_models:TinyConvNet", python_path=(fixtures_dir,),
                                          input_specs=(InputSpec("input", (1, 3, 8, 8)),)))  # fmt: skip
    x = torch.randn(1, 3, 8, 8)
    assert torch.allclose(loaded.module(x), tiny_conv(x))


@pytest.mark.parametrize("name", ["whole.pt", "whole.pth", "whole.bin", "legacy.pt"])
def test_pickled_module_loads_with_trust(tmp_path, tiny_conv, name):
    path = tmp_path / name
    torch.save(tiny_conv, path, _use_new_zipfile_serialization=not name.startswith("legacy"))
    with pytest.raises(UntrustedPickleError):
        load_model(path, LoadOptions(input_specs=(InputSpec("input", (1, 3, 8, 8)),)))
    loaded = load_model(path, LoadOptions(input_specs=(InputSpec("input", (1, 3, 8, 8)),), trust_pickle=True))
    assert isinstance(loaded.module, tiny_models.TinyConvNet)


def test_pt2_loads_without_trust_when_benign(base_pt2):
    result = runner.invoke(app, ["inspect", str(base_pt2), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["inputs"][0]["shape"] == [1, 3]


def test_pt2_with_dynamic_shapes_loads_without_trust(tmp_path):
    class Pair(nn.Module):
        def forward(self, x, y):
            return x[:, :-1] + y[:, 1:], x.sum() * (x.shape[1] // 2)

    dim = torch.export.Dim("d", min=3, max=64)
    program = torch.export.export(Pair(), (torch.randn(2, 8), torch.randn(2, 8)), dynamic_shapes=({1: dim}, {1: dim}))
    assert program._guards_code  # sympy size expressions and guard strings: what the JSON checks must let through
    torch.export.save(program, tmp_path / "dyn.pt2")
    loaded = load_model(tmp_path / "dyn.pt2")
    assert loaded.module(torch.randn(2, 5), torch.randn(2, 5))[0].shape == (2, 4)


def test_pt2_with_pickled_sample_inputs_loads_only_with_trust(tmp_path, base_pt2):
    path = _rewrite(base_pt2, tmp_path / "objects.pt2", {"data/sample_inputs/model.pt": _tsave(HarmlessReduce())})
    with pytest.raises(UntrustedPickleError, match="sample_inputs"):
        load_model(path)
    loaded = load_model(path, LoadOptions(trust_pickle=True))
    assert loaded.input_specs[0].shape == (1, 3)


def test_torchscript_with_setstate_loads_only_with_trust(tmp_path):
    path = tmp_path / "state.ts"
    torch.jit.script(HarmlessSetstate()).save(str(path))
    with pytest.raises(UntrustedPickleError, match="__setstate__"):
        load_model(path, LoadOptions(input_specs=LINEAR_IN))
    loaded = load_model(path, LoadOptions(input_specs=LINEAR_IN, trust_pickle=True))
    assert torch.equal(loaded.module(torch.ones(1, 3)), torch.ones(1, 3))


def test_torchscript_with_setstate_runs_it_when_trusted(tmp_path):
    marker = tmp_path / "marker"
    path = _torchscript_setstate(tmp_path, marker)
    load_model(path, LoadOptions(input_specs=LINEAR_IN, trust_pickle=True))
    assert marker.exists()  # what --trust-pickle allows: the check above is what stops it


def test_hf_folder_with_pickled_weights_loads_without_trust(tmp_path):
    folder = _hf_folder(tmp_path)
    torch.save({"lr": 0.1, "note": Payload(tmp_path / "never")}, folder / "training_args.bin")  # nothing reads it
    loaded = load_model(folder, LoadOptions(input_specs=(InputSpec("input_ids", (1, 8), "int64"),)))
    assert loaded.module(torch.zeros(1, 8, dtype=torch.long)).shape == (1, 8, 50)
    assert not (tmp_path / "never").exists()


def test_hf_folder_custom_code_never_runs_even_when_trusted(tmp_path):
    folder = _hf_folder(tmp_path)
    marker = tmp_path / "marker"
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.Config", "AutoModelForCausalLM": "evil.Model"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text(
        f"open({str(marker)!r}, 'w').close()\nfrom transformers import LlamaConfig as Config, LlamaForCausalLM as Model\n"
    )
    load_model(folder, LoadOptions(input_specs=(InputSpec("input_ids", (1, 8), "int64"),), trust_pickle=True))
    assert not marker.exists()


# The other readers of pickled files.
def test_recovery_checkpoint_with_payload_refused(tmp_path):
    from repfx_deploy.passes.recovery import checkpoint

    marker = tmp_path / "marker"
    torch.save({"format": checkpoint.FORMAT, "student": Payload(marker)}, tmp_path / "ckpt.pt")
    with pytest.raises(InputError, match="ckpt.pt"):
        checkpoint.load(tmp_path / "ckpt.pt", digest="x", trajectory={})
    assert not marker.exists()


def test_example_weights_with_payload_refused(tmp_path):
    from repfx_deploy.examples.fashion_mnist import load_pretrained

    marker = tmp_path / "marker"
    torch.save({"conv1.weight": Payload(marker)}, tmp_path / "fm.pt")
    with pytest.raises(ModelLoadError, match="fm.pt"):
        load_pretrained(tmp_path / "fm.pt")
    assert not marker.exists()


def test_data_file_with_pickled_objects_refused(tmp_path):
    from repfx_deploy.data.arrays import read_arrays
    from repfx_deploy.data.limits import DataLimits

    marker = tmp_path / "marker"
    np.save(tmp_path / "x.npy", np.array([Payload(marker)], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "d.npz", x=np.array([Payload(marker)], dtype=object))
    for name in ("x.npy", "d.npz"):
        with pytest.raises(DataError):
            read_arrays(tmp_path / name, DataLimits.from_env())
    assert not marker.exists()
