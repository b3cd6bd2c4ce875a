"""Load a registered model for inference, refusing any artifact that is not byte-for-byte what was registered.

:func:`load_model` resolves ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``,
downloads the version's ``model.onnx`` from the artifact store, checks its sha256
against the version's ``artifact.sha256`` tag (written at registration from the
export stage's hash), and only then opens the verified bytes as a
:class:`cvplatform.runtime.RuntimeModel` (onnxruntime session + the preprocessing contract from
the ONNX ``metadata_props``).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvplatform.errors import RegistryError
from cvplatform.registry.client import (
    ONNX_FILE,
    TAG_APPROVAL_STATUS,
    TAG_SHA256,
    RegistryClient,
)
from cvplatform.registry.errors import ArtifactIntegrityError, UnknownVersionError, UnmanagedVersionError
from cvplatform.runtime import CPU, RuntimeModel, open_model, session_options
from cvplatform.utils.io import sha256_bytes

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.config import Params

_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>\d+))/?$")


@dataclass(frozen=True)
class ModelRef:
    """A parsed ``models:/`` URI: a name plus either an alias or a version.

    Example:
        >>> parse_model_uri("models:/cvplatform@champion")
        ModelRef(name='cvplatform', alias='champion', version=None)
    """

    name: str
    alias: str | None = None
    version: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def parse_model_uri(uri: str) -> ModelRef:
    """Parse ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``.

    Raises:
        RegistryError: anything else, with the accepted forms.

    Example:
        >>> parse_model_uri("models:/cvplatform/3").version
        '3'
    """
    m = _URI.match(str(uri).strip())
    if not m:
        raise RegistryError(
            f"{uri!r} is not a registry model URI; use models:/NAME@ALIAS (e.g. models:/cvplatform@champion) "
            "or models:/NAME/VERSION (e.g. models:/cvplatform/3)."
        )
    return ModelRef(m.group("name"), m.group("alias"), m.group("version"))


@dataclass(frozen=True)
class VersionInfo:
    """The registry facts of a loaded version."""

    name: str
    version: str
    aliases: tuple[str, ...]
    sha256: str
    approval: str | None
    run_id: str | None
    source: str
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


LoadedModel = RuntimeModel
"""What :func:`load_model` returns: the one runtime model of the library, with ``info`` (a
:class:`VersionInfo`) set; ``session, contract, info = load_model(...)`` unpacks it."""


def _resolve(client: RegistryClient, ref: ModelRef) -> Any:
    if ref.alias:
        mv = client.version_by_alias(ref.name, ref.alias)
        if mv is None:
            model = client.model(ref.name)
            have = ", ".join(f"{a} -> v{v}" for a, v in sorted((model.aliases or {}).items())) or "none"
            raise UnknownVersionError(
                f"model {ref.name!r} has no alias {ref.alias!r} at {client.uri} (aliases: {have}). Promote a "
                "version first (`cvplatform registry promote NAME VERSION`) or load models:/NAME/VERSION."
            )
        return mv
    return client.version(ref.name, ref.version or "")


def download_onnx(client: RegistryClient, name: str, version: str, dst: str | os.PathLike[str]) -> Path:
    """Download ``model.onnx`` of a version into the folder ``dst``; returns its local path."""
    import mlflow.artifacts

    base = client.call(f"locate artifacts of version {version} of {name!r}",
                       lambda: client.mlflow.get_model_version_download_uri(name, str(version)))
    uri = f"{base.rstrip('/')}/{ONNX_FILE}"

    def fetch() -> str:
        return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=client.uri)

    try:
        return Path(client.call(f"download {uri}", fetch))
    except RegistryError:
        raise
    except Exception as exc:
        raise RegistryError(
            f"cannot download {ONNX_FILE} of version {version} of {name!r} from {uri} ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}). Check the artifact store is reachable and holds the file."
        ) from exc


def load_model(
    model_uri: str,
    *,
    params: Params | None = None,
    root: str | os.PathLike[str] | None = None,
    tracking_uri: str | None = None,
    client: RegistryClient | None = None,
    providers: Sequence[str] | None = None,
    sess_options: Any = None,
) -> LoadedModel:
    """Load ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` after verifying its sha256.

    Args:
        model_uri: Which version.
        params: For the retry budget (``registry.retry``); defaults apply when None.
        root: Project root (the embedded tracking store lives there); default cwd.
        tracking_uri: Tracking URI (default: ``$MLFLOW_TRACKING_URI`` or the embedded store of ``root``).
        client: An existing :class:`RegistryClient` (overrides the three above).
        providers: onnxruntime execution providers, preferred first (default ``["CPUExecutionProvider"]``).
        sess_options: an ``onnxruntime.SessionOptions`` (threads, spinning, ...); default
            :func:`cvplatform.runtime.session_options`.

    Returns:
        A :class:`~cvplatform.runtime.RuntimeModel` with ``info`` (a :class:`VersionInfo`) set.

    Raises:
        UnknownModelError / UnknownVersionError: no such model, version or alias.
        UnmanagedVersionError: the version has no ``artifact.sha256`` tag (not registered by cvplatform).
        ArtifactIntegrityError: the downloaded file's sha256 differs from the registered one.
        ModelError: the verified file is not a usable ONNX model with a preprocessing contract.

    Example:
        >>> from cvplatform.registry import load_model
        >>> m = load_model("models:/cvplatform@champion")  # doctest: +SKIP
        >>> m.info.version, m.contract.class_names  # doctest: +SKIP
        ('3', ('circle', 'square', 'triangle'))
    """
    ref = parse_model_uri(model_uri)
    c = client or RegistryClient.from_params(params, root, tracking_uri=tracking_uri)
    mv = _resolve(c, ref)
    version = str(mv.version)
    tags = dict(mv.tags or {})
    expected = tags.get(TAG_SHA256)
    if not expected:
        raise UnmanagedVersionError(
            f"version {version} of {ref.name!r} has no {TAG_SHA256!r} tag, so its artifact cannot be verified; "
            "it was not registered by cvplatform. Register the model with `cvplatform registry register`."
        )
    with tempfile.TemporaryDirectory(prefix="cvplatform-load-") as tmp:
        path = download_onnx(c, ref.name, version, tmp)
        data = path.read_bytes()
    actual = sha256_bytes(data)
    if actual != expected:
        raise ArtifactIntegrityError(
            f"refusing to load version {version} of {ref.name!r} ({model_uri}): the artifact in the store has "
            f"sha256 {actual}, but {expected} was registered. The file was modified after registration (or "
            "the store is corrupt). Do not serve it: re-register the exported model "
            "(`cvplatform registry register`) or roll back to a verified version."
        )
    info = VersionInfo(
        name=ref.name, version=version, aliases=tuple(sorted(mv.aliases or [])), sha256=actual,
        approval=tags.get(TAG_APPROVAL_STATUS), run_id=mv.run_id, source=str(mv.source), tags=tags,
    )
    # only the verified bytes are opened (never the file in the store)
    model = open_model(data, name=ref.name, version=version, uri=f"{ref.uri} (version {version})", sha256=actual,
                       info=info, providers=list(providers or [CPU]),
                       options=sess_options if sess_options is not None else session_options())
    model.uri = info.uri
    return model


__all__ = ["LoadedModel", "ModelRef", "VersionInfo", "download_onnx", "load_model", "parse_model_uri"]
