"""The one image decoder: encoded file (bytes or path) -> HxWx3 ``uint8`` RGB array.

Training (:class:`cvplatform.data.datamodule.ManifestDataset`), evaluation
(:mod:`cvplatform.evaluation.run`), serving (:mod:`cvplatform.serving.inputs`), traffic replay
and the monitoring statistics all decode through this module, so a model sees the same pixels
when it is trained, gated and served (no train/serve skew from two decoders). The rules are
those ingest stores images with (:func:`cvplatform.data.ingest.normalise_image`):

* the file is read with Pillow; its **header is read once** (:func:`read_header`: format and
  size, nothing decoded) so a caller can check pixel budgets *before* any pixel is decoded
  (decompression-bomb guard; Pillow's own bomb warning is an error here);
* :meth:`ImageHeader.decode` verifies the file on that header object (truncated or corrupt files
  are refused), decodes it fully, applies the **EXIF orientation** and converts it with
  :func:`cvplatform.data.ingest.to_rgb_array`: transparency composited on white, 16-bit greyscale
  scaled to 8 bits, palette / CMYK / greyscale to RGB.

Failures raise :class:`ImageDecodeError` with a short ``reason`` code; each caller maps it to
its own error (a 4xx ``ServingError`` in the server, ``DataError`` in training and evaluation).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

#: ``ImageDecodeError.reason`` values.
REASONS: tuple[str, ...] = ("empty", "unrecognised", "too_large", "corrupt", "unsupported_mode", "unreadable")


class ImageDecodeError(ValueError):
    """An image that cannot be decoded; ``reason`` is one of :data:`REASONS`, ``detail`` says why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@contextlib.contextmanager
def _bomb_guard() -> Iterator[None]:
    """Make Pillow's DecompressionBombWarning an error (its DecompressionBombError already is)."""
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield


class ImageHeader:
    """An encoded image whose header (format, size) has been read; :meth:`decode` reads the pixels.

    Example:
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.new("RGB", (4, 3), (255, 0, 0)).save(buf, "PNG")
        >>> h = read_header(buf.getvalue())
        >>> (h.format, h.size, h.pixels, h.decode().shape)
        ('PNG', (4, 3), 12, (3, 4, 3))
    """

    __slots__ = ("_header", "data", "format", "where")

    def __init__(self, data: bytes, header: Any, where: str) -> None:
        self.data = data
        self._header = header
        self.format: str = header.format or "unknown"
        self.where = where

    @classmethod
    def of(cls, header: ImageHeader) -> Any:
        """The same opened header as an instance of ``cls`` (a subclass adding its own error mapping)."""
        return cls(header.data, header._header, header.where)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` as stored (before EXIF orientation)."""
        w, h = self._header.size
        return int(w), int(h)

    @property
    def pixels(self) -> int:
        w, h = self.size
        return w * h

    @property
    def mode(self) -> str:
        return str(self._header.mode)

    @property
    def has_transparency(self) -> bool:
        """Whether the header declares a transparency key (palette/greyscale ``tRNS``)."""
        return "transparency" in (getattr(self._header, "info", None) or {})

    def decode(self) -> np.ndarray:
        """Verify and decode the file into an HxWx3 uint8 RGB array, or raise :class:`ImageDecodeError`.

        ``verify()`` runs on the header object read by :func:`read_header`; Pillow cannot decode an
        image object after verifying it, so the pixels are read from a second ``Image.open`` of the
        same bytes.
        """
        from PIL import Image, ImageOps

        from cvplatform.data.ingest import Rejected, to_rgb_array  # the ingest normalisation rules

        fmt = self.format
        with _bomb_guard():
            try:
                self._header.verify()
                img = Image.open(io.BytesIO(self.data))
                img.load()
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
                raise ImageDecodeError("too_large", str(exc)) from None
            except Exception as exc:
                raise ImageDecodeError(
                    "corrupt", f"{fmt} file is truncated or corrupt ({type(exc).__name__}: {exc})") from None
        try:
            img = ImageOps.exif_transpose(img)
        except Exception as exc:
            raise ImageDecodeError("corrupt", f"invalid EXIF orientation ({exc})") from None
        try:
            return to_rgb_array(img)
        except Rejected as exc:
            raise ImageDecodeError("unsupported_mode", exc.detail) from None
        except Exception as exc:
            raise ImageDecodeError("unsupported_mode", f"cannot convert to RGB ({exc})") from None


def read_header(data: bytes, *, where: str = "image") -> ImageHeader:
    """Read an encoded image's header only (format, size); no pixel is decoded.

    Raises:
        ImageDecodeError: ``empty`` (zero bytes), ``unrecognised`` (not an image file), ``too_large``
            (beyond Pillow's decompression-bomb limit), ``corrupt`` (unreadable header).

    Example:
        >>> read_header(b"")
        Traceback (most recent call last):
        ...
        cvplatform.imageio.ImageDecodeError: empty: zero bytes
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ImageDecodeError("empty", "zero bytes")
    with _bomb_guard():
        try:
            header = Image.open(io.BytesIO(data))  # header only
        except UnidentifiedImageError:
            raise ImageDecodeError("unrecognised", f"not a recognised image file ({len(data)} bytes)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageDecodeError("too_large", str(exc)) from None
        except Exception as exc:
            raise ImageDecodeError("corrupt", f"unreadable image header ({type(exc).__name__}: {exc})") from None
    return ImageHeader(data, header, where)


def decode_bytes(data: bytes, *, max_pixels: int | None = None, where: str = "image") -> np.ndarray:
    """Decode an encoded image file's bytes to HxWx3 uint8 RGB (header checked against ``max_pixels`` first).

    Example:
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.new("LA", (2, 1), (0, 0)).save(buf, "PNG")
        >>> decode_bytes(buf.getvalue()).tolist()  # transparent -> white, as ingest stores it
        [[[255, 255, 255], [255, 255, 255]]]
    """
    header = read_header(data, where=where)
    if max_pixels is not None and header.pixels > max_pixels:
        w, h = header.size
        raise ImageDecodeError("too_large", f"{w}x{h} = {w * h} pixels exceeds {max_pixels}")
    return header.decode()


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an image file to HxWx3 uint8 RGB; ``unreadable`` :class:`ImageDecodeError` if it cannot be read.

    Example:
        >>> read_image("data/raw/0/00000.png").shape  # doctest: +SKIP
        (32, 32, 3)
    """
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ImageDecodeError("unreadable", f"{p}: file not found") from None
    except OSError as exc:
        raise ImageDecodeError("unreadable", f"{p}: {exc.strerror or exc}") from None
    return decode_bytes(data, where=str(p))


__all__ = ["REASONS", "ImageDecodeError", "ImageHeader", "decode_bytes", "read_header", "read_image"]
