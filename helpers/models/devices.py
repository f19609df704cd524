"""Where tensors live. The analyses compute on the device the model is on (a GPU, or several where the model is
split) and bring a tensor to the host only as a final result, through :func:`to_host`: the one place in
``helpers/analyses`` and ``helpers/models`` that calls ``.cpu()`` (``tests/test_devices.py`` holds them to
it). Weights never travel: a product with a weight is taken where the weight is.
"""

from __future__ import annotations

from torch import Tensor


def to_host(value: Tensor) -> Tensor:
    """A final result, detached and on the CPU (what results.json, figures and tables read)."""
    return value.detach().cpu()
