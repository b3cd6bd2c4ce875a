"""Who acts on the registry: Unicode-normalised names and authenticated identities.

**Names.** Every name the registry compares (reviewer, author, the user who triggered
the run, ``registry.reviewers``) goes through :func:`normalize_name`: Unicode NFKC
(fullwidth ``ａｌｉｃｅ`` becomes ``alice``), removal of invisible and control
characters (Unicode categories Cf and Cc, e.g. ``U+200B`` zero-width space), whitespace
collapsed, then case-folded. :func:`check_name` refuses names that mix scripts
(``аlice`` with a Cyrillic ``а``), and :func:`same_person` also compares a
*skeleton* that maps the usual Cyrillic/Greek look-alikes to Latin, so a
single-script look-alike of the author (``аӏісе``) counts as the author.

**Identities** (:func:`resolve_reviewer`), by where the registry lives:

* **Tracking server** (``http(s)://``): the reviewer is the user the server
  authenticated (MLflow's auth app, ``mlflow server --app-name basic-auth``; the
  client sends ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``), read from
  ``GET /api/2.0/mlflow/users/current``. A ``--reviewer`` that names someone else is
  refused; a server without authentication cannot establish identity, so decisions
  are refused there.
* **Airflow** (the approval task): the reviewer is the Airflow UI's logged-in user who
  answered. On a tracking server the answer is recorded by the pipeline's service
  account, which must be authenticated *and* listed in ``registry.trusted_services``.
* **Embedded local store** (SQLite file, the default): no server authenticates anybody;
  a free-text ``--reviewer`` is accepted and recorded as ``self-declared``.

See ``docs/adr/0007-audit-trail-integrity-and-identity.md``.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

from cvplatform.registry.errors import IdentityError, InvalidReviewerError

if TYPE_CHECKING:  # pragma: no cover
    from cvplatform.registry.client import RegistryClient

log = logging.getLogger(__name__)

Source = Literal["mlflow-auth", "airflow", "self-declared"]
CURRENT_USER_ENDPOINT = "/api/2.0/mlflow/users/current"

#: Scripts that may share one name (Japanese mixes Han, Hiragana and Katakana; Korean mixes Han and Hangul).
_COMPATIBLE_SCRIPTS: tuple[frozenset[str], ...] = (
    frozenset({"CJK", "HIRAGANA", "KATAKANA"}),
    frozenset({"CJK", "HANGUL"}),
)
#: Look-alikes of Latin letters in other scripts (the common ones of Unicode's confusables list).
_SKELETON = str.maketrans({
    # Cyrillic
    "а": "a", "в": "b", "е": "e", "ё": "e", "һ": "h", "і": "i", "ї": "i", "ј": "j", "к": "k", "ӏ": "l",
    "м": "m", "н": "h", "о": "o", "р": "p", "с": "c", "ѕ": "s", "т": "t", "у": "y", "ү": "y", "х": "x",
    "ԁ": "d", "ԛ": "q", "ԝ": "w", "ɡ": "g",
    # Greek
    "α": "a", "β": "b", "ε": "e", "η": "n", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
    "υ": "u", "χ": "x", "ω": "w", "γ": "y",
    # digits and Latin letters that read alike
    "0": "o", "1": "l", "|": "l", "ı": "i",
})


def normalize_name(name: str) -> str:
    """The comparison key of a name: NFKC, invisible/control characters removed, whitespace collapsed, case-folded.

    Example:
        >>> normalize_name(" Mallory\\u200b ") == normalize_name("ＭＡＬＬＯＲＹ") == "mallory"
        True
    """
    text = unicodedata.normalize("NFKC", str(name or ""))
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Cc", "Cs", "Co"))
    text = " ".join(text.split())
    return unicodedata.normalize("NFKC", text.casefold())


def display_name(name: str) -> str:
    """The name as recorded: NFKC with invisible/control characters removed (case kept).

    Example:
        >>> display_name("Bob\\u200d")
        'Bob'
    """
    text = unicodedata.normalize("NFKC", str(name or ""))
    text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Cc", "Cs", "Co"))
    return " ".join(text.split())


def _script(ch: str) -> str | None:
    """The script of a letter (first word of its Unicode name), None for non-letters."""
    if not unicodedata.category(ch).startswith("L"):
        return None
    try:
        first = unicodedata.name(ch).split()[0]
    except ValueError:
        return "UNKNOWN"
    return first


def scripts(name: str) -> set[str]:
    """The scripts of the letters of ``name`` after NFKC (digits and punctuation have none).

    Example:
        >>> sorted(scripts("alice")), sorted(scripts("\\u0430lice"))
        (['LATIN'], ['CYRILLIC', 'LATIN'])
    """
    return {s for ch in unicodedata.normalize("NFKC", name) if (s := _script(ch)) is not None}


def skeleton(name: str) -> str:
    """:func:`normalize_name` with look-alike letters of other scripts mapped to Latin.

    Example:
        >>> skeleton("\\u0430\\u04cf\\u0456\\u0441\\u0435") == skeleton("alice")
        True
    """
    return normalize_name(name).translate(_SKELETON)


def check_name(name: str, what: str = "reviewer") -> str:
    """Refuse an empty or mixed-script name; return its display form.

    Raises:
        InvalidReviewerError: the name is empty after normalisation, or mixes scripts
            (e.g. Latin and Cyrillic: a look-alike of another name).

    Example:
        >>> check_name("bob")
        'bob'
    """
    shown = display_name(name)
    if not normalize_name(name):
        raise InvalidReviewerError(f"the {what} name {name!r} is empty once invisible characters are removed; "
                                   "give a real user name.")
    found = scripts(shown)
    if len(found) > 1 and not any(found <= ok for ok in _COMPATIBLE_SCRIPTS):
        letters = ", ".join(f"{ch!r} {unicodedata.name(ch, '?')}" for ch in shown
                            if _script(ch) not in (None, "LATIN"))
        raise InvalidReviewerError(
            f"the {what} name {name!r} mixes scripts ({', '.join(sorted(found))}: {letters}); mixed-script names "
            "are refused because they imitate other users. Use the user name exactly as the identity provider has it."
        )
    return shown


def same_person(a: str | None, b: str | None) -> bool:
    """True when two names denote the same user (normalised, or look-alike skeletons equal).

    Example:
        >>> same_person("alice", "ＡＬＩＣＥ"), same_person("alice", "bob")
        (True, False)
    """
    if not a or not b:
        return False
    return normalize_name(a) == normalize_name(b) or skeleton(a) == skeleton(b)


@dataclass(frozen=True)
class Identity:
    """Who decided, and how the registry knows.

    Attributes:
        name: The user name as recorded (:func:`display_name`).
        source: ``mlflow-auth`` (the tracking server authenticated the caller), ``airflow``
            (the Airflow UI's logged-in user, recorded by the pipeline) or ``self-declared``
            (free text on the embedded local store).
        verified: True when an authenticating service vouches for ``name``.
        recorded_by: The authenticated tracking-server user that wrote the event (Airflow), else None.
        note: One line saying how the identity was established.
    """

    name: str
    source: Source
    verified: bool
    recorded_by: str | None = None
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def is_tracking_server(uri: str) -> bool:
    """True for an ``http(s)://`` tracking server (identities are authenticated there)."""
    return str(uri).startswith(("http://", "https://"))


def is_embedded_store(uri: str) -> bool:
    """True for the embedded local store (a SQLite file or a local ``file:`` folder)."""
    u = str(uri)
    return u.startswith(("sqlite:", "file:")) or "://" not in u


def authenticated_user(client: RegistryClient) -> str | None:
    """The user the tracking server authenticated for this client's credentials, or None without an auth app.

    Raises:
        IdentityError: the server refused the credentials (401/403).
        RegistryUnavailableError: the server cannot be reached.
    """
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    def call() -> Any:
        return http_request(get_default_host_creds(client.uri), CURRENT_USER_ENDPOINT, "GET",
                            max_retries=0, timeout=client.retry.request_timeout_s, raise_on_status=False)

    resp = client.call("ask the tracking server who is authenticated", call)
    if resp.status_code in (401, 403):
        raise IdentityError(
            f"the tracking server at {client.uri} refused the credentials (HTTP {resp.status_code}). Set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to your own account."
        )
    if resp.status_code != 200:
        return None  # no auth app: the endpoint does not exist
    try:
        user = (resp.json() or {}).get("user") or {}
    except ValueError:
        return None
    name = user.get("username")
    return str(name) if name else None


def resolve_reviewer(
    client: RegistryClient, declared: str | None, *, airflow_user: str | None = None,
    trusted_services: tuple[str, ...] | list[str] = (), verb: str = "decide",
) -> Identity:
    """Establish who is deciding (see the module docstring for the rules).

    Args:
        client: The registry client (its URI says embedded store or tracking server).
        declared: The ``--reviewer`` / ``reviewer=`` name given, if any.
        airflow_user: The Airflow UI user who answered the approval task (delegated identity).
        trusted_services: ``registry.trusted_services``: tracking-server users allowed to record
            an Airflow reviewer's decision.
        verb: For messages (``approve`` / ``reject``).

    Raises:
        IdentityError: identity cannot be established, or ``declared`` is not the authenticated user.
        InvalidReviewerError: empty or mixed-script name.

    Example:
        >>> resolve_reviewer(client, "bob").source  # embedded store  # doctest: +SKIP
        'self-declared'
    """
    if airflow_user is not None:
        name = check_name(airflow_user, "reviewer")
        if is_tracking_server(client.uri):
            service = authenticated_user(client)
            if service is None:
                raise IdentityError(
                    f"cannot record {name}'s decision from Airflow: the tracking server at {client.uri} does not "
                    "authenticate users, so the registry cannot tell the pipeline's service account from anyone else. "
                    "Run it with `mlflow server --app-name basic-auth` and give the Airflow workers their own account."
                )
            if not any(same_person(service, t) for t in trusted_services):
                raise IdentityError(
                    f"cannot record {name}'s decision from Airflow: the tracking server authenticated this worker as "
                    f"{service!r}, which is not in registry.trusted_services ({', '.join(trusted_services) or 'empty'}). "
                    "Add the pipeline's service account there (params.yaml) if it may record Airflow reviewers."
                )
            return Identity(name, "airflow", True, service,
                            f"logged in to the Airflow UI; recorded by the tracking-server account {service!r}")
        return Identity(name, "airflow", False, None,
                        "logged in to the Airflow UI (embedded store: the registry cannot check the worker)")
    if is_tracking_server(client.uri):
        user = authenticated_user(client)
        if user is None:
            raise IdentityError(
                f"cannot {verb}: the tracking server at {client.uri} does not authenticate users, so the registry "
                "cannot know who you are. Run it with `mlflow server --app-name basic-auth` and set "
                "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD; a free-text --reviewer is accepted only on "
                "the embedded local store."
            )
        if declared and normalize_name(declared) and not same_person(declared, user):
            raise IdentityError(
                f"--reviewer {declared!r} is not you: the tracking server at {client.uri} authenticated you as "
                f"{user!r}. Omit --reviewer, or log in as {declared!r} (MLFLOW_TRACKING_USERNAME)."
            )
        return Identity(check_name(user), "mlflow-auth", True, None,
                        f"authenticated by the tracking server at {client.uri}")
    if not is_embedded_store(client.uri):
        raise IdentityError(
            f"cannot {verb}: {client.uri} is neither the embedded local store nor a tracking server with "
            "authentication, so nobody's identity can be established. Point MLFLOW_TRACKING_URI at a tracking "
            "server run with `--app-name basic-auth`."
        )
    if not declared or not normalize_name(declared):
        raise InvalidReviewerError(
            f"cannot {verb}: no reviewer given. Pass --reviewer NAME (Python: reviewer=...); on the embedded local "
            "store the name is recorded as self-declared."
        )
    return Identity(check_name(declared), "self-declared", False, None,
                    "self-declared on the embedded local store (no server authenticates users)")


def resolve_actor(client: RegistryClient, declared: str | None = None) -> tuple[str, dict[str, Any]]:
    """Who performs a non-review action (register, promote, rollback): the authenticated user on a
    tracking server with authentication, else ``declared`` / ``$CVPLATFORM_USER`` / the OS user.

    Returns:
        ``(name, identity dict)`` for the audit event.
    """
    from cvplatform.registry.client import current_user

    if is_tracking_server(client.uri):
        try:
            user = authenticated_user(client)
        except IdentityError:
            raise
        if user is not None:
            return display_name(user), {"source": "mlflow-auth", "verified": True}
    name = display_name(declared or current_user()) or "unknown"
    return name, {"source": "self-declared", "verified": False}


__all__ = [
    "Identity",
    "authenticated_user",
    "check_name",
    "display_name",
    "is_embedded_store",
    "is_tracking_server",
    "normalize_name",
    "resolve_actor",
    "resolve_reviewer",
    "same_person",
    "scripts",
    "skeleton",
]
