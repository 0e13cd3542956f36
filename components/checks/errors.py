"""The one error type for unusable input files, and unwrapping of MONAI's transform errors.

MONAI's ``Compose`` / ``apply_transform`` re-raises any transform failure as
``RuntimeError("applying transform ...")`` chained (``raise ... from e``) to the original, once per
nesting level. :func:`root_cause` undoes that wrapping; :func:`volume_error_of` finds the
:class:`VolumeError` anywhere in a chain; :func:`error_message` is the one-line text to log.

Example::

    try:
        sample = Compose(load_transforms(("image",)))({"image": "missing.nii.gz"})
    except RuntimeError as e:
        print(error_message(e))     # "missing.nii.gz: file does not exist"
"""

from __future__ import annotations

import os
from collections.abc import Iterator

__all__ = [
    "InputError",
    "RunError",
    "VolumeError",
    "OptionError",
    "RunFailedError",
    "exception_chain",
    "volume_error_of",
    "root_cause",
    "error_message",
]


class InputError(ValueError):
    """Base of our bad-input errors (a file or an option the user can fix): one line, exit status 2."""


class RunError(Exception):
    """Base of our failed-run errors (the input was fine, the run was not): one line, exit status 1."""


class VolumeError(InputError):
    """A volume or datalist entry that cannot be used; ``str(err)`` is ``"<path>: <problem>"``."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"

    def __reduce__(self):  # pickle / copy rebuild it from both arguments (Exception's default passes only args)
        return type(self), (self.path, self.problem)


class OptionError(InputError):
    """A command-line or config option with an unusable value; ``str(err)`` is ``"<option>: <problem>"``."""

    def __init__(self, option: str, problem: str) -> None:
        self.option = option
        self.problem = problem
        super().__init__(f"{option}: {problem}")

    def __str__(self) -> str:
        return f"{self.option}: {self.problem}"

    def __reduce__(self):  # pickle / copy rebuild it from both arguments (Exception's default passes only args)
        return type(self), (self.option, self.problem)


class RunFailedError(RunError, RuntimeError):
    """A run that went to the end but some of its parts failed (listed in the message); exit status 1."""


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then its ``__cause__`` (or, failing that, ``__context__``), and so on; cycle-safe."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        yield e
        seen.add(id(e))
        e = e.__cause__ or e.__context__


def volume_error_of(exc: BaseException) -> VolumeError | None:
    """The first :class:`VolumeError` in the chain of ``exc`` (``None`` if there is none)."""
    return next((e for e in exception_chain(exc) if isinstance(e, VolumeError)), None)


def root_cause(exc: BaseException) -> BaseException:
    """The error worth reporting: the :class:`VolumeError` in the chain if any, else ``exc`` with
    MONAI's ``RuntimeError`` wrappers (a ``RuntimeError`` raised ``from`` another error) removed.

    Unwrapping stops at the first non-``RuntimeError``: an error raised ``from`` another one on
    purpose (``raise ReleaseCheckpointError(...) from e``) already says what went wrong.
    """
    found = volume_error_of(exc)
    if found is not None:
        return found
    e = exc
    while isinstance(e, RuntimeError) and e.__cause__ is not None:
        e = e.__cause__
    return e


def error_message(exc: BaseException) -> str:
    """One line for logs: ``"<path>: <problem>"`` for a :class:`VolumeError`, else ``"<Type>: <message>"``."""
    e = root_cause(exc)
    return str(e) if isinstance(e, VolumeError) else f"{type(e).__name__}: {e}"
