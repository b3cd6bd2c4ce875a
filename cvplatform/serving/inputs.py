"""Request bodies to images and tensors, with every failure a 4xx :class:`ServingError`.

Images are decoded by :mod:`cvplatform.imageio`, the decoder training and evaluation use, under
the same rules as ingest (:mod:`cvplatform.data.ingest`): the size is read from the header and checked
against ``limits.max_pixels`` *before* any pixel is decoded (decompression-bomb
guard), the file is verified and fully decoded (truncated files are refused),
EXIF orientation is applied, transparency is composited on white and 16-bit
images are scaled to 8 bits. The result is the HxWx3 uint8 RGB array that
:func:`cvplatform.preprocess.preprocess` expects.

Open Inference Protocol v2 inputs (see :mod:`cvplatform.serving.app`):

* ``FP32`` tensors of shape ``[N, 3, H, W]``, already preprocessed with the
  model's contract (JSON ``data`` flat or nested, row-major; or raw little-endian
  float32 with the binary tensor extension);
* ``BYTES`` tensors of shape ``[N]`` (or ``[N, 1]``) holding encoded image files:
  each element a **base64 string** in JSON, or the **raw file bytes** with the
  binary tensor extension (``Inference-Header-Content-Length`` header; each
  element prefixed with its 4-byte little-endian length, as Triton/KServe do).
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from cvplatform.imageio import ImageDecodeError, ImageHeader, read_header
from cvplatform.serving.models import ServingError
from cvplatform.serving.schemas import LimitsConfig

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np


# --------------------------------------------------------------------------- images
# ImageDecodeError.reason -> (HTTP status, error code) of the server's answer.
_DECODE_ERRORS = {
    "empty": (400, "empty_image"),
    "unrecognised": (400, "invalid_image"),
    "corrupt": (400, "invalid_image"),
    "too_large": (413, "image_too_large"),
    "unsupported_mode": (415, "unsupported_image_mode"),
}


def _serving_error(exc: ImageDecodeError, where: str) -> ServingError:
    status, code = _DECODE_ERRORS.get(exc.reason, (400, "invalid_image"))
    detail = exc.detail
    if exc.reason == "empty":
        detail = "zero bytes. Send the encoded image file (PNG, JPEG, ...)"
    return ServingError(status, code, f"{where}: {detail}" + ("" if detail.endswith(".") else "."))


class OpenedImage(ImageHeader):
    """An image file whose header passed the limits; :meth:`decode` reads the pixels.

    Opening reads only the header (format, size), so a request's pixel count is known before any
    pixel is decoded: the server decodes small requests on the event loop and large ones in a
    worker thread (``batching.inline_decode_max_pixels``). Decoding is the shared
    :meth:`cvplatform.imageio.ImageHeader.decode` (the decoder training and evaluation use).
    """

    __slots__ = ()

    @property
    def fmt(self) -> str:
        return self.format

    def decode(self) -> np.ndarray:
        """Verify and decode the file into an HxWx3 uint8 RGB array, or raise a 4xx ServingError."""
        try:
            return super().decode()
        except ImageDecodeError as exc:
            raise _serving_error(exc, self.where) from None


def open_image(data: bytes, limits: LimitsConfig, *, where: str = "image") -> OpenedImage:
    """Read an image file's header and check it against ``limits`` (no pixel is decoded yet).

    Errors: ``empty_image`` (400), ``invalid_image`` (400: not an image), ``unsupported_image_format``
    (415), ``image_too_large`` (413), ``image_too_small`` (400).

    Example:
        >>> import io
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.new("RGB", (4, 3), (255, 0, 0)).save(buf, "PNG")
        >>> open_image(buf.getvalue(), LimitsConfig()).pixels
        12
    """
    try:
        header = read_header(data, where=where)
    except ImageDecodeError as exc:
        raise _serving_error(exc, where) from None
    image: OpenedImage = OpenedImage.of(header)
    fmt = image.format
    if fmt not in limits.formats:
        raise ServingError(415, "unsupported_image_format",
                           f"{where}: format {fmt} is not accepted; send one of {', '.join(limits.formats)}.")
    w, h = image.size
    if w * h > limits.max_pixels:
        raise ServingError(413, "image_too_large",
                           f"{where}: {w}x{h} = {w * h} pixels exceeds limits.max_pixels = {limits.max_pixels}.")
    if min(w, h) < limits.min_side:
        raise ServingError(400, "image_too_small",
                           f"{where}: {w}x{h} has a side below limits.min_side = {limits.min_side}.")
    return image


def open_images(blobs: Sequence[bytes], limits: LimitsConfig) -> list[OpenedImage]:
    """:func:`open_image` for every image of a request (the first failure names the image index).

    Also checks the request's total pixels against ``limits.max_request_pixels`` (413
    ``too_many_pixels``), from the headers, before any pixel is decoded.
    """
    if len(blobs) > limits.max_images:
        raise ServingError(413, "too_many_images",
                           f"{len(blobs)} images in one request; limits.max_images = {limits.max_images}.")
    opened = [open_image(b, limits, where=f"image {i}") for i, b in enumerate(blobs)]
    total = sum(im.pixels for im in opened)
    if total > limits.max_request_pixels:
        raise ServingError(413, "too_many_pixels",
                           f"the {len(opened)} image(s) of this request have {total} pixels in all; "
                           f"limits.max_request_pixels = {limits.max_request_pixels}. Send fewer or smaller "
                           "images per request.")
    return opened


def decode_image(data: bytes, limits: LimitsConfig, *, where: str = "image") -> np.ndarray:
    """Decode one encoded image file into an HxWx3 uint8 RGB array, or raise a 4xx ServingError.

    Errors: ``empty_image`` (400), ``invalid_image`` (400: not an image, truncated, corrupt),
    ``unsupported_image_format`` (415), ``image_too_large`` (413), ``image_too_small`` (400),
    ``unsupported_image_mode`` (415).

    Example:
        >>> import io
        >>> from PIL import Image
        >>> buf = io.BytesIO(); Image.new("RGB", (4, 3), (255, 0, 0)).save(buf, "PNG")
        >>> decode_image(buf.getvalue(), LimitsConfig()).shape
        (3, 4, 3)
    """
    return open_image(data, limits, where=where).decode()


def decode_images(blobs: Sequence[bytes], limits: LimitsConfig) -> list[np.ndarray]:
    """Decode every image of a request (the first failure names the image index).

    Example:
        >>> decode_images([], LimitsConfig())
        []
    """
    return [im.decode() for im in open_images(blobs, limits)]


FILE_FIELDS: tuple[str, ...] = ("files", "file")
"""multipart/form-data field names that carry image files on ``/v1/predict``."""


def multipart_files(body: bytes, content_type: str, limits: LimitsConfig,
                    fields: dict[str, list[bytes]] | None = None) -> list[bytes]:
    r"""The image files of a ``multipart/form-data`` body (``files`` / ``file`` parts), in order.

    The body is already in memory (bounded by ``limits.max_body_bytes``): :func:`_multipart_parts`
    finds the delimiters with ``bytes.find`` and each file part is one slice of the body (no
    per-chunk copies, nothing spooled to a temporary file). It accepts and refuses what
    python-multipart's ``MultipartParser`` (used before, with the same header limits) does. Other
    fields are ignored (at most ``max_images + 16`` of them), except that the values of text fields
    named by a key of ``fields`` are appended to its list. A body that ends inside a part keeps
    the parts completed before it.

    Errors: ``invalid_multipart`` (400: no boundary, malformed body, a text field where a file is
    expected), ``no_images`` (400), ``too_many_images`` (413).

    Example:
        >>> body = (b'--b\r\nContent-Disposition: form-data; name="files"; filename="a.png"\r\n\r\n'
        ...         b'PNGDATA\r\n--b--\r\n')
        >>> multipart_files(body, "multipart/form-data; boundary=b", LimitsConfig())
        [b'PNGDATA']
    """
    from python_multipart.multipart import parse_options_header

    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise ServingError(400, "invalid_multipart", "multipart body: the Content-Type has no boundary.")
    if len(boundary) > _MAX_BOUNDARY:
        raise ServingError(400, "invalid_multipart", f"multipart body: the boundary has {len(boundary)} "
                                                     f"characters, at most {_MAX_BOUNDARY} are accepted.")
    files: list[bytes] = []
    others = 0
    is_file = False
    name = ""
    try:
        for disposition, start, end in _multipart_parts(body, boundary):
            if end >= 0:  # the part's data is complete
                if is_file:
                    files.append(body[start:end])
                elif fields is not None and name in fields:
                    fields[name].append(body[start:end])
                continue
            _, opts = parse_options_header(disposition)  # the part's headers are complete
            name = opts.get(b"name", b"").decode("utf-8", "replace")
            is_file = name in FILE_FIELDS
            if is_file:
                if b"filename" not in opts:
                    raise ServingError(400, "invalid_multipart",
                                       f"part {len(files)} of {name!r} is a text field, not a file upload.")
                if len(files) >= limits.max_images:
                    raise ServingError(413, "too_many_images",
                                       f"more than limits.max_images = {limits.max_images} files in one request.")
            else:
                others += 1
                if others > limits.max_images + 16:
                    raise ServingError(400, "invalid_multipart", "multipart body: too many fields.")
    except _MultipartError as exc:
        raise ServingError(400, "invalid_multipart", f"multipart body cannot be parsed ({exc}).") from None
    if not files:
        raise ServingError(400, "no_images", "multipart body has no 'files' part; send files=@image.png.")
    return files


_MAX_BOUNDARY = 256
_MAX_PART_HEADERS = 8
_MAX_HEADER_BYTES = 4224
"""python-multipart's limits: boundary length, headers per part, bytes per header line."""
_TOKEN = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~"


