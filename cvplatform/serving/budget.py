"""Memory budgets of the inference service: what one request, and all requests together, may decode.

A few megabytes of body can ask for gigabytes of memory: a solid 4096x4096 PNG is ~60 KB on the
wire and ~200 MB while it is decoded, and a JSON array of empty objects costs ~25 times its
size once parsed. The server therefore charges every request *before* it decodes anything:

* the image headers are read first (:func:`cvplatform.serving.inputs.open_images`), and their
  pixels must stay within ``limits.max_request_pixels`` (413 above);
* the estimated peak bytes of decoding them (:func:`decode_cost_bytes`) and of parsing a JSON body
  (:func:`json_cost_bytes`) are taken from one :class:`MemoryBudget` of
  ``limits.max_inflight_decode_bytes`` shared by all requests in flight. A request that does not
  fit *now* gets 429 with ``Retry-After`` (nothing is queued); one that could never fit gets 413.

The charge is released when the request is answered, or when the shadow scoring that still holds
its decoded images ends. The estimates were measured as the high-water mark of the process RSS
while decoding each kind of image (see ``tests/unit/serving/test_budget.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from cvplatform.serving.models import ServingError

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.serving.inputs import OpenedImage

MIB = 1024 * 1024

# Peak bytes per source pixel while one image is decoded and converted to RGB (Pillow's buffer,
# the conversions, the RGB array), measured with VmHWM on 2048x2048 images: RGB/L/P ~11,
# CMYK ~15, WEBP ~20, RGBA/LA ~24, I;16 ~22, I ~28. Rounded up.
_PEAK_BYTES_PER_PIXEL = {"1": 12, "L": 12, "P": 12, "RGB": 12, "YCbCr": 12, "CMYK": 16, "LAB": 16, "HSV": 16}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_PEAK_ALPHA = 25
_PEAK_WEBP = 25
_PEAK_16BIT = 24
_PEAK_OTHER = 32
_KEPT_BYTES_PER_PIXEL = 3
"""The decoded HxWx3 uint8 array every image leaves behind until the request is answered."""
_TENSOR_BYTES_PER_VALUE = 4 + 4
"""float32 model input plus the resized uint8/float intermediate of preprocessing, per value."""

_JSON_BYTES_PER_TOKEN = 72
"""Upper bound of Python objects per JSON value (``{}`` is a 64-byte dict, a float 24 bytes + its slot)."""


def peak_bytes_per_pixel(image: OpenedImage) -> int:
    """Peak bytes per pixel of decoding ``image`` (from its header's mode and format).

    Example:
        >>> import io
        >>> from PIL import Image
        >>> from cvplatform.serving.inputs import open_image
        >>> from cvplatform.serving.schemas import LimitsConfig
        >>> buf = io.BytesIO(); Image.new("RGBA", (4, 4)).save(buf, "PNG")
        >>> peak_bytes_per_pixel(open_image(buf.getvalue(), LimitsConfig()))
        25
    """
    header = image.header
    mode = str(getattr(header, "mode", "") or "")
    if image.fmt == "WEBP":
        return _PEAK_WEBP
    if mode in _ALPHA_MODES or "transparency" in (getattr(header, "info", None) or {}):
        return _PEAK_ALPHA
    if mode.startswith("I;16"):
        return _PEAK_16BIT
    return _PEAK_BYTES_PER_PIXEL.get(mode, _PEAK_OTHER)


def decode_cost_bytes(images: Sequence[OpenedImage], input_size: tuple[int, int]) -> int:
    """Estimated peak bytes of decoding and preprocessing one request's images.

    The images are decoded one after the other and each leaves an RGB array behind; the model
    input is one float32 tensor. So: the kept arrays of all images, plus the transient peak of the
    largest decode, plus the model input.

    Example:
        >>> decode_cost_bytes([], (16, 16))
        0
    """
    if not images:
        return 0
    kept = sum(_KEPT_BYTES_PER_PIXEL * im.pixels for im in images)
    transient = max((peak_bytes_per_pixel(im) - _KEPT_BYTES_PER_PIXEL) * im.pixels for im in images)
    h, w = input_size
    tensor = len(images) * 3 * int(h) * int(w) * _TENSOR_BYTES_PER_VALUE
    return kept + transient + tensor


def json_cost_bytes(body: bytes) -> int:
    """Estimated peak bytes of ``json.loads(body)`` and of what the server builds from it.

    Every value costs at most ~72 bytes of Python objects and is preceded by a ``,``, ``[``, ``{``
    or ``:``; a string briefly costs about twice its length while it is decoded. Counting those
    bytes is a few C-speed scans.

    Example:
        >>> json_cost_bytes(b'{"instances": ["aGk="]}')
        285
    """
    tokens = body.count(b",") + body.count(b"[") + body.count(b"{") + body.count(b":")
    return 3 * len(body) + _JSON_BYTES_PER_TOKEN * tokens


class MemoryBudget:
    """Bytes that requests in flight may hold while decoding (``limits.max_inflight_decode_bytes``).

    Thread-safe; charges are taken on the event loop before decoding starts.

    Example:
        >>> b = MemoryBudget(100 * MIB)
        >>> hold = b.hold()
        >>> hold.take(60 * MIB, "request")
        >>> b.in_use == 60 * MIB
        True
        >>> hold.release(); b.in_use
        0
    """

    def __init__(self, max_bytes: int, *, on_change: Callable[[int], None] | None = None) -> None:
        self.max_bytes = int(max_bytes)
        self.in_use = 0
        self._lock = threading.Lock()
        self._on_change = on_change

    def hold(self) -> BudgetHold:
        """A new, empty charge for one request."""
        return BudgetHold(self)

    def _take(self, nbytes: int) -> bool:
        with self._lock:
            if self.in_use + nbytes > self.max_bytes:
                return False
            self.in_use += nbytes
            now = self.in_use
        self._changed(now)
        return True

    def _give_back(self, nbytes: int) -> None:
        with self._lock:
            self.in_use = max(0, self.in_use - nbytes)
            now = self.in_use
        self._changed(now)

    def _changed(self, now: int) -> None:
        if self._on_change is not None:
            self._on_change(now)


class BudgetHold:
    """What one request holds of a :class:`MemoryBudget`; :meth:`release` gives it all back (idempotent)."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.held = 0
        self._owners = 1

    def share(self) -> None:
        """One more owner (e.g. a shadow scoring that keeps the decoded images): each calls :meth:`release`."""
        self._owners += 1

    def take(self, nbytes: int, what: str) -> None:
        """Charge ``nbytes`` more to this request, before the work that needs them.

        Raises:
            ServingError: 413 ``request_too_large`` when this request alone would exceed the budget;
                429 ``server_busy`` when the budget is taken by other requests right now.
        """
        nbytes = int(nbytes)
        if nbytes <= 0:
            return
        limit = self.budget.max_bytes
        if self.held + nbytes > limit:
            raise ServingError(413, "request_too_large",
                               f"{what} needs ~{_mib(self.held + nbytes)} MiB of memory to decode, more than "
                               f"limits.max_inflight_decode_bytes = {_mib(limit)} MiB. Send fewer or smaller "
                               "images per request.")
        if not self.budget._take(nbytes):
            raise ServingError(429, "server_busy",
                               f"{what} needs ~{_mib(nbytes)} MiB of memory to decode and other requests hold "
                               f"the budget now (limits.max_inflight_decode_bytes = {_mib(limit)} MiB). "
                               "Retry after a second, or send smaller requests.")
        self.held += nbytes

    def release(self) -> None:
        """Give back everything this request holds, once its last owner releases it."""
        self._owners = max(0, self._owners - 1)
        if self._owners == 0 and self.held:
            n, self.held = self.held, 0
            self.budget._give_back(n)


def _mib(n: int) -> str:
    return f"{n / MIB:.0f}" if n >= 10 * MIB else f"{n / MIB:.1f}"


__all__ = ["BudgetHold", "MemoryBudget", "decode_cost_bytes", "json_cost_bytes", "peak_bytes_per_pixel"]
