"""Load a registered model for inference, refusing any artifact that is not byte-for-byte what was registered.

:func:`load_model` resolves ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``,
downloads the version's ``model.onnx`` from the artifact store, checks its sha256
against the version's ``artifact.sha256`` tag (written at registration from the
export stage's hash), and only then opens it in onnxruntime and reads its
preprocessing contract from the ONNX ``metadata_props``.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cvplatform.errors import ModelError, RegistryError
from cvplatform.registry.client import (
    ONNX_FILE,
    TAG_APPROVAL_STATUS,
    TAG_SHA256,
    RegistryClient,
)
from cvplatform.registry.errors import ArtifactIntegrityError, UnknownVersionError, UnmanagedVersionError
from cvplatform.utils.io import sha256_bytes

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime

    from cvplatform.config import Params
    from cvplatform.preprocess import PreprocessContract

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


@dataclass(frozen=True)
class LoadedModel:
    """A verified registry model, ready for inference.

    Attributes:
        session: onnxruntime session on the verified bytes.
        contract: How to preprocess images for it (and the class names).
        info: Which version it is, its aliases, sha256 and tags.

    Example:
        >>> m = load_model("models:/cvplatform@champion")  # doctest: +SKIP
        >>> from cvplatform.preprocess import preprocess  # doctest: +SKIP
        >>> logits = m.session.run(None, {m.input_name: preprocess(images, m.contract)})[0]  # doctest: +SKIP
    """

    session: onnxruntime.InferenceSession
    contract: PreprocessContract
    info: VersionInfo
    input_name: str
    output_name: str

    def __iter__(self) -> Any:  # allows `session, contract, info = load_model(...)`
        return iter((self.session, self.contract, self.info))


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
        sess_options: an ``onnxruntime.SessionOptions`` (threads, spinning, ...); default: quiet logging.

    Returns:
        A :class:`LoadedModel`: onnxruntime session, preprocessing contract, version info.

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
    import onnxruntime as ort

    from cvplatform.preprocess import PreprocessContract

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
    where = f"{ref.uri} (version {version})"
    opts = sess_options
    if opts is None:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(data, sess_options=opts, providers=list(providers or ["CPUExecutionProvider"]))
    except Exception as exc:
        raise ModelError(f"{where}: onnxruntime cannot load the verified model ({' '.join(str(exc).split())[:300]})."
                         ) from None
    meta = dict(session.get_modelmeta().custom_metadata_map or {})
    contract = PreprocessContract.from_metadata(meta, source=f"{where} (ONNX metadata_props)")
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if len(inputs) != 1 or not outputs:
        raise ModelError(f"{where}: expected one image input and one logits output, found inputs "
                         f"{[i.name for i in inputs]} and outputs {[o.name for o in outputs]}.")
    info = VersionInfo(
        name=ref.name, version=version, aliases=tuple(sorted(mv.aliases or [])), sha256=actual,
        approval=tags.get(TAG_APPROVAL_STATUS), run_id=mv.run_id, source=str(mv.source), tags=tags,
    )
    return LoadedModel(session, contract, info, inputs[0].name, outputs[0].name)


__all__ = ["LoadedModel", "ModelRef", "VersionInfo", "download_onnx", "load_model", "parse_model_uri"]
