"""Label maps leave the MONAI Label app as uint8, the dtype ``metadata.json`` declares.

MONAI Label's writer saves a result as float32 unless the request names ``result_dtype``: four times
the bytes of the label map the bundle writes. :class:`LabelMapWriter` makes uint8 the default of an
infer task (a request may still ask for another dtype).
"""

from __future__ import annotations

from typing import Any


class LabelMapWriter:
    """Mixin for a MONAI Label ``BasicInferTask``: results written as uint8 unless the request says otherwise."""

    def writer(self, data: dict[str, Any], extension: Any = None, dtype: Any = None) -> Any:
        return super().writer(data, extension, dtype or data.get("result_dtype") or "uint8")  # type: ignore[misc]
