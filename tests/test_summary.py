"""``mf.summary`` (``modelfactory/summary.py``): the table of a model's parameters, lazy ones
not yet materialized included (shared parameters: ``test_tie.py``)."""

from __future__ import annotations

import modelfactory as mf


def test_summary_of_an_unmaterialized_lazy_model(composed) -> None:
    model = mf.build(composed(["model=lazy_mlp", "input_shape=null"]))
    text = mf.summary(model)
    assert "0.weight  uninitialized" in text
    assert "total params: 0" in text and "uninitialized (lazy): 4" in text
