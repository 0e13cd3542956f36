"""``python -m components.run <command> ...``: MONAI's bundle commands with one error line per failure.

The same commands and options as ``python -m monai.bundle`` (``run``, ``verify_metadata``,
``ckpt_export`` ...), run under :func:`components.checks.cli.guarded`: a bad input prints
``error: <file or option>: <problem>`` and exits 2, a failed run exits 1, a success 0; ``--debug``
adds the traceback. ``python -m monai.bundle run`` keeps working with MONAI's own tracebacks.

Example (from inside a bundle folder)::

    python -m components.run run --config_file configs/train.json --lr -0.005
    # error: lr: must be a finite number > 0, got -0.005      (exit status 2)
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from components.checks.cli import guarded, pop_debug

COMMANDS = (
    "run",
    "run_workflow",
    "verify_metadata",
    "verify_net_in_out",
    "ckpt_export",
    "onnx_export",
    "trt_export",
    "init_bundle",
    "download",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one ``monai.bundle`` command line (``argv`` without the program name); the exit status."""
    args, debug = pop_debug(sys.argv[1:] if argv is None else argv)

    def _run() -> None:
        import fire
        from monai.bundle import scripts

        fire.Fire({name: getattr(scripts, name) for name in COMMANDS}, command=args, name="components.run")

    return guarded(_run, debug)


if __name__ == "__main__":
    raise SystemExit(main())
