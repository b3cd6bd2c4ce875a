"""File helpers shared by every stage: hashing, atomic JSON, project paths."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def sha256_bytes(data: bytes) -> str:
    """Return the hex sha256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    """Return the hex sha256 of the file at ``path``, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as pretty, key-sorted JSON atomically (temp file + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, default=str)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def git_commit(root: str | os.PathLike[str] = ".") -> str | None:
    """Return the current git commit of ``root`` (with ``-dirty`` if modified), or None."""
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, check=True, timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


@dataclass(frozen=True)
class ProjectPaths:
    """The fixed paths of the design, relative to a project root (default: cwd)."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str] | None = None) -> ProjectPaths:
        return cls(Path(root or os.getcwd()).resolve())

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def quarantine(self) -> Path:
        return self.root / "data" / "quarantine"

    @property
    def processed(self) -> Path:
        return self.root / "data" / "processed"

    @property
    def manifest(self) -> Path:
        return self.processed / "manifest.parquet"

    def artifacts(self, stage: str) -> Path:
        return self.root / "artifacts" / stage

    def resolve(self, p: str | os.PathLike[str]) -> Path:
        """Resolve ``p`` against the project root unless it is absolute."""
        p = Path(p)
        return p if p.is_absolute() else self.root / p
