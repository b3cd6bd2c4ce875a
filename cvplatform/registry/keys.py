"""The platform key that signs the registry's audit trail (HMAC-SHA256).

Where the key comes from, first match wins:

1. ``$CVPLATFORM_AUDIT_KEY``: the secret itself (at least 32 characters), e.g. from a
   secrets manager injected into the Airflow workers, the serving replicas and the
   reviewers' environment;
2. ``$CVPLATFORM_AUDIT_KEY_FILE``: a file holding the secret (at least 32 bytes; surrounding
   whitespace ignored), e.g. a mounted Kubernetes / Docker secret;
3. the **embedded local store** only (``sqlite:///.../mlflow.db``, a local ``file:`` store):
   ``.cvplatform/audit.key`` next to the database, created with mode 0600 on the first
   write. It lives in the same trust boundary as the database file it protects.

A tracking server (``http(s)://``) or any other store needs 1 or 2: writing or verifying
an event without a key raises :class:`AuditKeyError` (a configuration error, exit 2).
Every process that records or verifies decisions for a registry must use the same key;
losing or rotating it makes the existing history unverifiable (and so unpromotable) by
design. See ``docs/adr/0007-audit-trail-integrity-and-identity.md``.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from cvplatform.errors import ConfigError

ENV_AUDIT_KEY = "CVPLATFORM_AUDIT_KEY"
ENV_AUDIT_KEY_FILE = "CVPLATFORM_AUDIT_KEY_FILE"
#: The embedded store's key, relative to the folder holding the database.
EMBEDDED_KEY = Path(".cvplatform") / "audit.key"
MIN_KEY_BYTES = 32


class AuditKeyError(ConfigError):
    """No usable platform key for the audit trail (missing, unreadable or too short)."""


@dataclass(frozen=True)
class AuditKey:
    """The secret plus where it came from (never printed) and a short public id.

    Attributes:
        secret: The HMAC key bytes.
        source: Where it was read (an environment variable or a file path).
        kid: First 12 hex digits of sha256(secret): recorded in each event, so a wrong key is
            told apart from an edited event.
    """

    secret: bytes
    source: str
    kid: str

    def __repr__(self) -> str:  # never show the secret
        return f"AuditKey(source={self.source!r}, kid={self.kid!r})"


def _make(secret: bytes, source: str) -> AuditKey:
    if len(secret) < MIN_KEY_BYTES:
        raise AuditKeyError(
            f"{source}: the audit key is {len(secret)} bytes; it needs at least {MIN_KEY_BYTES} (e.g. "
            "`python -c 'import secrets; print(secrets.token_hex(32))'`)."
        )
    return AuditKey(secret, source, hashlib.sha256(secret).hexdigest()[:12])


def embedded_key_path(tracking_uri: str) -> Path | None:
    """Where the embedded store keeps its key, or None for a store that is not a local file.

    Example:
        >>> embedded_key_path("sqlite:////srv/project/mlflow.db").as_posix()
        '/srv/project/.cvplatform/audit.key'
        >>> embedded_key_path("http://mlflow:5000") is None
        True
    """
    uri = str(tracking_uri)
    if uri.startswith("sqlite:///"):
        db = Path(unquote(uri[len("sqlite:///"):]).split("?", 1)[0])
        return db.parent / EMBEDDED_KEY
    if uri.startswith("file:"):
        return Path(unquote(urlparse(uri).path)) / EMBEDDED_KEY
    if "://" not in uri and uri:
        return Path(uri) / EMBEDDED_KEY
    return None


def _read_file(path: Path, source: str) -> AuditKey:
    try:
        data = path.read_bytes().strip()
    except OSError as exc:
        raise AuditKeyError(f"{source}: cannot read the audit key ({exc.strerror or exc}).") from None
    return _make(data, source)


def load_key(tracking_uri: str, *, create: bool = False) -> AuditKey:
    """The platform key for the registry at ``tracking_uri`` (see the module docstring).

    Args:
        tracking_uri: The registry's URI (decides whether an embedded key may be used).
        create: Create the embedded store's key when it does not exist yet (writers do; verifiers don't).

    Raises:
        AuditKeyError: no key is configured (tracking server), the file is unreadable, or the key is too short.

    Example:
        >>> load_key("sqlite:////tmp/p/mlflow.db", create=True).kid  # doctest: +SKIP
        '3f1c0a9b2e7d'
    """
    env = os.environ.get(ENV_AUDIT_KEY, "")
    if env.strip():
        return _make(env.strip().encode("utf-8"), f"${ENV_AUDIT_KEY}")
    env_file = os.environ.get(ENV_AUDIT_KEY_FILE, "").strip()
    if env_file:
        return _read_file(Path(env_file), f"${ENV_AUDIT_KEY_FILE}={env_file}")
    path = embedded_key_path(tracking_uri)
    if path is None:
        raise AuditKeyError(
            f"the registry at {tracking_uri} needs a platform key to sign and verify its audit trail: set "
            f"{ENV_AUDIT_KEY_FILE}=/path/to/secret (or {ENV_AUDIT_KEY}) to the same secret in every process that "
            "registers, decides, promotes or serves (see docs/adr/0007-audit-trail-integrity-and-identity.md)."
        )
    if not path.is_file():
        if not create:
            raise AuditKeyError(
                f"{path}: the embedded store's audit key does not exist, so its history cannot be verified (was "
                f"it deleted, or is this a copy of the database without it?). Restore the file, or set {ENV_AUDIT_KEY_FILE}."
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # created concurrently by another writer
            return _read_file(path, str(path))
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    return _read_file(path, str(path))


__all__ = ["ENV_AUDIT_KEY", "ENV_AUDIT_KEY_FILE", "AuditKey", "AuditKeyError", "embedded_key_path", "load_key"]
