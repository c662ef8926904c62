"""Conversions: Hugging Face GPT-2 <-> model=gpt_small / gpt2, both ways, and what a
conversion checks and refuses (a user's own conversion file: ``test_convert_files.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

import modelfactory as mf
from modelfactory import convert
from modelfactory.configs import compose
from modelfactory.errors import CheckpointError, ConfigError

SMALL = {"vocab_size": 256, "n_positions": 64, "n_embd": 64, "n_layer": 2, "n_head": 4}
NO_DROPOUT = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
# GPT-2's <|endoftext|> is its last token id; the default (50256) is outside a 256-token vocab.
SMALL_IDS = {"bos_token_id": 255, "eos_token_id": 255}


@pytest.fixture(scope="module")
def hf_dir(transformers: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random tiny GPT2LMHeadModel, saved with save_pretrained (shared by the tests)."""
    config = transformers.GPT2Config(**SMALL, **NO_DROPOUT, **SMALL_IDS)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = randomize(transformers.GPT2LMHeadModel(config).eval(), seed=0)
    path = tmp_path_factory.mktemp("hf_gpt2")
    model.save_pretrained(path)
    return path


def randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random, LayerNorms near (1, 0): a swapped or dropped tensor shows.

    Default inits leave every LayerNorm at weight 1, bias 0 (and zero biases elsewhere), so
    a conversion that mixed up ``ln_1`` and ``ln_2`` would still give equal logits.
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for name, p in module.named_parameters(recurse=False):
                mean = 1.0 if isinstance(module, torch.nn.LayerNorm) and name == "weight" else 0.0
                p.normal_(mean, 0.1, generator=generator)
    return model


def hf_logits(transformers: Any, path: Path, ids: torch.Tensor) -> torch.Tensor:
    model, info = transformers.GPT2LMHeadModel.from_pretrained(
        path, output_loading_info=True, local_files_only=True
    )
    assert {k: v for k, v in info.items() if v} == {}  # no missing/unexpected/mismatched keys
    with torch.no_grad():
        return model.eval()(ids).logits


def mf_logits(model: torch.nn.Module, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids)


def token_ids() -> torch.Tensor:
    return torch.randint(0, 256, (2, 64), generator=torch.Generator().manual_seed(3))


