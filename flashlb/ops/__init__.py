"""flashlb's custom operators, ``torch.ops.flashlb.*``.

Importing this module loads the compiled extension (``flashlb._C``), which registers the
operator schemas and their C++ CPU kernels.
"""

from __future__ import annotations

import torch

try:
    from .. import _C  # noqa: F401  (registers torch.ops.flashlb.*)
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "flashlb's C++ extension (flashlb._C) is not built: run `bash build.sh` or "
        "`pip install --no-build-isolation -e .` in the flashlb checkout"
    ) from exc

__all__ = ["joint_search"]

joint_search = torch.ops.flashlb.joint_search
