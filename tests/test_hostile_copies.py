"""A ``config.yaml`` copy beside a checkpoint that is hostile or broken: always the documented
warning (the embedded config wins), never an error, never unbounded work."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import modelfactory as mf
from modelfactory import _bounded
from modelfactory.checkpoint import _config_copy

from .conftest import RELU, lin, seq

MARKER = "copy_marker"


def _text(text: str) -> Callable[[Path], None]:
    return lambda copy: copy.write_text(text)


def _billion_laughs(copy: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    copy.write_text("\n".join(lines) + "\n")


def _huge(copy: Path) -> None:
    with open(copy, "wb") as f:  # sparse: 8 GiB that take no disk space
        f.truncate(8 << 30)


def _just_over(copy: Path) -> None:
    copy.write_text("model: {}\n" + "#" * _config_copy.MAX_COPY_BYTES)


def _directory(copy: Path) -> None:
    copy.mkdir()
    (copy / "x").write_text("model: {}\n")


def _fifo(copy: Path) -> None:
    os.mkfifo(copy)  # opening it for reading would block until a writer comes


def _symlink_to_device(copy: Path) -> None:
    copy.symlink_to("/dev/zero")


def _dangling(copy: Path) -> None:
    copy.symlink_to(copy.parent / "nowhere.yaml")


def _cases(tmp: Path) -> dict[str, Callable[[Path], None]]:
    return {
        "python tag": _text(f"!!python/object/apply:os.system ['touch {tmp / MARKER}']\n"),
        "unknown tag": _text("model: !mytag {a: 1}\n"),
        "5000-digit int": _text(f"model: {'9' * 5000}\n"),
        "date": _text("model: 2024-01-01\n"),
        "malformed timestamp": _text("model: !!timestamp soon\n"),  # AttributeError inside
        "malformed bool": _text("model: !!bool maybe\n"),  # KeyError inside
        "billion laughs": _billion_laughs,
        "deep flow nesting": _text("[" * 100_000 + "]" * 100_000 + "\n"),
        "deep block nesting": _text("".join(f"{' ' * i}a:\n" for i in range(2000)) + "\n"),
        "not utf-8": lambda copy: copy.write_bytes(b"model: \xff\xfe\n"),
        "not yaml": _text("model: [unclosed\n"),
        "huge sparse file": _huge,
        "just over the cap": _just_over,
        "a directory": _directory,
        "a fifo": _fifo,
        "a symlink to /dev/zero": _symlink_to_device,
        "a dangling symlink": _dangling,
    }


@pytest.fixture
def saved_dir(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    model = mf.build({"model": seq(lin(4, 8), RELU, lin(8, 2)), "input_shape": [1, 4]})
    mf.save(model, tmp_path / "ckpt")
    return tmp_path / "ckpt", model


@pytest.mark.parametrize("case", sorted(_cases(Path("/x"))))
def test_a_broken_copy_is_the_documented_warning(
    case: str, saved_dir: tuple[Path, torch.nn.Module], tmp_path: Path
):
    directory, model = saved_dir
    copy = directory / "config.yaml"
    copy.unlink()
    _cases(tmp_path)[case](copy)
    for path in (directory, directory / "model.safetensors"):
        with pytest.warns(UserWarning) as record:
            back = mf.load(path)
        messages = [str(w.message) for w in record]
        expected = f"{copy} differs from the config embedded in {directory / 'model.safetensors'}"
        assert any(m.startswith(expected) and "using the embedded one" in m for m in messages)
        assert torch.equal(back[0].weight, model[0].weight)
    assert not (tmp_path / MARKER).exists()


def test_the_reason_is_named(saved_dir: tuple[Path, torch.nn.Module]):
    directory, _ = saved_dir
    copy = directory / "config.yaml"
    copy.unlink()
    _huge(copy)
    with pytest.warns(UserWarning, match=r"larger than 1,048,576 bytes, not read"):
        mf.load(directory)


def test_an_intact_copy_and_an_edited_but_equal_copy_give_no_warning(
    saved_dir: tuple[Path, torch.nn.Module],
):
    directory, _ = saved_dir
    copy = directory / "config.yaml"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        mf.load(directory)  # digest matches: not parsed
        copy.write_text(copy.read_text() + "\n# a comment added by a person\n")
        mf.load(directory)  # parsed, equal


def test_the_copy_is_never_read_beyond_the_cap(
    saved_dir: tuple[Path, torch.nn.Module], monkeypatch: pytest.MonkeyPatch
):
    directory, _ = saved_dir
    copy = directory / "config.yaml"
    copy.write_text(copy.read_text() + "#" * 100)  # no longer the saved digest
    asked: list[int] = []
    real_read = os.read
    monkeypatch.setattr(_bounded.os, "read", lambda fd, n: asked.append(n) or real_read(fd, n))
    mf.load(directory)
    assert asked and max(asked) <= _config_copy.MAX_COPY_BYTES + 1


def test_config_copy_disagreement_warns_and_embedded_wins(saved: Path) -> None:
    copy = saved.with_name("config.yaml")
    copy.write_text(copy.read_text().replace("out_features: 10", "out_features: 12"))
    with pytest.warns(UserWarning, match="config.yaml differs"):
        back = mf.load(saved.parent)
    assert back[2].out_features == 10
