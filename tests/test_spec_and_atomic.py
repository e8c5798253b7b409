import pytest

from repfx_deploy.atomic import atomic_dir, atomic_file
from repfx_deploy.errors import InputShapeError, OutputExistsError
from repfx_deploy.spec import InputSpec, parse_input_shape, parse_input_shapes


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1,3,32,32", InputSpec("input", (1, 3, 32, 32))),
        ("1x3x32x32", InputSpec("input", (1, 3, 32, 32))),
        ("ids=1,16:int64", InputSpec("ids", (1, 16), "int64")),
    ],
)
def test_input_shape_parsed(text, expected):
    assert parse_input_shape(text) == expected


@pytest.mark.parametrize("text", ["", "1,-3", "a,b", "1,3:complex64", "1,0,3"])
def test_bad_input_shape_refused(text):
    with pytest.raises(InputShapeError):
        parse_input_shape(text)


def test_several_inputs_named_by_position():
    specs = parse_input_shapes(["1,6", "1,5"])
    assert [s.name for s in specs] == ["input", "input_1"]


def test_atomic_file_leaves_nothing_when_write_fails(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_keeps_old_result_when_new_one_fails(tmp_path):
    out = tmp_path / "result"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(out, force=True) as tmp:
            (tmp / "a").write_text("new")
            raise RuntimeError("crash")
    assert (out / "a").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result"]


def test_atomic_dir_refuses_existing_without_force(tmp_path):
    (tmp_path / "result").mkdir()
    with pytest.raises(OutputExistsError, match="--force"):
        with atomic_dir(tmp_path / "result"):
            pass
