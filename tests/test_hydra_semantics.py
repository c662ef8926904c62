"""``mf.build`` against ``hydra.utils.instantiate`` on the features of Hydra's own
``tests/instantiate`` (hydra 1.3), expressed with torch.nn modules.

Each case builds with both and compares structure (module names and classes), parameter
shapes and sharing (which names are one module). Values differ by design (modelfactory
seeds every block). Where modelfactory differs, the test says how and why:

- ``_convert_`` unset: Hydra passes ``DictConfig``/``ListConfig``; modelfactory passes plain
  containers (torch's own constructors check ``isinstance(x, (list, tuple))``, so
  ``nn.Unflatten`` fails under Hydra's default); ``_convert_: none`` gives Hydra's containers.
- a root that is not a module (a partial, a tensor) is refused: ``build`` returns models.
- a value that cannot be copied (a generator) is refused with its path: a model keeps a
  private copy of its config (save writes it); Hydra passes such objects through.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from torch import nn

import modelfactory as mf
from modelfactory._record import record_of
from modelfactory.errors import BuildError, ConfigError

LIN = "torch.nn.Linear"


def lin(i: int, o: int, **kw: Any) -> dict[str, Any]:
    return {"_target_": LIN, "in_features": i, "out_features": o, **kw}


def relu() -> dict[str, Any]:
    return {"_target_": "torch.nn.ReLU"}


def shape_of(model: nn.Module) -> dict[str, Any]:
    """What must agree: module names and classes, parameter shapes, and shared modules."""
    by_id: dict[int, list[str]] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        by_id.setdefault(id(m), []).append(name)
    return {
        "modules": [(n, type(m).__name__) for n, m in model.named_modules()],
        "params": {n: tuple(p.shape) for n, p in model.named_parameters()},
        "shared": sorted(names for names in by_id.values() if len(names) > 1),
    }


def same(cfg: Any, make_input: Any = None) -> nn.Module:
    """Build ``cfg`` with both; assert the same result and that ``cfg`` is left unchanged."""
    before = copy.deepcopy(cfg)
    ours, theirs = mf.build(cfg), instantiate(cfg)
    assert shape_of(ours) == shape_of(theirs)
    assert cfg == before  # neither build mutates the caller's config
    if make_input is not None:
        x = make_input()
        assert ours(x).shape == theirs(x).shape
    return ours


FORMS = [
    pytest.param(lambda c: copy.deepcopy(c), id="dict"),
    pytest.param(lambda c: OmegaConf.create(c), id="dictconfig"),
]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(
    "cfg",
    [
        pytest.param(
            {"_target_": "torch.nn.Sequential", "_args_": [lin(4, 8), relu(), lin(8, 2)]},
            id="args",
        ),
        pytest.param(
            {
                "_target_": "modelfactory.blocks.Sequential",
                "layers": {"enc": lin(4, 8), "act": relu(), "dec": {**lin(8, 2), "bias": False}},
            },
            id="nested-in-dict",
        ),
        pytest.param(
            {"_target_": "torch.nn.ModuleList", "modules": [lin(4, 4), lin(4, 2)]},
            id="nested-in-list",
        ),
        pytest.param(
            {
                "_target_": "torch.nn.ModuleDict",
                "modules": {"a": {"_target_": "torch.nn.Sequential", "_args_": [lin(2, 3)]}},
            },
            id="nested-args-in-dict",
        ),
        pytest.param(
            {"_target_": "tests.user_blocks.make_mlp", "sizes": [4, 16, 3]}, id="function"
        ),
        pytest.param({"_target_": "tests.user_blocks.twice", "layer": lin(4, 4)}, id="shared"),
    ],
)
def test_nested_targets_build_the_same(form: Any, cfg: dict[str, Any]) -> None:
    runs = "Module" not in cfg["_target_"]  # ModuleList / ModuleDict have no forward
    same(form(cfg), (lambda: torch.rand(2, 4)) if runs else None)


def test_shared_submodules_are_compared() -> None:
    model = same({"_target_": "tests.user_blocks.twice", "layer": lin(4, 4)})
    assert shape_of(model)["shared"] == [["0", "2"]] and model[0] is model[2]


@pytest.mark.parametrize("form", FORMS)
def test_partial_node_as_argument_and_missing_values_in_it(form: Any) -> None:
    make = {"_target_": LIN, "_partial_": True, "in_features": 4, "out_features": MISSING}
    cfg = form({"_target_": "tests.user_blocks.FromFactory", "make": make, "widths": [3, 5]})
    model = same(cfg)
    assert [m.out_features for m in model.layers] == [3, 5]  # ??? left out, as Hydra does


@pytest.mark.parametrize("form", FORMS)
def test_missing_value_is_one_error_with_the_full_path(form: Any) -> None:
    cfg = form({"_target_": "torch.nn.Sequential", "_args_": [lin(4, MISSING), lin(MISSING, 2)]})
    with pytest.raises(Exception, match="Missing mandatory value"):
        instantiate(cfg)
    with pytest.raises(ConfigError) as e:
        mf.build(cfg)
    assert e.value.paths == ["model._args_.0.out_features", "model._args_.1.in_features"]
    assert "missing value '???'" in str(e.value)


def test_missing_value_in_a_node_of_a_composed_config_names_its_full_key() -> None:
    cfg = OmegaConf.create(
        {"model": {"_target_": "torch.nn.Sequential", "_args_": [lin(4, "???")]}}
    )
    with pytest.raises(ConfigError) as e:
        mf.build(cfg.model)
    assert e.value.paths == ["model._args_.0.out_features"]


@pytest.mark.parametrize(
    ("recursive", "kinds"), [(True, ("Linear",) * 2), (False, ("dict", "DictConfig"))]
)
def test_recursive_flag(recursive: bool, kinds: tuple[str, str]) -> None:
    cfg = {"_target_": "tests.user_blocks.Deferred", "_recursive_": recursive, "spec": lin(3, 2)}
    ours, theirs = mf.build(cfg), instantiate(cfg)
    assert shape_of(ours) == shape_of(theirs)
    assert (ours.kind, theirs.kind) == kinds  # unbuilt: plain vs DictConfig, the _convert_ default


def test_interpolation_from_a_child_node_resolves_against_the_root() -> None:
    cfg = OmegaConf.create(
        {
            "width": 8,
            "model": {
                "_target_": "modelfactory.blocks.Sequential",
                "layers": [lin(4, "${width}"), {**lin("${..0.out_features}", 2)}],
            },
        }
    )
    model = same(cfg.model, lambda: torch.rand(2, 4))
    assert model[1].in_features == 8
    record = record_of(model)
    assert record.knobs == {"width": 8} and record.config["model"]["layers"][0]["out_features"] == 8


def test_interpolation_errors_name_the_full_config_path() -> None:
    cfg = OmegaConf.create(
        {"model": {"_target_": "torch.nn.Sequential", "_args_": [lin(4, "${w}")]}}
    )
    with pytest.raises(ConfigError) as e:
        mf.build(cfg.model)
    assert e.value.paths == ["model._args_.0.out_features"]
    assert "Interpolation key 'w' not found" in str(e.value)


def test_an_interpolated_node_is_built_twice_not_shared() -> None:
    cfg = OmegaConf.create(
        {
            "block": lin(4, 4),
            "model": {"_target_": "torch.nn.Sequential", "_args_": ["${block}"] * 2},
        }
    )
    model = same(cfg.model)
    assert model[0] is not model[1] and shape_of(model)["shared"] == []


@pytest.mark.parametrize("mode", ["none", "partial", "object", "all", "None", "ALL"])
def test_convert_modes_pass_the_same_container_types(mode: str) -> None:
    cfg = {
        "_target_": "tests.user_blocks.Flexible",
        "_convert_": mode,
        "width": 2,
        "table": {"a": 1},
        "items": [1, 2],
        "child": {"_target_": "tests.user_blocks.Flexible", "width": 1, "items": [3]},
    }
    ours, theirs = mf.build(cfg), instantiate(cfg)
    types = lambda m: (type(m.options["table"]), type(m.options["items"]))  # noqa: E731
    assert types(ours) == types(theirs)
    inner = (
        type(ours.options["child"].options["items"]),
        type(theirs.options["child"].options["items"]),
    )
    assert inner[0] is inner[1]  # inherited by the child
    assert types(ours) == ((DictConfig, ListConfig) if mode.lower() == "none" else (dict, list))


def test_convert_default_differs_plain_containers_so_torch_list_arguments_work() -> None:
    cfg = OmegaConf.create({"_target_": "torch.nn.Unflatten", "dim": 1, "unflattened_size": [2, 3]})
    with pytest.raises(Exception, match="ListConfig"):
        instantiate(cfg)  # Hydra's default passes a ListConfig; Unflatten wants a tuple/list
    assert mf.build(cfg)(torch.rand(4, 6)).shape == (4, 2, 3)
    flexible = {"_target_": "tests.user_blocks.Flexible", "width": 2, "items": [1]}
    assert isinstance(instantiate(flexible).options["items"], ListConfig)
    assert isinstance(mf.build(flexible).options["items"], list)


def test_bad_convert_mode_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as e:
        mf.build({**lin(2, 2), "_convert_": "some"})
    assert e.value.paths == ["model._convert_"]


@dataclass
class LinearConf:
    _target_: str = LIN
    in_features: int = 4
    out_features: int = 2


@dataclass
class StackConf:
    _target_: str = "torch.nn.Sequential"
    _args_: list[Any] = field(
        default_factory=lambda: [LinearConf(), LinearConf(in_features=2, out_features=3)]
    )


@pytest.mark.parametrize(
    "cfg", [LinearConf(), LinearConf, StackConf()], ids=["instance", "class", "nested"]
)
def test_structured_config_as_root(cfg: Any) -> None:
    same(cfg, lambda: torch.rand(1, 4))


def test_structured_config_with_missing_field() -> None:
    @dataclass
    class Needs:
        _target_: str = LIN
        in_features: int = MISSING
        out_features: int = 2

    with pytest.raises(ConfigError) as e:
        mf.build(Needs())
    assert e.value.paths == ["model.in_features"]


@pytest.mark.parametrize(
    "cfg",
    [
        pytest.param({"_target_": nn.Linear, "in_features": 4, "out_features": 2}, id="class"),
        pytest.param(
            {"_target_": "torch.nn.Sequential", "_args_": [{"_target_": nn.ReLU}, lin(4, 2)]},
            id="class-nested",
        ),
        pytest.param(
            {"_target_": __import__("tests.user_blocks").user_blocks.make_mlp, "sizes": [4, 2]},
            id="function",
        ),
    ],
)
def test_class_and_function_objects_as_target(cfg: dict[str, Any]) -> None:
    model = same(cfg)
    assert isinstance(mf.config_of(model)["model"]["_target_"], str)  # stored by dotted name


def test_a_local_class_target_builds_but_does_not_save(tmp_path: Any) -> None:
    class Local(nn.Linear):
        pass

    cfg = {"_target_": Local, "in_features": 2, "out_features": 2}
    with pytest.raises(Exception, match="Error locating target"):
        instantiate(cfg)  # Hydra turns the class into its dotted name, which names nothing
    model = mf.build(cfg)  # modelfactory keeps the class itself
    assert type(model) is Local
    with pytest.raises(mf.CheckpointError, match=r"model\._target_"):
        mf.save(model, tmp_path)  # ... which a checkpoint cannot store


@pytest.mark.parametrize("where", ["args", "kwarg"])
def test_dictconfig_nodes_inside_plain_dicts(where: str) -> None:
    node = OmegaConf.create(lin(4, 3))
    if where == "args":
        cfg = {"_target_": "torch.nn.Sequential", "_args_": [node, relu()]}
    else:
        cfg = {"_target_": "modelfactory.blocks.Sequential", "layers": {"a": node}}
    same(cfg, lambda: torch.rand(1, 4))


def test_a_node_of_another_config_inside_a_dict_resolves_against_its_own_root() -> None:
    other = OmegaConf.create({"w": 6, "layer": lin(4, "${w}")})
    model = mf.build({"_target_": "torch.nn.Sequential", "_args_": [other.layer]})
    assert model[0].out_features == 6


def test_root_that_is_not_a_module_is_refused() -> None:
    partial = {**lin(4, 2), "_partial_": True}
    assert callable(instantiate(partial))
    with pytest.raises(BuildError, match=r"not an nn\.Module"):
        mf.build(partial)
    with pytest.raises(BuildError, match=r"returned a Tensor, not an nn\.Module"):
        mf.build({"_target_": "torch.zeros", "_args_": [2]})


def test_uncopyable_value_is_refused_with_its_path() -> None:
    def numbers():
        yield 1

    cfg = {"_target_": "modelfactory.blocks.Sequential", "layers": [lin(2, 2, bias=numbers())]}
    assert isinstance(instantiate(cfg), nn.Module)  # Hydra passes the generator through
    with pytest.raises(ConfigError) as e:
        mf.build(cfg)
    assert e.value.paths == ["model.layers.0.bias"]
    assert "cannot copy this generator" in str(e.value)
