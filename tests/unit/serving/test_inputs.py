"""Request bodies to images and tensors: every bad input is a 4xx ServingError with a clear detail."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from cvplatform.serving.inputs import (
    b64decode_strict,
    bytes_tensor,
    decode_image,
    decode_images,
    fp32_tensor,
    parse_json,
    split_binary_body,
)
from cvplatform.serving.models import ServingError
from cvplatform.serving.schemas import LimitsConfig, OipTensor

LIMITS = LimitsConfig(max_pixels=100_000, max_images=4, min_side=2)


def encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def err(fn, *args, **kw) -> ServingError:
    with pytest.raises(ServingError) as info:
        fn(*args, **kw)
    return info.value


def test_decodes_png_and_jpeg_to_rgb():
    rgb = np.random.default_rng(0).integers(0, 255, (12, 10, 3), dtype=np.uint8)
    out = decode_image(encode(Image.fromarray(rgb)), LIMITS)
    assert out.dtype == np.uint8 and out.shape == (12, 10, 3) and (out == rgb).all()
    assert decode_image(encode(Image.fromarray(rgb), "JPEG"), LIMITS).shape == (12, 10, 3)


def test_follows_the_ingest_normalisation_rules():
    transparent = Image.new("RGBA", (4, 4), (10, 20, 30, 0))  # fully transparent: white, as ingest stores it
    assert (decode_image(encode(transparent), LIMITS) == 255).all()
    grey16 = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    assert (decode_image(encode(grey16), LIMITS) == 255).all()
    exif = Image.new("RGB", (6, 3), (200, 0, 0))
    ex = exif.getexif()
    ex[0x0112] = 6  # rotate 90: a 6x3 image is shown 3x6
    buf = io.BytesIO()
    exif.save(buf, format="JPEG", exif=ex.tobytes())
    assert decode_image(buf.getvalue(), LIMITS).shape == (6, 3, 3)


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"", 400, "empty_image"),
        (b"hello, not an image", 400, "invalid_image"),
        (encode(Image.new("RGB", (50, 50)))[:60], 400, "invalid_image"),
        (encode(Image.new("RGB", (8, 8)), "PPM"), 415, "unsupported_image_format"),
        (encode(Image.new("1", (1000, 1000))), 413, "image_too_large"),
        (encode(Image.new("RGB", (1, 5))), 400, "image_too_small"),
        (encode(Image.fromarray(np.zeros((4, 4), np.float32), mode="F"), "TIFF"), 415, "unsupported_image_mode"),
    ],
    ids=["empty", "not-image", "truncated", "format", "pixels", "small", "float-mode"],
)
def test_bad_images_are_4xx(data, status, code):
    e = err(decode_image, data, LIMITS, where="image 3")
    assert (e.status, e.code) == (status, code)
    assert "image 3" in e.detail


def test_too_many_images():
    png = encode(Image.new("RGB", (4, 4)))
    e = err(decode_images, [png] * 5, LIMITS)
    assert (e.status, e.code) == (413, "too_many_images") and "max_images = 4" in e.detail


def test_base64_variants():
    data = bytes(range(250))
    assert b64decode_strict(base64.b64encode(data).decode(), "x") == data
    assert b64decode_strict(base64.urlsafe_b64encode(data).decode().rstrip("="), "x") == data
    assert b64decode_strict("data:image/png;base64," + base64.b64encode(data).decode(), "x") == data
    assert err(b64decode_strict, "%%%", "instances[0]").code == "invalid_base64"
    assert err(b64decode_strict, 5, "instances[0]").code == "invalid_base64"


def test_json_errors():
    assert parse_json(b'{"a": 1}') == {"a": 1}
    assert err(parse_json, b"").code == "empty_body"
    assert err(parse_json, b"{").code == "malformed_json"
    assert err(parse_json, b"\xff\xfe").code == "malformed_json"
    assert err(parse_json, b"[" * 100_000).code == "malformed_json"


def test_numbers_beyond_pythons_limits_are_400s_without_internal_text():
    big = b'{"instances": [' + b"9" * 5000 + b"]}"
    e = err(parse_json, big)
    assert (e.status, e.code) == (400, "malformed_json") and "4300 digits" in e.detail
    assert "set_int_max_str_digits" not in e.detail and "Exceeds the limit" not in e.detail
    t = OipTensor(name="i", datatype="FP32", shape=[1, 3, 4, 4], data=[int("1" * 400)] + [0] * 47)
    e = err(fp32_tensor, t, b"", 0, (4, 4), 8)
    assert (e.status, e.code) == (400, "invalid_tensor") and "FP32 range" in e.detail
    t = OipTensor(name="i", datatype="FP32", shape=[1, 3, 4, 4], data=[10**60] + [0] * 47)  # finite int, inf float32
    assert err(fp32_tensor, t, b"", 0, (4, 4), 8).code == "invalid_tensor"


def test_a_requests_total_pixels_are_bounded_before_decoding():
    from cvplatform.serving.inputs import open_images

    png = encode(Image.new("RGB", (100, 100)))
    limits = LimitsConfig(max_pixels=100_000, max_images=8, max_request_pixels=25_000)
    assert len(open_images([png, png], limits)) == 2
    e = err(open_images, [png, png, png], limits)
    assert (e.status, e.code) == (413, "too_many_pixels") and "30000 pixels" in e.detail


def test_fp32_tensor_json_and_binary():
    x = np.arange(2 * 3 * 4 * 4, dtype=np.float32).reshape(2, 3, 4, 4)
    t = OipTensor(name="input", datatype="FP32", shape=[2, 3, 4, 4], data=x.tolist())  # nested
    out, _ = fp32_tensor(t, b"", 0, (4, 4), 8)
    assert out.dtype == np.float32 and (out == x).all()
    t = OipTensor(name="input", datatype="FP32", shape=[2, 3, 4, 4], parameters={"binary_data_size": x.nbytes})
    out, offset = fp32_tensor(t, x.astype("<f4").tobytes(), 0, (4, 4), 8)
    assert (out == x).all() and offset == x.nbytes
    bad = [
        (OipTensor(name="i", datatype="FP32", shape=[1, 3, 8, 8], data=[0.0] * 192), "invalid_shape"),
        (OipTensor(name="i", datatype="FP32", shape=[1, 3, 4, 4], data=[0.0] * 47), "invalid_tensor"),
        (OipTensor(name="i", datatype="FP32", shape=[1, 3, 4, 4], data=[float("nan")] * 48), "invalid_tensor"),
        (OipTensor(name="i", datatype="FP32", shape=[1, 3, 4, 4], data=[True] * 48), "invalid_tensor"),
        (OipTensor(name="i", datatype="FP32", shape=[9, 3, 4, 4], data=[0.0] * 432), "too_many_images"),
    ]
    for tensor, code in bad:
        assert err(fp32_tensor, tensor, b"", 0, (4, 4), 8).code == code


def test_bytes_tensor_base64_and_raw_length_prefixed():
    a, b = b"first-image", b"second"
    t = OipTensor(name="image", datatype="BYTES", shape=[2], data=[base64.b64encode(a).decode(),
                                                                    base64.b64encode(b).decode()])
    assert bytes_tensor(t, b"", 0, 8)[0] == [a, b]
    raw = len(a).to_bytes(4, "little") + a + len(b).to_bytes(4, "little") + b
    t = OipTensor(name="image", datatype="BYTES", shape=[2, 1], parameters={"binary_data_size": len(raw)})
    assert bytes_tensor(t, raw, 0, 8)[0] == [a, b]
    assert err(bytes_tensor, t, raw[:-1], 0, 8).code == "invalid_tensor"
    assert err(bytes_tensor, OipTensor(name="image", datatype="BYTES", shape=[1, 3], data=["x"]), b"", 0, 8
               ).code == "invalid_shape"


def test_binary_body_split():
    header = json.dumps({"inputs": []}).encode()
    h, blob = split_binary_body(header + b"\x00\x01", str(len(header)))
    assert h == {"inputs": []} and blob == b"\x00\x01"
    assert err(split_binary_body, header, "999").code == "invalid_header"
    assert err(split_binary_body, header, "abc").code == "invalid_header"


# --------------------------------------------------------------------------- multipart/form-data
def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "bnd") -> tuple[bytes, str]:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def test_multipart_files_are_read_in_order_and_other_fields_ignored():
    from cvplatform.serving.inputs import multipart_files

    a, b = encode(Image.new("RGB", (3, 2))), b"\r\n--bn\r\n-" + bytes(range(256))  # a boundary prefix in the data
    body, ctype = _multipart([("note", None, b"hello"), ("files", "a.png", a), ("file", "b.bin", b)])
    assert multipart_files(body, ctype, LimitsConfig()) == [a, b]


@pytest.mark.parametrize(("parts", "ctype", "status", "code"), [
    ([("files", None, b"text")], None, 400, "invalid_multipart"),  # a text field where a file is expected
    ([("other", "x.png", b"x")], None, 400, "no_images"),
    ([("files", f"{i}.png", b"x") for i in range(5)], None, 413, "too_many_images"),
    ([("files", "a.png", b"x")], "multipart/form-data", 400, "invalid_multipart"),  # no boundary
])
def test_bad_multipart_bodies_are_4xx(parts, ctype, status, code):
    from cvplatform.serving.inputs import multipart_files

    body, default_ctype = _multipart(parts)
    with pytest.raises(ServingError) as e:
        multipart_files(body, ctype or default_ctype, LimitsConfig(max_images=4))
    assert (e.value.status, e.value.code) == (status, code)


def test_a_malformed_multipart_body_is_a_400():
    from cvplatform.serving.inputs import multipart_files

    for body in (b"--bnd\r\ngarbage", b"no boundary here at all", b"--bnd\r\nContent-Disposition: form-data\r\n"):
        with pytest.raises(ServingError) as e:
            multipart_files(body, "multipart/form-data; boundary=bnd", LimitsConfig())
        assert e.value.status == 400


def _python_multipart_files(body: bytes, boundary: bytes, max_images: int) -> list[bytes] | str:
    """The oracle: python-multipart's streaming parser (what the server used before), as files or an error code."""
    from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header

    files: list[bytes] = []
    st: dict = {"h": b"", "v": b"", "disp": b"", "data": None, "others": 0}

    def headers_finished() -> None:
        name = parse_options_header(st["disp"])[1].get(b"name", b"").decode("utf-8", "replace")
        if name in ("files", "file"):
            if b"filename" not in parse_options_header(st["disp"])[1]:
                raise ValueError("invalid_multipart")
            if len(files) >= max_images:
                raise ValueError("too_many_images")
            st["data"] = bytearray()
        else:
            st["others"] += 1
            if st["others"] > max_images + 16:
                raise ValueError("invalid_multipart")

    def header_end() -> None:
        if st["h"].lower() == b"content-disposition":
            st["disp"] = st["v"]
        st.update(h=b"", v=b"")

    def part_end() -> None:
        if st["data"] is not None:
            files.append(bytes(st["data"]))

    callbacks = {"on_part_begin": lambda: st.update(disp=b"", data=None),
                 "on_header_field": lambda d, a, b: st.update(h=st["h"] + d[a:b]),
                 "on_header_value": lambda d, a, b: st.update(v=st["v"] + d[a:b]),
                 "on_header_end": header_end, "on_headers_finished": headers_finished,
                 "on_part_data": lambda d, a, b: st["data"] is not None and st["data"].extend(d[a:b]),
                 "on_part_end": part_end}
    try:
        MultipartParser(boundary, callbacks).write(body)
    except MultipartParseError:  # a ValueError too: first
        return "invalid_multipart"
    except ValueError as exc:
        return str(exc)
    return files or "no_images"


