"""Typed configuration: ``params.yaml`` (tunables, one key per stage) and ``configs/``.

Both load into frozen pydantic models that reject unknown keys and bad types. A
failure raises :class:`~cvplatform.errors.ConfigError` whose message names the
file, the dotted key, the offending value and the expected type, e.g.::

    params.yaml: invalid configuration
      - ingest.workers: expected an integer, got 'two' (str)
      - ingest.wrkers: unknown key; allowed keys under 'ingest': digits, labels_csv, ...

Each stage owns one top-level section so DVC re-runs only the stages whose keys
changed. ``--set key.path=value`` overrides (CLI) are applied before validation
and reported with the file they override.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cvplatform.errors import ConfigError

DEFAULT_PARAMS = "params.yaml"


class StrictModel(BaseModel):
    """Base for every config model: frozen, unknown keys rejected, no silent coercion of str->int."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, validate_default=True)


# --------------------------------------------------------------------------- project
class ProjectParams(StrictModel):
    seed: int = 42
    """Global seed for generators, splits and training."""


# --------------------------------------------------------------------------- ingest
class SplitFractions(StrictModel):
    train: float = Field(0.7, ge=0.0, le=1.0)
    val: float = Field(0.15, ge=0.0, le=1.0)
    test: float = Field(0.15, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"train + val + test must sum to 1.0, got {total:g}")
        return self


class PrivacyParams(StrictModel):
    redact_faces: bool = False
    """Blur faces (OpenCV Haar cascade) before anything is stored."""
    min_face_size: int = Field(24, ge=8)
    """Smallest face side in pixels the detector looks for."""


class DigitsParams(StrictModel):
    size: int = Field(32, ge=8, le=512)
    """Side in pixels the 8x8 scikit-learn digits are upscaled to."""
    limit: int | None = Field(None, ge=10)
    """Take only the first N digits (None = all 1,797)."""


class ShapesParams(StrictModel):
    count: int = Field(600, ge=1)
    """Number of synthetic images to generate."""
    size: int = Field(64, ge=16, le=1024)
    """Side of each generated image in pixels."""
    seed: int = 0
    """Generator seed (same seed -> identical images)."""
    classes: tuple[str, ...] = ("circle", "square", "triangle")
    """Shape classes to draw (subset of circle, square, triangle, star)."""


class IngestParams(StrictModel):
    source: str = "digits"
    """folder:PATH | s3://bucket/prefix | digits | shapes."""
    labels_csv: str | None = None
    """Labels CSV (path,label[,metadata...]) inside the source; None = ImageFolder layout."""
    workers: int = Field(2, ge=1, le=64)
    """Decode processes."""
    min_side: int = Field(8, ge=1)
    """Smallest accepted width/height (pixels)."""
    max_pixels: int = Field(40_000_000, ge=1)
    """Largest accepted width*height (decompression-bomb guard)."""
    split: SplitFractions = SplitFractions()
    privacy: PrivacyParams = PrivacyParams()
    digits: DigitsParams = DigitsParams()
    shapes: ShapesParams = ShapesParams()


# --------------------------------------------------------------------------- validate
class ValidateParams(StrictModel):
    suite: str = "configs/expectations/manifest.yaml"
    """Expectation suite definition (configs/expectations/*.yaml)."""


# --------------------------------------------------------------------------- all params
class Params(StrictModel):
    """Everything in ``params.yaml``. Later stages add their own section."""

    project: ProjectParams = ProjectParams()
    ingest: IngestParams = IngestParams()
    validate_: ValidateParams = Field(ValidateParams(), alias="validate")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @property
    def validate_params(self) -> ValidateParams:
        return self.validate_


M = TypeVar("M", bound=BaseModel)


# --------------------------------------------------------------------------- loading
def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Read a YAML file, raising ConfigError naming the file on any problem."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: file not found (cwd: {os.getcwd()}). Create it or pass the right path.")
    if not p.is_file():
        raise ConfigError(f"{p}: is not a file.")
    try:
        with p.open("r", encoding="utf-8") as fh:
            return yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{p}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc


