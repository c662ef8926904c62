"""The error hierarchy (modelfactory/errors.py): every error travels through pickle whole,
as a sweep job's error does from a launcher's process."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import pytest

import modelfactory.errors as errors
from modelfactory.errors import (
    ArgumentError,
    BuildError,
    CheckpointError,
    ConfigError,
    DeviceError,
    ModelFactoryError,
    TieError,
    UntrustedTargetError,
)

SAMPLES: dict[type, Callable[[], ModelFactoryError]] = {
    ModelFactoryError: lambda: ModelFactoryError("plain"),
    ConfigError: lambda: ConfigError([("model.layers.0", "bad"), ("seed", "worse")]),
    TieError: lambda: TieError([("tie.groups.0", "no such path")], header="Cannot tie:"),
    DeviceError: lambda: DeviceError([("device.device", "no cuda:3 here")]),
    BuildError: lambda: BuildError("model.layers.1", "dry run failed"),
    ArgumentError: lambda: ArgumentError("model", "n must be positive"),
    CheckpointError: lambda: CheckpointError("/tmp/x.safetensors", "corrupt"),
    UntrustedTargetError: lambda: UntrustedTargetError("/tmp/x", "names 'os.system'."),
}


def _all_subclasses(cls: type) -> set[type]:
    out = {cls}
    for sub in cls.__subclasses__():
        out |= _all_subclasses(sub)
    return out


def test_every_error_keeps_its_type_message_and_fields_through_pickle() -> None:
    assert _all_subclasses(ModelFactoryError) == set(SAMPLES), "add a sample for each new error"
    for cls, make in SAMPLES.items():
        error = make()
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is cls
        assert str(back) == str(error) and back.args == error.args
        assert vars(back) == vars(error)  # problems, paths, file, reason, ...
        assert isinstance(back, ModelFactoryError)
    assert pickle.loads(pickle.dumps(SAMPLES[ConfigError]())).paths == ["model.layers.0", "seed"]


def test_the_trust_error_names_its_fix_apart() -> None:
    e = UntrustedTargetError("/tmp/x", "names 'os.system'.")
    assert str(e) == f"/tmp/x: names 'os.system'. {errors.UntrustedTargetError.FIX}"
    assert e.reason == "names 'os.system'." and "trusted=['mypkg.*']" in e.fix


def _fail(cls_name: str) -> None:
    """A job that fails (run in a joblib worker: imported there by name)."""
    raise SAMPLES[getattr(errors, cls_name)]()


def test_a_job_failing_in_a_joblib_worker_ends_in_its_own_error() -> None:
    """As under Hydra's joblib launcher: the worker's error is pickled back to the parent,
    which raised BrokenProcessPool when the error did not unpickle."""
    joblib = pytest.importorskip("joblib")
    for name in ("ConfigError", "CheckpointError", "UntrustedTargetError"):
        with pytest.raises(getattr(errors, name)) as e:
            joblib.Parallel(n_jobs=2, backend="loky")(
                joblib.delayed(_fail)(n) for n in (name, name)
            )
        assert str(e.value) == str(SAMPLES[getattr(errors, name)]())
