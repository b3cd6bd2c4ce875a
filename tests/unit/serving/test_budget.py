"""The decode memory budget: per-request and in-flight charges, and estimates that bound the real peak."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

from cvplatform.serving.budget import MIB, MemoryBudget, decode_cost_bytes, json_cost_bytes
from cvplatform.serving.inputs import open_image
from cvplatform.serving.models import ServingError
from cvplatform.serving.schemas import LimitsConfig


def test_holds_charge_and_release_the_shared_budget():
    seen = []
    budget = MemoryBudget(100 * MIB, on_change=seen.append)
    a, b = budget.hold(), budget.hold()
    a.take(60 * MIB, "request a")
    with pytest.raises(ServingError) as busy:
        b.take(50 * MIB, "request b")
    assert (busy.value.status, busy.value.code) == (429, "server_busy") and "Retry" in busy.value.detail
    with pytest.raises(ServingError) as never:
        b.take(101 * MIB, "request b")
    assert (never.value.status, never.value.code) == (413, "request_too_large")
    assert "limits.max_inflight_decode_bytes = 100 MiB" in never.value.detail
    b.take(40 * MIB, "request b")
    assert budget.in_use == 100 * MIB
    a.share()  # e.g. a shadow scoring keeps a's images: both owners must release
    a.release()
    assert budget.in_use == 100 * MIB
    a.release()
    b.release()
    b.release()  # idempotent
    assert budget.in_use == 0 and seen[-1] == 0


def test_json_cost_bounds_the_parsed_size():
    import json
    import tracemalloc

    for body in (b"[" + b",".join([b"{}"] * 200_000) + b"]", b"[" + b",".join([b"0.5"] * 200_000) + b"]",
                 b'{"instances": ["' + b"A" * 1_000_000 + b'"]}',
                 b"{" + b",".join(b'"%d":[1]' % i for i in range(100_000)) + b"}"):
        tracemalloc.start()
        parsed = json.loads(body)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        del parsed
        assert peak <= json_cost_bytes(body), (body[:20], peak, json_cost_bytes(body))


def _image(mode: str, fmt: str, side: int) -> bytes:
    """Noise, so that every decoded page is really written (blank buffers can stay unmapped)."""
    import numpy as np

    rng = np.random.default_rng(0)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (side, side), dtype=np.uint16))
    elif mode == "I":
        img = Image.fromarray(rng.integers(0, 65535, (side, side), dtype=np.int32))
    else:
        img = Image.fromarray(rng.integers(0, 256, (side, side, 4), dtype=np.uint8), "RGBA").convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


CASES = [("RGB", "PNG"), ("L", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("I;16", "PNG"),
         ("RGB", "JPEG"), ("CMYK", "JPEG"), ("RGB", "WEBP"), ("RGBA", "WEBP"), ("I", "TIFF")]


def test_the_decode_estimate_is_an_upper_bound_of_the_measured_peak_rss(tmp_path):
    """Each kind of image is decoded in a fresh process; the growth of its peak RSS (VmHWM) while the
    server's decode path runs must stay below :func:`decode_cost_bytes`."""
    side = 1536
    for i, (mode, fmt) in enumerate(CASES):
        (tmp_path / f"{i}.img").write_bytes(_image(mode, fmt, side))
    code = textwrap.dedent("""
        import sys
        from pathlib import Path
        from cvplatform.serving.core import _decode_and_preprocess
        from cvplatform.serving.inputs import open_images
        from cvplatform.serving.schemas import LimitsConfig
        from cvplatform.preprocess import PreprocessContract
        def kib(key):
            for line in open("/proc/self/status"):
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        limits = LimitsConfig(max_pixels=89_000_000)
        contract = PreprocessContract((16, 16), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), ("a", "b"))
        _decode_and_preprocess(open_images([Path(sys.argv[1]).read_bytes()], limits), contract)  # warm up imports
        for path in sys.argv[2:]:
            opened = open_images([Path(path).read_bytes()], limits)
            open("/proc/self/clear_refs", "w").write("5")
            rss = kib("VmRSS")
            images, x = _decode_and_preprocess(opened, contract)
            print(kib("VmHWM") - rss)
            del images, x, opened
    """)
    small = tmp_path / "small.png"
    small.write_bytes(_image("RGBA", "PNG", 64))
    out = subprocess.run([sys.executable, "-c", code, str(small), *(str(tmp_path / f"{i}.img")
                                                                      for i in range(len(CASES)))],
                         capture_output=True, text=True, check=True, timeout=300,
                         # large blocks mmap'ed and unmapped on free: each measurement starts from a clean heap
                         env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    measured = [int(v) for v in out.stdout.split()]
    assert len(measured) == len(CASES), out.stderr
    limits = LimitsConfig(max_pixels=89_000_000)
    for (mode, fmt), peak, i in zip(CASES, measured, range(len(CASES)), strict=True):
        est = decode_cost_bytes([open_image((tmp_path / f"{i}.img").read_bytes(), limits)], (16, 16))
        assert peak <= est, f"{mode} {fmt}: measured {peak / MIB:.1f} MiB > estimated {est / MIB:.1f} MiB"
        assert est <= 4 * max(peak, 3 * side * side), f"{mode} {fmt}: estimate {est / MIB:.1f} MiB far too high"