def parse_overrides(overrides: Iterable[str]) -> list[tuple[list[str], Any]]:
    """Parse ``key.path=value`` strings; the value is read as YAML (``3``, ``true``, ``[a, b]``)."""
    parsed = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value, e.g. --set train.epochs=3")
        key, raw = item.split("=", 1)
        parts = [k for k in key.strip().split(".") if k]
        if not parts:
            raise ConfigError(f"--set {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from exc
        parsed.append((parts, value))
    return parsed


def apply_overrides(data: dict[str, Any], overrides: Iterable[str], source: str) -> dict[str, Any]:
    """Return a deep copy of ``data`` with ``--set`` overrides applied.

    Intermediate keys are created as needed; the model validation that follows
    rejects keys that do not exist, naming them.
    """
    import copy

    out = copy.deepcopy(data)
    for parts, value in parse_overrides(overrides):
        node = out
        for i, k in enumerate(parts[:-1]):
            nxt = node.get(k)
            if nxt is None:
                nxt = node[k] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(
                    f"{source}: --set {'.'.join(parts)}: '{'.'.join(parts[: i + 1])}' is a value, not a section"
                )
            node = nxt
        node[parts[-1]] = value
    return out


def _type_name(v: Any) -> str:
    return type(v).__name__


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> tuple[str, list[str]]:
    """Walk ``model`` along ``loc`` (minus the last item) and list the keys allowed there."""
    current: Any = model
    for part in loc[:-1]:
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return "", []
        field = None
        for name, f in current.model_fields.items():
            if part in (name, f.alias):
                field = f
                break
        if field is None:
            return "", []
        ann = field.annotation
        # unwrap Optional[X]
        args = getattr(ann, "__args__", None)
        if args and not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            ann = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), ann)
        current = ann
    if isinstance(current, type) and issubclass(current, BaseModel):
        names = sorted((f.alias or n) for n, f in current.model_fields.items())
        return ".".join(map(str, loc[:-1])) or "<top level>", names
    return "", []


def format_validation_error(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    """Turn a pydantic ValidationError into one line per problem naming key, value and expected type."""
    lines = [f"{source}: invalid configuration"]
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        key = ".".join(str(p) for p in loc) or "<top level>"
        etype = err.get("type", "")
        value = err.get("input")
        if etype == "extra_forbidden":
            where, allowed = _allowed_keys(model, loc)
            hint = f"; allowed keys under '{where}': {', '.join(allowed)}" if allowed else ""
            lines.append(f"  - {key}: unknown key{hint}")
        elif etype == "missing":
            lines.append(f"  - {key}: required key is missing")
        else:
            msg = err.get("msg", "invalid value")
            shown = repr(value)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            lines.append(f"  - {key}: {msg}; got {shown} ({_type_name(value)})")
    lines.append("Fix the key(s) above in the file (or the --set override) and run again.")
    return "\n".join(lines)


def load_model(
    model: type[M], data: Mapping[str, Any] | None, source: str
) -> M:
    """Validate ``data`` against ``model``; errors become a ConfigError naming ``source``."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top level, got {_type_name(data)}")
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, model, source)) from None


def load_config(path: str | os.PathLike[str], model: type[M]) -> M:
    """Load a structured definition from ``configs/`` into ``model``.

    Example:
        >>> from cvplatform.config import load_config, Params
        >>> load_config("params.yaml", Params).ingest.source  # doctest: +SKIP
        'digits'
    """
    return load_model(model, read_yaml(path), str(path))


def load_params(
    path: str | os.PathLike[str] = DEFAULT_PARAMS,
    overrides: Iterable[str] = (),
) -> Params:
    """Load ``params.yaml`` with optional ``key.path=value`` overrides.

    Example:
        >>> from cvplatform.config import load_params
        >>> p = load_params("params.yaml", ["ingest.workers=1"])  # doctest: +SKIP
        >>> p.ingest.workers  # doctest: +SKIP
        1
    """
    overrides = list(overrides)
    data = read_yaml(path) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {_type_name(data)}")
    source = str(path)
    if overrides:
        data = apply_overrides(data, overrides, source)
        source = f"{path} (with --set {' '.join(overrides)})"
    return load_model(Params, data, source)


def params_hash(params: BaseModel) -> str:
    """A stable sha256 of a params model (used as lineage)."""
    import hashlib
    import json

    blob = json.dumps(params.model_dump(mode="json", by_alias=True), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


__all__ = [
    "DEFAULT_PARAMS",
    "DigitsParams",
    "IngestParams",
    "Literal",
    "Params",
    "PrivacyParams",
    "ProjectParams",
    "ShapesParams",
    "SplitFractions",
    "StrictModel",
    "ValidateParams",
    "apply_overrides",
    "load_config",
    "load_model",
    "load_params",
    "params_hash",
    "read_yaml",
]
