"""The program-JSON checks of a .pt2 archive: what sympify and the tree-spec decoder may be given."""

import json
from pathlib import Path

import pytest

from repfx_deploy.errors import UntrustedPickleError
from repfx_deploy.ingest.export_json import vet_program_json

PATH = Path("m.pt2")


def _program(expr: str | None = None, spec: object = None) -> bytes:
    doc: dict = {"graph_module": {"graph": {"tensor_values": {"x": {"sizes": [{"as_int": 1}]}}}}}
    if expr is not None:
        doc["graph_module"]["graph"]["tensor_values"]["x"]["sizes"][0] = {"as_expr": {"expr_str": expr}}
    if spec is not None:
        doc["graph_module"]["module_call_graph"] = [{"signature": {"in_spec": json.dumps(spec)}}]
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "expr",
    [
        "Symbol('s27', positive=True, integer=True)",
        "Max(Integer(1), Add(Symbol('s27', positive=True, integer=True), Integer(-1)))",
        "FloorDiv(Symbol('s0', integer=True), Integer(2))",
        "s0*2 + 1",
        "Eq(Mod(Symbol('s1'), Integer(4)), Integer(0))",
    ],
)
def test_size_expression_accepted_when_sympy_constructors_only(expr):
    vet_program_json(_program(expr), path=PATH, member="models/model.json")


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('true')",
        "Integer(1).__class__",
        "Max('__import__(\"os\")', 1)",  # Max sympifies a string argument again
        "Symbol('x y')",
        "(lambda: 1)()",
        "eval('1')",
        "[Integer(1)][0]",
    ],
)
def test_size_expression_refused_when_it_could_run_code(expr):
    with pytest.raises(UntrustedPickleError, match="size expression"):
        vet_program_json(_program(expr), path=PATH, member="models/model.json")


def test_tree_spec_refused_when_defaultdict_factory_is_not_a_container():
    context = json.dumps({"default_factory_module": "os", "default_factory_name": "system", "dict_context": []})
    spec = [1, {"type": "collections.defaultdict", "context": context, "children_spec": []}]
    with pytest.raises(UntrustedPickleError, match="os.system"):
        vet_program_json(_program(spec=spec), path=PATH, member="models/model.json")


def test_tree_spec_refused_when_it_names_an_enum_to_import():
    context = json.dumps([{"__enum__": True, "fqn": "antigravity:X", "name": "Y"}])
    spec = [1, {"type": "builtins.dict", "context": context, "children_spec": []}]
    with pytest.raises(UntrustedPickleError, match="antigravity"):
        vet_program_json(_program(spec=spec), path=PATH, member="models/model.json")


def test_tree_spec_accepted_when_builtin_containers_and_names():
    context = json.dumps({"default_factory_module": "builtins", "default_factory_name": "list", "dict_context": ["a"]})
    spec = [1, {"type": "collections.defaultdict", "context": context, "children_spec": []}]
    vet_program_json(_program(spec=spec), path=PATH, member="models/model.json")