def test_multipart_bodies_are_split_as_python_multipart_splits_them():
    """Truncated and mutated bodies (padding, leading newlines, boundary look-alikes in the data, header limits,
    epilogues): the same files or the same error code as python-multipart's parser, for every one."""
    import random

    from cvplatform.serving.inputs import multipart_files

    png = encode(Image.new("RGB", (3, 2)))
    eight = "".join(f"X-H{i}: v\r\n" for i in range(7))
    bases = [
        _multipart([("note", None, b"hello"), ("files", "a.png", b"\r\n--bn\r\n-" + png), ("file", "b", b"")])[0],
        b"\r\n\r\n" + _multipart([("files", "a.png", png)])[0] + b"epilogue",
        b"--bnd \t\r\n" + _multipart([("files", "a.png", png)])[0][len("--bnd\r\n"):],
        _multipart([("files", "a.png\r\n" + eight, png)])[0],  # 8 headers: the most a part may have
        _multipart([("files", "a.png\r\n" + eight + "X-H8: v", png)])[0],  # 9: refused
        _multipart([("files", f"{i}.png", b"x") for i in range(5)])[0],
    ]
    rng = random.Random(0)
    pieces = [b"\r", b"\n", b"-", b" ", b"\t", b":", b"\r\n", b"--", b"\r\n--bnd", b"--bnd--", b"\x00", b";"]
    cases = []
    for b in bases:
        cases += [b[:k] for k in range(0, len(b) + 1, 3)]
        for _ in range(150):
            m = bytearray(b)
            i = rng.randrange(len(m) + 1)
            if rng.random() < 0.5:
                del m[i : i + rng.randint(1, 3)]
            else:
                m[i:i] = rng.choice(pieces)
            cases.append(bytes(m))
    outcomes = set()
    for body in cases:
        try:
            ours: list[bytes] | str = multipart_files(body, "multipart/form-data; boundary=bnd", LimitsConfig(max_images=4))
        except ServingError as e:
            ours = e.code
        assert ours == _python_multipart_files(body, b"bnd", 4), body
        outcomes.add(ours if isinstance(ours, str) else len(ours))
    assert {"invalid_multipart", "no_images", "too_many_images", 1, 2} <= outcomes  # every kind of answer was met


