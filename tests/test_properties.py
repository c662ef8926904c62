"""Property-based tests over generated architectures: build, forward, tie, save, load."""

from __future__ import annotations

import copy

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import modelfactory as mf
from modelfactory._config import normalize
from modelfactory._sample import sample_input

from .strategies import configs

PROFILE = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@st.composite
def tied_configs(draw: st.DrawFn) -> dict:
    """A generated config plus random ties between compatible modules or parameters."""
    cfg = draw(configs())
    plain = mf.build(copy.deepcopy(cfg))
    params = dict(plain.named_parameters(remove_duplicate=False))
    by_shape: dict[tuple, list[str]] = {}
    for name, p in params.items():
        by_shape.setdefault((tuple(p.shape), p.dtype), []).append(name)
    leaves = {
        n: m for n, m in plain.named_modules() if n and isinstance(m, (nn.Linear, nn.LayerNorm))
    }
    by_sig: dict[tuple, list[str]] = {}
    for name, m in leaves.items():
        sig = (type(m).__name__, tuple((k, tuple(v.shape)) for k, v in m.state_dict().items()))
        by_sig.setdefault(sig, []).append(name)
    pools = [v for v in list(by_shape.values()) + list(by_sig.values()) if len(v) >= 2]
    groups, used = [], set()
    for pool in draw(st.lists(st.sampled_from(pools), max_size=2)) if pools else []:
        members = [
            n
            for n in draw(st.permutations(pool))[:2]
            if not any(n == u or n.startswith(u + ".") or u.startswith(n + ".") for u in used)
        ]
        if len(members) == 2:
            groups.append(members)
            used.update(members)
    cfg["tie"]["groups"] = groups
    return cfg


def ties_hold(model: nn.Module, groups: list[list[str]]) -> bool:
    def get(n: str):
        try:
            return model.get_submodule(n)
        except AttributeError:
            return model.get_parameter(n)

    return all(get(a) is get(b) for a, b in groups)


@PROFILE
@given(cfg=tied_configs())
def test_generated_models_round_trip_bit_exactly(cfg, tmp_path_factory):
    snapshot = copy.deepcopy(cfg)
    a, b = mf.build(cfg), mf.build(cfg)
    assert cfg == snapshot
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not any(isinstance(p, nn.parameter.UninitializedParameter) for p in a.parameters())
    assert ties_hold(a, cfg["tie"]["groups"])
    x = sample_input(normalize(cfg), torch.device("cpu"))
    with torch.no_grad():
        ya = a(x)
        assert torch.equal(ya, b(x)) and ya.shape == x.shape

    path = tmp_path_factory.mktemp("ckpt")
    mf.save(a, path)
    back = mf.load(path)
    assert cfg == snapshot
    assert mf.config_of(back)["model"] == cfg["model"]
    sback = back.state_dict()
    assert list(sback) == list(sa)
    assert all(sback[k].dtype == sa[k].dtype and torch.equal(sback[k], sa[k]) for k in sa)
    assert ties_hold(back, cfg["tie"]["groups"])
    with torch.no_grad():
        assert torch.equal(back(x), ya)
