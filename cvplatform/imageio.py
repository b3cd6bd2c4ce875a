"""The one image decoder: encoded file (bytes or path) -> HxWx3 ``uint8`` RGB array.

Training (:class:`cvplatform.data.datamodule.ManifestDataset`), evaluation
(:mod:`cvplatform.evaluation.run`), serving (:mod:`cvplatform.serving.inputs`), traffic replay
and the monitoring statistics all decode through this module, so a model sees the same pixels
when it is trained, gated and served (no train/serve skew from two decoders). The rules are
those ingest stores images with (:func:`cvplatform.data.ingest.normalise_image`):

* the file is read with Pillow; its **header is read once** (:func:`read_header`: format and
  size, nothing decoded) so a caller can check pixel budgets *before* any pixel is decoded
  (decompression-bomb guard; Pillow's own bomb warning is an error here);
* :meth:`ImageHeader.decode` verifies the file (truncated or corrupt files are refused; PNG chunk
  CRCs as Pillow's ``verify()`` checks them), decodes **that same header object** fully (one parse,
  one decode), applies the **EXIF orientation** and converts it with
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

    The Pillow image opened for the header is the one decoded: the file is parsed once. Its format,
    size, mode and transparency are kept as plain attributes, and :meth:`decode` lets go of the
    Pillow image (and its pixel buffer) as soon as the RGB array is made, so a header kept until the
    request is answered holds no pixels.

    Example:
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.new("RGB", (4, 3), (255, 0, 0)).save(buf, "PNG")
        >>> h = read_header(buf.getvalue())
        >>> (h.format, h.size, h.pixels, h.decode().shape)
        ('PNG', (4, 3), 12, (3, 4, 3))
    """

    __slots__ = ("_image", "data", "format", "has_transparency", "mode", "size", "where")

    def __init__(self, data: bytes, image: Any, where: str) -> None:
        self.data = data
        self._image = image
        """The opened Pillow image (header read, no pixel decoded); None once :meth:`decode` took it."""
        self.format: str = image.format or "unknown"
        w, h = image.size
        self.size: tuple[int, int] = (int(w), int(h))
        """``(width, height)`` as stored (before EXIF orientation)."""
        self.mode: str = str(image.mode)
        self.has_transparency: bool = "transparency" in (getattr(image, "info", None) or {})
        """Whether the header declares a transparency key (palette/greyscale ``tRNS``)."""
        self.where = where

    @classmethod
    def of(cls, header: ImageHeader) -> Any:
        """The same opened header as an instance of ``cls`` (a subclass adding its own error mapping);
        the Pillow image moves to the new object."""
        out = cls.__new__(cls)
        for name in ImageHeader.__slots__:
            setattr(out, name, getattr(header, name))
        header._image = None
        return out

    @property
    def pixels(self) -> int:
        w, h = self.size
        return w * h

    def _opened(self) -> Any:
        """The opened Pillow image, handed over once (a second decode opens the bytes again)."""
        from PIL import Image

        img, self._image = self._image, None
        return img if img is not None else Image.open(io.BytesIO(self.data))

    def decode(self) -> np.ndarray:
        """Verify and decode the file into an HxWx3 uint8 RGB array, or raise :class:`ImageDecodeError`.

        The file is verified as Pillow's ``verify()`` does (PNG: every chunk's CRC from the image data
        to ``IEND``, by Pillow's own ``ChunkStream.verify`` on a separate stream; the other formats'
        ``verify()`` checks nothing), then the header's own image object is decoded: one parse of the
        header, one decode of the pixels.
        """
        from PIL import Image, ImageOps

        from cvplatform.data.ingest import Rejected, to_rgb_array  # the ingest normalisation rules

        fmt = self.format
        with _bomb_guard():
            try:
                img = self._opened()
                _verify(img, self.data)
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


def _verify(img: Any, data: bytes) -> None:
    """What Pillow's ``img.verify()`` checks, without consuming ``img`` (it can still be decoded).

    Only PNG's ``verify()`` checks anything (``PngImageFile.verify``: from the first image-data
    chunk, every chunk's CRC up to ``IEND``, a truncated file is an error); the base
    ``ImageFile.verify()`` of every other format only closes the file. The same Pillow check runs
    here on its own stream over ``data``.
    """
    from PIL import PngImagePlugin

    if not isinstance(img, PngImagePlugin.PngImageFile):
        return
    fp = io.BytesIO(data)
    fp.seek(img.tile[0][2] - 8)  # back up to the beginning of the first IDAT chunk, as verify() does
    stream = PngImagePlugin.ChunkStream(fp)
    stream.verify()
    stream.close()


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