class _MultipartError(ValueError):
    """A malformed multipart body (the message says what and at which byte)."""


class _BodyEnds(Exception):
    """The body ends inside a part: parsing stops, the parts completed before it count."""


def _multipart_parts(body: bytes, boundary: bytes) -> Iterator[tuple[bytes, int, int]]:
    """Walk a multipart body: per part, ``(content-disposition, -1, -1)`` once its headers are read, then
    ``(b"", start, end)`` once its data ``body[start:end]`` is complete. Raises :class:`_MultipartError`."""
    delim = b"--" + boundary
    n = len(body)
    p = 0
    if n and body[0] in b"\r\n":  # leading newlines (and what follows them up to the first '-') are skipped
        p = body.find(b"-")
        if p < 0:
            return
    if not body.startswith(delim, p):
        if delim.startswith(body[p : p + len(delim)]):
            return  # the body ends inside the first delimiter
        raise _MultipartError(f"expected the boundary at byte {p}")
    p += len(delim)
    if body.startswith(b"--", p):
        return  # an empty message
    if body.startswith(b"\r\n", p):
        p += 2
    elif p + (body[p : p + 1] in (b"\r", b"-")) >= n:
        return
    else:
        raise _MultipartError(f"no CRLF after the boundary at byte {p}")
    sep = b"\r\n" + delim
    try:
        while True:
            disposition, start = _part_headers(body, p)
            yield disposition, -1, -1
            end, p = _part_end(body, start, sep)
            yield b"", start, end
            if p < 0:
                return
    except _BodyEnds:
        return


