"""The annotation-driven recipe-table parser: types, key paths in messages, and the round trip."""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from repfx_deploy.errors import RecipeError
from repfx_deploy.options import config_table, parse_config


@dataclass(frozen=True)
class EveryKind:
    flag: bool = False
    count: int = 1
    scale: float = 1.0
    name: str = "a"
    mode: Literal["x", "y"] = "x"
    path: Path | None = None
    sizes: tuple[int, ...] = ()
    per_layer: tuple[tuple[str, int], ...] = ()
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ValueError(f"count must be >= 1; got {self.count}")


def test_parse_config_converts_every_annotation():
    c = parse_config(EveryKind, {"flag": True, "count": 3, "scale": 2, "name": "b", "mode": "y", "path": "p.ckpt",
                                 "sizes": [1, 2], "per_layer": {"fc": 8}, "limit": 4}, "passes[0]")
    assert c == EveryKind(True, 3, 2.0, "b", "y", Path("p.ckpt"), (1, 2), (("fc", 8),), 4)


def test_config_table_round_trips_through_parse_config():
    c = EveryKind(flag=True, sizes=(4,), per_layer=(("a.b", 2),), path=Path("x"))
    assert parse_config(EveryKind, config_table(c), "t") == c
    assert "limit" not in config_table(c)  # None has no TOML form


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"cout": 1}, r"Unknown key\(s\) 'cout' in passes\[2\]"),
        ({"flag": 1}, r"passes\[2\]\.flag must be true or false; got 1 \(int\)"),
        ({"count": True}, r"passes\[2\]\.count must be an integer"),
        ({"count": 2.5}, r"passes\[2\]\.count must be an integer"),
        ({"scale": float("inf")}, r"passes\[2\]\.scale must be a finite number"),
        ({"mode": "z"}, r"passes\[2\]\.mode must be one of 'x', 'y'"),
        ({"sizes": 3}, r"passes\[2\]\.sizes must be a list"),
        ({"sizes": [1, "two"]}, r"passes\[2\]\.sizes\[1\] must be an integer; got 'two'"),
        ({"per_layer": {"fc": "eight"}}, r"passes\[2\]\.per_layer\.fc must be an integer; got 'eight'"),
        ({"per_layer": [8]}, r"passes\[2\]\.per_layer must be a table of string = an integer"),
        ({"count": 0}, r"passes\[2\]: count must be >= 1"),
    ],
)
def test_parse_config_names_the_key_path_and_expected_type_when_wrong(table, message):
    with pytest.raises(RecipeError, match=message):
        parse_config(EveryKind, table, "passes[2]")


def test_parse_config_refuses_a_table_that_is_not_a_table():
    with pytest.raises(RecipeError, match=r"passes\[0\] must be a table"):
        parse_config(EveryKind, [1, 2], "passes[0]")


def test_config_table_writes_empty_name_value_fields_as_tables():
    table = config_table(EveryKind())
    assert table["per_layer"] == {} and table["sizes"] == []
    assert parse_config(EveryKind, table, "t") == EveryKind()


def test_config_changes_lists_only_what_differs_from_the_defaults():
    from repfx_deploy.options import config_changes

    assert config_changes(EveryKind(count=3, per_layer=(("fc", 8),))) == {"count": 3, "per_layer": {"fc": 8}}
    assert config_changes(EveryKind()) == {}
