"""One error line per failure: the wrapper every command of ours runs under.

:func:`guarded` runs a callable and turns an exception into one line on stderr and an exit status:

- ``error: <file or option>: <problem>``, exit **2**, for bad input: a :class:`VolumeError` (a file,
  with :class:`~components.checks.options.CheckpointError`), :class:`OptionError`, a corrupt mask set,
  a release checkpoint or network input we refuse;
- ``error: <what failed>``, exit **1**, for a run that failed: :class:`RunFailedError` (listing the
  failed parts), a non-finite loss, or a ``SystemExit`` with a message (maskgen's failed volumes);
- any other exception is not ours: its full traceback, exit 1.

MONAI wraps config errors (``Failed to evaluate ConfigExpression`` / ``Failed to instantiate
component``) as ``RuntimeError`` chained to the cause; the chain is searched for our error. With
``--debug`` the traceback is printed for our errors too.

Entry points: ``python -m components.run <monai.bundle command> ...`` (:mod:`components.run`) and
:func:`fire_main` for our fire CLIs.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from components.checks.errors import InputError, RunError, exception_chain

__all__ = ["classify", "guarded", "fire_main", "pop_debug"]


def classify(exc: BaseException) -> tuple[int, str] | None:
    """``(exit status, message)`` for our error anywhere in the chain of ``exc``, None if none is ours.

    Ours are the subclasses of :class:`InputError` (bad input, 2) and :class:`RunError` (failed run, 1),
    defined by each stage next to the code that raises them.
    """
    for e in exception_chain(exc):
        if isinstance(e, InputError):
            return 2, str(e)
        if isinstance(e, RunError):
            return 1, str(e)
    return None


def _print_error(message: str) -> None:
    first, *rest = message.splitlines() or [""]
    print(f"error: {first}", file=sys.stderr)
    for line in rest:
        print(line, file=sys.stderr)
    sys.stderr.flush()


def guarded(fn: Callable[[], Any], debug: bool = False) -> int:
    """Run ``fn()``; the exit status (0 if it returns) after printing any error as described above."""
    sys.stdout.flush()
    try:
        fn()
        return 0
    except KeyboardInterrupt:
        _print_error("interrupted")
        return 130
    except SystemExit as e:
        if isinstance(e.code, str):
            _print_error(e.code)
            return 1
        return int(e.code or 0)
    except BaseException as exc:  # noqa: BLE001, B036 - the top of the program: every error becomes an exit status
        found = classify(exc)
        if found is None or debug:
            traceback.print_exception(exc, file=sys.stderr)
        if found is None:
            return 1
        code, message = found
        _print_error(message)
        return code


def pop_debug(argv: Sequence[str]) -> tuple[list[str], bool]:
    """``argv`` without ``--debug`` / ``--debug=True``, and whether it was there."""
    rest = [a for a in argv if a not in ("--debug", "--debug=True", "--debug True")]
    return rest, len(rest) != len(argv)


def fire_main(component: Any, argv: Sequence[str] | None = None, **fire_kwargs: Any) -> None:
    """``fire.Fire(component)`` under :func:`guarded` (``--debug`` for tracebacks); exits with its status."""
    import fire

    args, debug = pop_debug(sys.argv[1:] if argv is None else argv)
    raise SystemExit(guarded(lambda: fire.Fire(component, command=args, **fire_kwargs), debug))
