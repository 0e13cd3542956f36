"""Unwrapping MONAI's transform errors down to the error worth reporting."""

from __future__ import annotations

import pytest
from monai.transforms import Compose, Lambda

from components.checks.errors import VolumeError, error_message, root_cause, volume_error_of
from components.data.loading import load_transforms


def _raise(exc: BaseException):
    def f(_):
        raise exc

    return f


def test_volume_error_is_found_through_nested_composes(tmp_path):
    missing = tmp_path / "missing.nii.gz"
    inner = Compose(load_transforms(("image",)))
    with pytest.raises(RuntimeError) as err:
        Compose([inner])({"image": str(missing)})
    found = volume_error_of(err.value)
    assert isinstance(found, VolumeError) and found.path == str(missing)
    assert root_cause(err.value) is found
    assert error_message(err.value) == f"{missing}: file does not exist"


def test_other_errors_are_unwrapped_to_the_first_non_wrapper():
    deliberate = ValueError("model.pt: not a readable checkpoint")
    try:
        try:
            raise OSError("zip error")
        except OSError as e:
            raise deliberate from e
    except ValueError:
        pass
    with pytest.raises(RuntimeError) as err:
        Compose([Compose([Lambda(_raise(deliberate))])])(0)
    assert root_cause(err.value) is deliberate  # the inner OSError is not reported: the ValueError says it
    assert error_message(err.value) == "ValueError: model.pt: not a readable checkpoint"
    plain = KeyError("x")
    assert root_cause(plain) is plain and volume_error_of(plain) is None


def test_volume_error_raised_while_handling_another_is_found():
    try:
        try:
            raise VolumeError("/d/a.nii.gz", "is empty")
        except VolumeError:
            raise RuntimeError("cleanup failed")  # noqa: B904 - implicit chaining (__context__) on purpose
    except RuntimeError as e:
        assert volume_error_of(e) is not None and volume_error_of(e).path == "/d/a.nii.gz"


def test_errors_survive_pickle_and_copy() -> None:
    """Worker processes send errors back pickled: each error class rebuilds from all its arguments (flake8-bugbear
    B042, the zoo's lint), with the same message and fields."""
    import copy
    import pickle

    from components.checks.errors import OptionError, VolumeError
    from components.network.release_checkpoint import ReleaseCheckpointError

    errors = [
        VolumeError("a.nii.gz", "not a volume"),
        OptionError("--spacing", "must be positive"),
        ReleaseCheckpointError("does not fit", missing=["a.weight"], mismatched=[("b", (1, 2), (2, 2))]),
    ]
    for err in errors:
        for back in (pickle.loads(pickle.dumps(err)), copy.copy(err)):
            assert type(back) is type(err) and str(back) == str(err) and vars(back) == vars(err)