def test_fp32_json_values_checked_in_bulk_refuse_what_the_per_value_check_refused():
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    zeros = np.zeros((2, 3, 4, 4), np.float32)

    def tensor(data):
        return OipTensor(name="i", datatype="FP32", shape=[2, 3, 4, 4], data=data)

    for ok in (x.tolist(), x.ravel().tolist(), zeros.tolist(), [int(v) for v in range(96)]):
        out, _ = fp32_tensor(tensor(ok), b"", 0, (4, 4), 8)
        np.testing.assert_array_equal(out.ravel(), np.asarray(ok, np.float32).ravel())
    few = x.ravel().tolist()
    few[5] = True  # a bool among numbers (numpy alone would read it as 1.0)
    many = zeros.ravel().tolist()
    many[-1] = False  # a bool among many zeros (the whole-list check)
    nested = x.tolist()
    nested[1][2][3][0] = True
    for bad in (few, many, nested, x.ravel().tolist()[:-1] + ["0.5"], x.ravel().tolist()[:-1] + [None],
                x.ravel().tolist()[:-1] + [{"a": 1}], [[[[[[[[[[0.5]]]]]]]]]] * 96):
        e = err(fp32_tensor, tensor(bad), b"", 0, (4, 4), 8)
        assert (e.status, e.code) == (400, "invalid_tensor") and "input 'i'" in e.detail
    ragged = [x.ravel().tolist()[:95], 0.5]  # mixed nesting: values counted like before
    assert fp32_tensor(tensor(ragged), b"", 0, (4, 4), 8)[0].shape == (2, 3, 4, 4)