def test_hf_to_modelfactory(transformers: Any, hf_dir: Path) -> None:
    model = mf.build(compose(["model=gpt_small"]))
    converted = convert.import_state(convert.read_foreign_dir(hf_dir), "hf_gpt2", model=model)
    convert.check_config(hf_dir, model, "hf_gpt2")
    model.load_state_dict(converted, strict=True)
    assert model.head.weight is model.embed.tok.weight
    ids = token_ids()
    want, got = hf_logits(transformers, hf_dir, ids), mf_logits(model, ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_modelfactory_to_hf(transformers: Any, tmp_path: Path) -> None:
    model = randomize(mf.build(compose(["model=gpt_small"])), seed=1)
    assert convert.export_dir(model, tmp_path / "out", "hf_gpt2") == tmp_path / "out"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    ids = token_ids()
    want, got = mf_logits(model, ids), hf_logits(transformers, tmp_path / "out", ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_export_then_import_is_the_identity(tmp_path: Path) -> None:
    model = mf.build(compose(["model=gpt_small", "init=xavier", "seed=2"]))
    convert.export_dir(model, tmp_path, "hf_gpt2")
    back = convert.import_state(convert.read_foreign_dir(tmp_path), "hf_gpt2", model=model)
    state = model.state_dict()
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["n_head"] == 4 and config["n_layer"] == 2 and config["n_inner"] == 256


def test_original_hub_layout_imports(hf_dir: Path) -> None:
    """No ``transformer.`` prefix, causal-mask buffers and an explicit lm_head (older files)."""
    tensors = convert.read_foreign_dir(hf_dir)
    old = {k.removeprefix("transformer."): v for k, v in tensors.items()}
    old["lm_head.weight"] = tensors["transformer.wte.weight"].clone()
    for i in range(2):
        old[f"h.{i}.attn.bias"] = torch.ones(1, 1, 64, 64).tril()
        old[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
    new = convert.import_state(tensors, "hf_gpt2")
    got = convert.import_state(old, "hf_gpt2")
    assert got.keys() == new.keys()
    assert all(torch.equal(got[k], new[k]) for k in new)
    assert got["head.weight"] is got["embed.tok.weight"]


def test_sharded_directory(hf_dir: Path, tmp_path: Path) -> None:
    tensors = convert.read_foreign_dir(hf_dir)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:10]}
    shards["model-00002-of-00002.safetensors"] = names[10:]
    for file, part in shards.items():
        save_file({k: tensors[k] for k in part}, tmp_path / file)
    weight_map = {k: file for file, part in shards.items() for k in part}
    (tmp_path / convert.INDEX).write_text(json.dumps({"weight_map": weight_map}))
    got = convert.read_foreign_dir(tmp_path)
    assert got.keys() == tensors.keys() and all(torch.equal(got[k], tensors[k]) for k in got)
    weight_map[names[0]] = "model-00002-of-00002.safetensors"
    (tmp_path / convert.INDEX).write_text(json.dumps({"weight_map": weight_map}))
    with pytest.raises(CheckpointError, match="shards do not match the index"):
        convert.read_foreign_dir(tmp_path)


def test_another_tools_index_has_the_native_size_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read as a checkpoint's index is (``checkpoint._shards.weight_map``): capped, and a
    shard name that is not a plain file name beside it is refused."""
    from modelfactory.checkpoint import _shards

    index = tmp_path / convert.INDEX
    index.write_text(json.dumps({"weight_map": {"w": "a.safetensors"}, "pad": "x" * 200}))
    monkeypatch.setattr(_shards, "INDEX_MAX", 100)
    with pytest.raises(CheckpointError, match=r"index\.json: is over 100 bytes: not an index"):
        convert.read_foreign_dir(tmp_path)
    monkeypatch.undo()
    index.write_text(json.dumps({"weight_map": {"w": "../a.safetensors"}}))
    with pytest.raises(CheckpointError, match=r'index\.json: shard "\.\./a\.safetensors" is not'):
        convert.read_foreign_dir(tmp_path)


def test_full_gpt2_shapes_on_meta(transformers: Any) -> None:
    """The shipped conversion fits the 124M model=gpt2 both ways, without allocating it."""
    model = mf.build(compose(["model=gpt2", "device=cpu", "device.device=meta"]))
    with torch.device("meta"):
        hf = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    hf_state = hf.state_dict()
    convert.import_state(hf_state, "hf_gpt2", model=model)  # raises on any mismatch
    exported = convert.export_state(model.state_dict(), "hf_gpt2")
    want = {k: v.shape for k, v in hf_state.items() if k != "lm_head.weight"}
    assert {k: v.shape for k, v in exported.items()} == want
    config = convert.foreign_config(model, "hf_gpt2")
    reference = transformers.GPT2Config().to_dict()
    reference["n_inner"] = 4 * reference["n_embd"]  # what its None means
    for key, value in config.items():
        if key not in {"architectures", "dtype", *NO_DROPOUT}:  # HF's default dropout is 0.1
            assert reference[key] == value, key


# -- the public API: mf.load_weights(convert=) and mf.save(convert=) ------------------------


def hf_model(transformers: Any, path: Path, ids: torch.Tensor) -> tuple[Any, torch.Tensor]:
    model = transformers.GPT2LMHeadModel.from_pretrained(path, local_files_only=True).eval()
    with torch.no_grad():
        return model, model(ids).logits


def test_hf_round_trip_through_load_weights_and_save(
    transformers: Any, hf_dir: Path, tmp_path: Path
) -> None:
    """HF -> mf.load_weights(convert=) -> mf.save(convert=) -> HF: the same logits."""
    ids = token_ids()
    _, want = hf_model(transformers, hf_dir, ids)
    model = mf.build(compose(["model=gpt_small"]))
    assert mf.load_weights(model, hf_dir, convert="hf_gpt2") is model
    assert model.head.weight is model.embed.tok.weight
    torch.testing.assert_close(mf_logits(model, ids), want, atol=1e-5, rtol=0)
    file = mf.save(model, tmp_path / "out", convert="hf_gpt2")
    assert file == tmp_path / "out" / "model.safetensors"
    back, got = hf_model(transformers, tmp_path / "out", ids)
    assert back.lm_head.weight is back.transformer.wte.weight
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_mf_round_trip_through_save_and_load_weights(transformers: Any, tmp_path: Path) -> None:
    """mf -> mf.save(convert=) -> HF (save_pretrained again) -> mf.load_weights: same values."""
    model = randomize(mf.build(compose(["model=gpt_small"])), seed=4)
    ids = token_ids()
    want = mf_logits(model, ids)
    mf.save(model, tmp_path / "out", convert="hf_gpt2")
    hf, got = hf_model(transformers, tmp_path / "out", ids)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    hf.save_pretrained(tmp_path / "again", max_shard_size="100KB")  # sharded, with an index
    assert (tmp_path / "again" / convert.INDEX).is_file()
    fresh = mf.build(compose(["model=gpt_small", "seed=9"]))
    mf.load_weights(fresh, tmp_path / "again", convert="hf_gpt2")
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in model.state_dict().items())
    torch.testing.assert_close(mf_logits(fresh, ids), want, atol=1e-5, rtol=0)


def test_load_weights_convert_keeps_dtype_and_ties(hf_dir: Path) -> None:
    model = mf.build(compose(["model=gpt_small", "device.dtype=bfloat16"]))
    mf.load_weights(model, hf_dir, convert="hf_gpt2")
    wte = convert.read_foreign_dir(hf_dir)["transformer.wte.weight"]
    assert model.embed.tok.weight.dtype == torch.bfloat16
    assert torch.equal(model.embed.tok.weight, wte.to(torch.bfloat16))
    assert model.head.weight is model.embed.tok.weight


def test_load_weights_convert_lists_every_tensor_that_does_not_fit(hf_dir: Path) -> None:
    model = mf.build(compose(["model=gpt_small", "n_layer=3", "max_len=32"]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        mf.load_weights(model, hf_dir, convert="hf_gpt2")
    lines = str(info.value).splitlines()
    assert str(hf_dir) in lines[0] and "'hf_gpt2'" in lines[0]
    missing = [line for line in lines[1:] if line.startswith("  missing: 'blocks.2.")]
    assert len(missing) == 12  # every tensor of the third block
    assert "  shape: 'embed.pos.weight' is [64, 64] in the file, [32, 64] in the model" in lines
    assert len(lines) == 1 + 12 + 1
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


def test_load_weights_convert_checks_the_config_file(hf_dir: Path, tmp_path: Path) -> None:
    for file in hf_dir.iterdir():
        (tmp_path / file.name).write_bytes(file.read_bytes())
    config = json.loads((hf_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_head": 8}))
    model = mf.build(compose(["model=gpt_small"]))
    with pytest.raises(CheckpointError, match=r"n_head: 8 in the file, 4 for the model"):
        mf.load_weights(model, tmp_path, convert="hf_gpt2")
    mf.load_weights(model, tmp_path, convert="hf_gpt2", strict=False)  # loads what fits


def test_convert_refuses_what_it_cannot_honour(hf_dir: Path, tmp_path: Path) -> None:
    model = mf.build(compose(["model=gpt_small"]))
    with pytest.raises(CheckpointError, match=r"pass that submodule"):
        mf.load_weights(model, hf_dir, prefix_map={"": "x."}, convert="hf_gpt2")
    with pytest.raises(CheckpointError, match=r"does not take cfg"):
        mf.save(model, tmp_path / "a", cfg=mf.config_of(model), convert="hf_gpt2")
    with pytest.raises(CheckpointError, match=r"writes a directory"):
        mf.save(model, tmp_path / "b.safetensors", convert="hf_gpt2")
    with pytest.raises(ConfigError, match=r"unknown conversion 'hf_gtp2'"):
        mf.save(model, tmp_path / "c", convert="hf_gtp2")
    with pytest.raises(CheckpointError, match=r"max_shard_size is for modelfactory checkpoints"):
        mf.save(model, tmp_path / "d", max_shard_size="10KB", convert="hf_gpt2")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing written


# -- errors --------------------------------------------------------------------------------


def test_unknown_and_misshaped_tensors_are_one_error(hf_dir: Path) -> None:
    tensors = dict(convert.read_foreign_dir(hf_dir))
    tensors["transformer.h.0.attn.rotary.weight"] = torch.zeros(3)
    tensors["transformer.wpe.weight"] = torch.zeros(32, 64)
    model = mf.build(compose(["model=gpt_small"]))
    with pytest.raises(CheckpointError) as info:
        convert.import_state(tensors, "hf_gpt2", model=model, source=hf_dir)
    lines = str(info.value).splitlines()
    assert str(hf_dir) in lines[0]
    assert lines[1:] == [
        "  unexpected: 'transformer.h.0.attn.rotary.weight' [3] matches no rule of 'hf_gpt2'",
        "  shape: 'embed.pos.weight' is [32, 64] in the file, [64, 64] in the model",
    ]


def test_check_against_lists_missing_and_unexpected() -> None:
    model = mf.build(compose(["model=gpt_small"]))
    state = dict(model.state_dict())
    del state["ln_f.bias"]
    state["ln_g.bias"] = torch.zeros(64)
    state["blocks.1.mlp.body.fc.weight"] = torch.zeros(256, 32)
    with pytest.raises(CheckpointError) as info:
        convert.check_against(state, model)
    assert str(info.value).splitlines()[1:] == [
        "  missing: 'ln_f.bias' [64] (the model has it, the converted tensors lack it)",
        "  unexpected: 'ln_g.bias' [64] (converted, not in the model)",
        "  shape: 'blocks.1.mlp.body.fc.weight' is [256, 32] in the file, [256, 64] in the model",
    ]


def test_duplicates_and_broken_ties_are_listed(hf_dir: Path) -> None:
    tensors = dict(convert.read_foreign_dir(hf_dir))
    tensors["wte.weight"] = tensors["transformer.wte.weight"]  # both spellings of one name
    tensors["lm_head.weight"] = torch.zeros(256, 64)  # a head that is not the embedding
    with pytest.raises(CheckpointError) as info:
        convert.import_state(tensors, "hf_gpt2")
    problems = str(info.value).splitlines()[1:]
    assert problems[0].startswith("  duplicate: 'transformer.wte.weight' and 'wte.weight'")
    assert problems[-1].startswith("  tie: 'lm_head.weight' [256, 64] differs from")
    assert len(problems) == 2


def test_export_needs_the_tie(tmp_path: Path) -> None:
    model = mf.build(compose(["model=gpt_small", "tie=none"]))
    with pytest.raises(
        CheckpointError, match=r"'head\.weight' is not tied to 'embed\.tok\.weight'"
    ):
        convert.export_dir(model, tmp_path / "out", "hf_gpt2")
    assert not (tmp_path / "out").exists()  # nothing written


def test_check_config_catches_what_shapes_cannot(hf_dir: Path, tmp_path: Path) -> None:
    config = json.loads((hf_dir / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_head": 8}))
    model = mf.build(compose(["model=gpt_small"]))
    with pytest.raises(CheckpointError, match=r"n_head: 8 in the file, 4 for the model"):
        convert.check_config(tmp_path, model, "hf_gpt2")


def test_no_weights_in_directory(tmp_path: Path) -> None:
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match=r"pickled pytorch_model\.bin files are not read"):
        convert.read_foreign_dir(tmp_path)