def _part_headers(body: bytes, h: int) -> tuple[bytes, int]:
    """A part's headers from byte ``h``: its Content-Disposition value and where its data starts."""
    n = len(body)
    disposition = b""
    count = 0
    while True:
        if body.startswith(b"\r\n", h):
            return disposition, h + 2
        if h >= n or (body[h] == 13 and h + 1 >= n):
            raise _BodyEnds
        if body[h] == 13:
            raise _MultipartError(f"no LF at the end of the part headers at byte {h + 1}")
        count += 1
        if count > _MAX_PART_HEADERS:
            raise _MultipartError(f"more than {_MAX_PART_HEADERS} headers in one part")
        colon = body.find(b":", h)
        end = colon if colon != -1 else n
        size = end - h + (colon != -1)
        if size > _MAX_HEADER_BYTES:
            raise _MultipartError(f"a part header is longer than {_MAX_HEADER_BYTES} bytes at byte {h}")
        name = body[h:end]
        if name.translate(None, _TOKEN):
            raise _MultipartError(f"invalid character in a part header name at byte {h}")
        if colon == -1:
            raise _BodyEnds
        if end == h:
            raise _MultipartError(f"empty part header name at byte {h}")
        v = colon + 1
        while v < n and body[v] == 32:
            v += 1
        cr = body.find(b"\r", v)
        size += (v - colon - 1) + ((cr if cr != -1 else n) - v)
        if size > _MAX_HEADER_BYTES:
            raise _MultipartError(f"a part header is longer than {_MAX_HEADER_BYTES} bytes at byte {h}")
        if cr == -1:
            raise _BodyEnds
        if name.lower() == b"content-disposition":
            disposition = body[v:cr]
        if not body.startswith(b"\r\n", cr):
            if cr + 1 >= n:
                raise _BodyEnds
            raise _MultipartError(f"no LF at the end of a part header at byte {cr + 1}")
        h = cr + 2


