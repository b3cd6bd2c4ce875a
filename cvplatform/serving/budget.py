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

The charge is released when the request is answered, or later, when the last user of its decoded
images is done with them (a shadow scoring, the drift-monitoring request log). The estimates were
measured as the high-water mark of the process RSS while decoding each kind of image (see
``tests/unit/serving/test_budget.py``). ``cvplatform serve`` also makes freed large buffers go back
to the OS at once (:func:`return_large_buffers_to_os`), so the RSS follows what the budget counts.
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
    mode = image.mode
    if image.format == "WEBP":
        return _PEAK_WEBP
    if mode in _ALPHA_MODES or image.has_transparency:
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
    bytes is one C-speed pass (deleting them; half the time of four ``bytes.count`` scans on a
    number-heavy OIP body).

    Example:
        >>> json_cost_bytes(b'{"instances": ["aGk="]}')
        285
    """
    tokens = len(body) - len(body.translate(None, b",[{:"))
    return 3 * len(body) + _JSON_BYTES_PER_TOKEN * tokens


class MemoryBudget:
    """Bytes that requests in flight may hold while decoding (``limits.max_inflight_decode_bytes``).

    Thread-safe: charges are taken on the event loop before decoding starts, and given back there
    or by the thread that last uses a request's images (the shadow scoring, the request log).

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

    def _changed(self, now: int) -> None:
        if self._on_change is not None:
            self._on_change(now)


class BudgetHold:
    """What one request holds of a :class:`MemoryBudget`.

    It is given back when its last owner calls :meth:`release`: the request handler, plus one
    owner per :meth:`share` (e.g. a shadow scoring or the request log that still keeps the images).
    """

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.held = 0
        self._owners = 1

    def take(self, nbytes: int, what: str) -> None:
        """Charge ``nbytes`` more to this request, before the work that needs them.

        Raises:
            ServingError: 413 ``request_too_large`` when this request alone would exceed the budget;
                429 ``server_busy`` when the budget is taken by other requests right now.
        """
        nbytes = int(nbytes)
        if nbytes <= 0:
            return
        b = self.budget
        if self.held + nbytes > b.max_bytes:
            raise ServingError(413, "request_too_large",
                               f"{what} needs ~{_mib(self.held + nbytes)} MiB of memory to decode, more than "
                               f"limits.max_inflight_decode_bytes = {_mib(b.max_bytes)} MiB. Send fewer or "
                               "smaller images per request.")
        with b._lock:
            fits = b.in_use + nbytes <= b.max_bytes
            if fits:
                b.in_use += nbytes
                self.held += nbytes
            now = b.in_use
        if not fits:
            raise ServingError(429, "server_busy",
                               f"{what} needs ~{_mib(nbytes)} MiB of memory to decode and other requests hold "
                               f"the budget now (limits.max_inflight_decode_bytes = {_mib(b.max_bytes)} MiB). "
                               "Retry after a second, or send smaller requests.")
        b._changed(now)

    def share(self) -> None:
        """One more owner (e.g. a shadow scoring that keeps the decoded images): each calls :meth:`release`."""
        with self.budget._lock:
            self._owners += 1

    def release(self) -> None:
        """Give back everything this request holds, once its last owner releases it (idempotent after that)."""
        b = self.budget
        with b._lock:
            self._owners = max(0, self._owners - 1)
            if self._owners or not self.held:
                return
            b.in_use = max(0, b.in_use - self.held)
            self.held = 0
            now = b.in_use
        b._changed(now)


M_MMAP_THRESHOLD = -3
"""glibc ``mallopt`` parameter: allocations at least this large get their own ``mmap``."""


def return_large_buffers_to_os(threshold: int = 8 * MIB) -> bool:
    """Make freed allocations of ``threshold`` bytes or more go back to the OS at once (glibc only).

    glibc raises its mmap threshold after large buffers are freed (up to 32 MiB), so Pillow's 16 MiB
    pixel blocks then come from per-thread heaps and stay resident after the request: decodes that
    take turns in different worker threads add up in RSS although the budget lets one at a time
    run. A fixed threshold keeps RSS close to the memory the budget accounts for. Allocations below
    it (small images, batch tensors of the hot path) still reuse the heap. Returns False where
    ``mallopt`` is not available (not glibc).

    Example:
        >>> return_large_buffers_to_os()  # doctest: +SKIP
        True
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, int(threshold)))
    except (OSError, AttributeError):
        return False


def _mib(n: int) -> str:
    return f"{n / MIB:.0f}" if n >= 10 * MIB else f"{n / MIB:.1f}"


__all__ = ["BudgetHold", "MemoryBudget", "decode_cost_bytes", "json_cost_bytes", "peak_bytes_per_pixel",
           "return_large_buffers_to_os"]
