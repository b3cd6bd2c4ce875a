"""The dataset manifest: the one table every stage after ingest reads.

One row per accepted image, written by ingest to ``data/processed/manifest.parquet``:

=========  ===============================================================
column     meaning
=========  ===============================================================
path       path of the normalised PNG, relative to the project root (posix)
sha256     sha256 of that PNG file (the image's identity)
label      class name (string)
width      pixels
height     pixels
channels   always 3 (RGB) after normalisation
format     the original file's format as decoded (PNG, JPEG, ...)
source     the source spec it came from (``digits``, ``folder:...``, ``s3://...``)
origin     the original path inside the source (for tracing back)
split      ``train`` | ``val`` | ``test`` (derived from sha256, see split.py)
...        any source metadata (e.g. ``background``, ``lighting``, ``camera``)
=========  ===============================================================

Rows are sorted by ``(label, sha256)`` and written with fixed parquet options so
re-running ingest on the same input gives a byte-identical file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from cvplatform.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

CORE_COLUMNS: tuple[str, ...] = (
    "path",
    "sha256",
    "label",
    "width",
    "height",
    "channels",
    "format",
    "source",
    "origin",
    "split",
)
INT_COLUMNS = ("width", "height", "channels")
SPLITS = ("train", "val", "test")


def write_manifest(df: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``df`` deterministically (sorted rows, core columns first, metadata sorted)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    missing = [c for c in CORE_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"manifest is missing columns {missing}; this is a bug in the stage writing it")
    extra = sorted(c for c in df.columns if c not in CORE_COLUMNS)
    df = df[list(CORE_COLUMNS) + extra].sort_values(["label", "sha256"], kind="mergesort").reset_index(drop=True)
    for c in INT_COLUMNS:
        df[c] = df[c].astype("int64")
    for c in [c for c in df.columns if c not in INT_COLUMNS]:
        df[c] = df[c].astype("object").where(df[c].notna(), None)
        df[c] = df[c].map(lambda v: None if v is None else str(v))
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(None)  # no pandas metadata blob: keeps bytes stable
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp, compression="zstd", use_dictionary=True, write_statistics=True)
    os.replace(tmp, path)
    return path


def read_manifest(
    path: str | os.PathLike[str] = "data/processed/manifest.parquet",
    required: tuple[str, ...] = CORE_COLUMNS,
) -> pd.DataFrame:
    """Read the manifest, failing clearly if it is absent or lacks required columns.

    Example:
        >>> from cvplatform.data.manifest import read_manifest
        >>> df = read_manifest("data/processed/manifest.parquet")  # doctest: +SKIP
        >>> df.groupby("split").size()  # doctest: +SKIP
    """
    import pandas as pd

    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: manifest not found. Run `cvplatform ingest` (or `dvc repro ingest`) first.")
    try:
        df = pd.read_parquet(p) if p.suffix == ".parquet" else pd.read_csv(p)
    except Exception as exc:  # pyarrow raises many types for corrupt files
        raise DataError(f"{p}: cannot read manifest ({exc}). Re-run `cvplatform ingest`.") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(
            f"{p}: manifest is missing required column(s) {missing} (has {list(df.columns)}). "
            "Re-run `cvplatform ingest` to rebuild it."
        )
    return df


def metadata_columns(df: pd.DataFrame) -> list[str]:
    """Source metadata columns (everything that is not a core column)."""
    return [c for c in df.columns if c not in CORE_COLUMNS]