def _part_end(body: bytes, start: int, sep: bytes) -> tuple[int, int]:
    """Where a part's data (from ``start``) ends, and where the next part's headers start (-1: the closing
    delimiter, the rest is epilogue). A delimiter not followed by CRLF, ``--`` or padding is data."""
    n = len(body)
    i = start
    while True:
        at = body.find(sep, i)
        if at < 0:
            raise _BodyEnds
        a = at + len(sep)
        after = body[a : a + 2]
        if after == b"\r\n":
            return at, a + 2
        if after == b"--":
            return at, -1
        if a >= n or (len(after) == 1 and after in (b"\r", b"-")):
            raise _BodyEnds
        if after[:1] in (b" ", b"\t"):  # transport padding: [ \t]* CRLF
            j = a
            while j < n and body[j] in b" \t":
                j += 1
            if body.startswith(b"\r\n", j):
                return at, j + 2
            if j >= n or (j + 1 >= n and body[j] == 13):
                raise _BodyEnds
            raise _MultipartError(f"no CRLF after the boundary padding at byte {j}")
        i = at + 1


def b64decode_strict(text: str, where: str) -> bytes:
    """Decode base64 (standard or URL-safe alphabet, padding optional, data URLs), or raise a 400 ServingError.

    Example:
        >>> b64decode_strict("aGk", "instances[0]")
        b'hi'
    """
    if not isinstance(text, str):
        raise ServingError(400, "invalid_base64", f"{where}: expected a base64 string, got {type(text).__name__}.")
    s = "".join(text.split())
    if s.startswith("data:") and "," in s:  # data URL: data:image/png;base64,....
        s = s.split(",", 1)[1]
    s += "=" * (-len(s) % 4)
    try:
        if "-" in s or "_" in s:
            return base64.urlsafe_b64decode(s.encode("ascii"))
        return base64.b64decode(s.encode("ascii"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ServingError(400, "invalid_base64", f"{where}: not valid base64.") from None


def parse_json(body: bytes, where: str = "request body") -> Any:
    """Parse a JSON body with orjson, with a 400 ServingError on malformed JSON.

    orjson is several times faster than ``json.loads`` on number-heavy bodies (OIP v2 FP32 tensors).
    What orjson refuses but the standard library accepts is parsed again with ``json.loads``, so
    the answers stay those of ``json.loads``: ``NaN`` / ``Infinity`` literals (then refused where
    a tensor is built), lone surrogate escapes (refused by the request's schema), integers beyond
    a double (exact Python ints, refused where a tensor is built), and the same error messages.

    Example:
        >>> parse_json(b'{"instances": []}')
        {'instances': []}
    """
    import orjson

    if not body:
        raise ServingError(400, "empty_body", f"{where}: empty; send a JSON object.")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # the error path only: let the standard library decide and word the error
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise ServingError(400, "malformed_json", f"{where}: not valid JSON ({exc.msg} at byte {exc.pos}).") from None
    except UnicodeDecodeError as exc:
        raise ServingError(400, "malformed_json", f"{where}: not valid UTF-8 JSON (bad byte at {exc.start}).") from None
    except RecursionError:
        raise ServingError(400, "malformed_json", f"{where}: JSON nested too deeply.") from None
    except ValueError:  # e.g. an integer literal longer than Python's 4300-digit conversion limit
        raise ServingError(400, "malformed_json",
                           f"{where}: a JSON number is too long (integers are limited to "
                           f"{_max_int_digits()} digits).") from None


def _max_int_digits() -> int:
    import sys

    return sys.get_int_max_str_digits() or 4300


def validation_detail(exc: Any) -> str:
    """A one-line summary of a pydantic ValidationError (field path + message).

    Example:
        >>> from pydantic import ValidationError
        >>> from cvplatform.serving.schemas import PredictRequest
        >>> try:
        ...     PredictRequest.model_validate({})
        ... except ValidationError as e:
        ...     validation_detail(e)
        'instances: Field required'
    """
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "<body>"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts)


# --------------------------------------------------------------------------- OIP v2 tensors
OIP_DTYPE_SIZES = {"FP32": 4}


def split_binary_body(body: bytes, header_length: str | None,
                      parse: Callable[[bytes, str], Any] | None = None) -> tuple[Any, bytes]:
    """Split a binary-extension body into (JSON header, binary tail); plain JSON when no header length.

    ``parse(data, where)`` parses the JSON part (default :func:`parse_json`; the server passes one
    that first charges the parsing memory to the request).

    Example:
        >>> split_binary_body(b'{"inputs": []}xyz', "14")
        ({'inputs': []}, b'xyz')
    """
    parse = parse or parse_json
    if header_length is None:
        return parse(body, "request body"), b""
    try:
        n = int(header_length)
    except ValueError:
        raise ServingError(400, "invalid_header",
                           f"Inference-Header-Content-Length: {header_length!r} is not an integer.") from None
    if n < 0 or n > len(body):
        raise ServingError(400, "invalid_header",
                           f"Inference-Header-Content-Length = {n} but the body has {len(body)} bytes.")
    return parse(body[:n], "inference header"), body[n:]


_MAX_NESTING = 8


def _json_numbers(data: Any, count: int, shape: list[int], where: str) -> np.ndarray:
    """JSON ``data`` (flat or nested, row-major) as a flat float32 array, checked without a Python loop per value.

    ``np.array`` discovers the nesting and the values' kind in C. Numbers only: ``true``/``false``
    (Python bools, which numpy would quietly count as 1 / 0 among numbers) are looked for among
    the values equal to 0 or 1 only, and anything numpy cannot hold as numbers (strings, null,
    ragged nesting, integers beyond 64 bits) takes the exact per-value path, :func:`_checked_numbers`.
    """
    import numpy as np

    try:
        arr = np.array(data)
    except (ValueError, TypeError, OverflowError, RecursionError):  # ragged or too deep for numpy
        arr = None
    if arr is None or arr.dtype.kind == "O":
        return _checked_numbers(_flatten(data, where), count, shape, where)
    if arr.ndim > _MAX_NESTING + 1:
        raise ServingError(400, "invalid_tensor", f"{where}: data nested deeper than the shape allows.")
    if arr.size != count:
        raise ServingError(400, "invalid_tensor", f"{where}: {arr.size} values for shape {shape} (expected {count}).")
    if arr.dtype.kind not in "iuf":  # bool, str, ...
        raise ServingError(400, "invalid_tensor", f"{where}: FP32 data must be numbers.")
    flat = arr.reshape(-1)
    maybe_bool = np.flatnonzero((flat == 0) | (flat == 1))
    if maybe_bool.size and _has_bool(data, arr.ndim, maybe_bool, flat.size):
        raise ServingError(400, "invalid_tensor", f"{where}: FP32 data must be numbers (not true/false).")
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float32 -> inf, refused by the caller
        return flat.astype(np.float32)


def _has_bool(data: Any, ndim: int, candidates: np.ndarray, size: int) -> bool:
    """Whether a Python bool is among ``data``'s values at the flat indices ``candidates`` (C-level passes)."""
    from itertools import chain

    values = [data] if ndim == 0 else data
    for _ in range(ndim - 1):  # numpy found the nesting regular: flatten one level per pass
        values = list(chain.from_iterable(values))
    if candidates.size * 8 < size:  # a few zeros and ones: look at those only
        return bool in set(map(type, map(values.__getitem__, candidates.tolist())))
    return bool in set(map(type, values))


def _checked_numbers(flat: list[Any], count: int, shape: list[int], where: str) -> np.ndarray:
    import numpy as np

    if len(flat) != count:
        raise ServingError(400, "invalid_tensor", f"{where}: {len(flat)} values for shape {shape} (expected {count}).")
    if not set(map(type, flat)) <= {int, float}:  # bool is its own type: true/false are not numbers here
        raise ServingError(400, "invalid_tensor", f"{where}: FP32 data must be numbers.")
    try:
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32 -> inf, refused by the caller
            return np.fromiter(flat, dtype=np.float32, count=count)
    except (OverflowError, ValueError):  # an integer beyond float range (e.g. 400 digits)
        raise ServingError(400, "invalid_tensor", f"{where}: a value is out of the FP32 range.") from None


def _flatten(data: Any, where: str) -> list[Any]:
    if not isinstance(data, list):
        return [data]
    out: list[Any] = []
    stack = [iter(data)]
    while stack:
        try:
            v = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        if isinstance(v, list):
            if len(stack) > _MAX_NESTING:
                raise ServingError(400, "invalid_tensor", f"{where}: data nested deeper than the shape allows.")
            stack.append(iter(v))
        else:
            out.append(v)
    return out


def _take_binary(tensor: Any, blob: bytes, offset: int, where: str) -> tuple[bytes | None, int]:
    params = tensor.parameters or {}
    size = params.get("binary_data_size")
    if size is None:
        return None, offset
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ServingError(400, "invalid_tensor", f"{where}: parameters.binary_data_size must be a byte count.")
    if offset + size > len(blob):
        raise ServingError(400, "invalid_tensor",
                           f"{where}: binary_data_size {size} runs past the end of the binary data "
                           f"({len(blob) - offset} bytes left).")
    return blob[offset : offset + size], offset + size


def fp32_tensor(tensor: Any, blob: bytes, offset: int, input_size: tuple[int, int], max_rows: int
                ) -> tuple[np.ndarray, int]:
    """An OIP FP32 input as a ``(N, 3, H, W)`` float32 array matching the model's contract.

    Returns the array and the offset after its binary data (unchanged for JSON data).

    Example:
        >>> from cvplatform.serving.schemas import OipTensor
        >>> t = OipTensor(name="input", datatype="FP32", shape=[1, 3, 1, 1], data=[0.1, 0.2, 0.3])
        >>> fp32_tensor(t, b"", 0, (1, 1), 8)[0].shape
        (1, 3, 1, 1)
    """
    import numpy as np

    where = f"input {tensor.name!r}"
    shape = tensor.shape
    h, w = input_size
    if len(shape) != 4 or shape[1:] != [3, h, w] or shape[0] < 1:
        raise ServingError(400, "invalid_shape",
                           f"{where}: shape {shape}; this model takes FP32 [N, 3, {h}, {w}] (preprocessed, NCHW).")
    if shape[0] > max_rows:
        raise ServingError(413, "too_many_images", f"{where}: {shape[0]} rows; limits.max_images = {max_rows}.")
    count = math.prod(shape)
    raw, offset = _take_binary(tensor, blob, offset, where)
    if raw is not None:
        if len(raw) != count * 4:
            raise ServingError(400, "invalid_tensor",
                               f"{where}: {len(raw)} binary bytes, expected {count * 4} for shape {shape} FP32.")
        arr = np.frombuffer(raw, dtype="<f4").astype(np.float32)
    else:
        arr = _json_numbers(tensor.data, count, shape, where)
    if not np.isfinite(arr).all():
        raise ServingError(400, "invalid_tensor", f"{where}: contains NaN or infinity.")
    return np.ascontiguousarray(arr.reshape(shape)), offset


_BINARY_DTYPES = {"FP32": "<f4", "FP64": "<f8", "INT32": "<i4", "INT64": "<i8", "UINT8": "u1", "BOOL": "?"}


def tensor_bytes(data: Any, datatype: str) -> bytes:
    """An output tensor's ``data`` (row-major, numpy array or list) as binary tensor extension bytes.

    Numbers are little-endian in their native size; ``BYTES`` elements (str as UTF-8, or bytes)
    are each prefixed with their 4-byte little-endian length, as Triton and KServe read them.

    Example:
        >>> tensor_bytes([1.0, 2.0], "FP32").hex(), tensor_bytes(["ab"], "BYTES").hex()
        ('0000803f00000040', '020000006162')
    """
    import numpy as np

    if datatype == "BYTES":
        items = np.asarray(data, dtype=object).ravel()
        parts = []
        for item in items:
            raw = item if isinstance(item, bytes) else str(item).encode("utf-8")
            parts += [len(raw).to_bytes(4, "little"), raw]
        return b"".join(parts)
    dtype = _BINARY_DTYPES.get(datatype)
    if dtype is None:
        raise ValueError(f"datatype {datatype!r} has no binary encoding here; use one of "
                         f"{sorted(_BINARY_DTYPES)} or BYTES.")
    return np.ascontiguousarray(np.asarray(data).astype(dtype, copy=False)).tobytes()


def bytes_tensor(tensor: Any, blob: bytes, offset: int, max_rows: int) -> tuple[list[bytes], int]:
    """An OIP BYTES input: one encoded image file per element (base64 in JSON, raw with binary data).

    Example:
        >>> from cvplatform.serving.schemas import OipTensor
        >>> t = OipTensor(name="image", datatype="BYTES", shape=[1], data=["aGk="])
        >>> bytes_tensor(t, b"", 0, 8)[0]
        [b'hi']
    """
    where = f"input {tensor.name!r}"
    shape = tensor.shape
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) or shape[0] < 1:
        raise ServingError(400, "invalid_shape", f"{where}: BYTES shape {shape}; send [N] (one image per element).")
    n = shape[0]
    if n > max_rows:
        raise ServingError(413, "too_many_images", f"{where}: {n} images; limits.max_images = {max_rows}.")
    raw, offset = _take_binary(tensor, blob, offset, where)
    if raw is not None:
        items: list[bytes] = []
        pos = 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise ServingError(400, "invalid_tensor", f"{where}: truncated 4-byte length prefix.")
            size = int.from_bytes(raw[pos : pos + 4], "little")
            pos += 4
            if pos + size > len(raw):
                raise ServingError(400, "invalid_tensor", f"{where}: element {len(items)} runs past the data.")
            items.append(raw[pos : pos + size])
            pos += size
    else:
        flat = _flatten(tensor.data, where)
        items = [b64decode_strict(v, f"{where} element {i}") for i, v in enumerate(flat)]
    if len(items) != n:
        raise ServingError(400, "invalid_tensor", f"{where}: {len(items)} elements for shape {shape}.")
    return items, offset


__all__ = [
    "FILE_FIELDS",
    "OpenedImage",
    "b64decode_strict",
    "bytes_tensor",
    "decode_image",
    "decode_images",
    "fp32_tensor",
    "multipart_files",
    "open_image",
    "open_images",
    "parse_json",
    "split_binary_body",
    "tensor_bytes",
    "validation_detail",
]
