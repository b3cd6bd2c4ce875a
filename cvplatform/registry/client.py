"""A retrying MLflow client for the registry, and the tag names every registry module shares.

:class:`RegistryClient` wraps the ``MlflowClient`` of a
:class:`~cvplatform.mlflow_store.MlflowStore` (the one MLflow adapter: retries go
through its tenacity-based :meth:`~cvplatform.mlflow_store.MlflowStore.call`;
``is_transient``, ``short_error`` and ``RetryPolicy`` live there and are re-exported
here). Every call to
the tracking server goes through :meth:`RegistryClient.call`, which retries
*transient* failures with exponential backoff and, once the budget is spent,
raises :class:`~cvplatform.registry.errors.RegistryUnavailableError` naming the
tracking URI and what to check.

**What is retried** (:func:`is_transient`): connection errors and timeouts
(``requests`` / ``urllib3`` / socket errors anywhere in the exception chain, which
is how MLflow's REST client reports them), HTTP 408 / 429 / 5xx answers, and
``MlflowException`` codes ``TEMPORARILY_UNAVAILABLE`` (also what MLflow's SQL
store raises for a locked or unreachable database), ``DEADLINE_EXCEEDED``,
``REQUEST_LIMIT_EXCEEDED``, ``RESOURCE_EXHAUSTED``. Never retried: other 4xx
answers such as ``RESOURCE_DOES_NOT_EXIST`` or ``INVALID_PARAMETER_VALUE``: they
propagate at once and the caller turns them into a specific error.

**A predictable budget.** MLflow's HTTP layer retries on its own (urllib3,
``MLFLOW_HTTP_REQUEST_MAX_RETRIES``, default 7 with backoff factor 2: minutes).
During registry calls this client sets ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` to
``registry.retry.http_max_retries`` (default 0) and ``MLFLOW_HTTP_REQUEST_TIMEOUT``
to ``registry.retry.request_timeout_s``, so one call takes at most
``attempts * (http_max_retries + 1)`` HTTP requests, each bounded by the timeout,
plus the waits of :meth:`RetryPolicy.delays` (:attr:`RetryPolicy.max_wait_s`).
The previous values are restored afterwards.

**Process-wide settings.** MLflow reads the HTTP settings from environment
variables and some of its code paths (``mlflow.onnx.log_model``, the SQL registry
resolving ``models:/<model_id>``) use the global tracking URI, so each call sets
both for its duration through MLflow's public API and restores the caller's state
(:meth:`RegistryClient.fluent`).
Do not run registry calls for *different* tracking URIs concurrently in threads
of one process.

**Non-idempotent calls** (creating a model version) pass ``recover=``: before a
retry the client first looks for what the failed attempt may already have
created (by a unique tag), so a lost response never makes a duplicate.

mlflow is imported inside functions: importing this module is cheap.
"""

from __future__ import annotations

import getpass
import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cvplatform.errors import RegistryError
from cvplatform.mlflow_store import (
    MlflowStore,
    RetriesExhausted,
    RetryPolicy,
    is_transient,
    short_error,
)
from cvplatform.registry.errors import (
    RegistryUnavailableError,
    UnknownModelError,
    UnknownVersionError,
)

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel
    from mlflow.tracking import MlflowClient

    from cvplatform.config import Params, RegistryParams

log = logging.getLogger(__name__)
T = TypeVar("T")

ENV_USER = "CVPLATFORM_USER"

# --------------------------------------------------------------------------- tag names
#: Who registered the version (``$CVPLATFORM_USER`` or the OS user).
TAG_AUTHOR = "author"
TAG_TRAIN_RUN = "lineage.train_run_id"
TAG_GIT_COMMIT = "lineage.git_commit"
TAG_DATA_HASH = "lineage.data_hash"
TAG_PARAMS_HASH = "lineage.params_hash"
TAG_AIRFLOW_RUN = "lineage.airflow_run_id"
TAG_OVERRIDES = "lineage.overrides"
TAG_SHA256 = "artifact.sha256"
TAG_PRECISION = "artifact.precision"
TAG_GATES_PASSED = "gates.passed"
TAG_GATES_FAILED = "gates.failed_must_pass"
TAG_GATES_WARNINGS = "gates.warnings"
TAG_GATES_SUMMARY = "gates.summary"
TAG_ACCURACY = "metrics.clean_accuracy"
TAG_MACRO_F1 = "metrics.clean_macro_f1"
TAG_CLASS_NAMES = "model.class_names"
TAG_INPUT_SIZE = "model.input_size"
#: What the model predicts (``classification``): part of its compatibility with the champion.
TAG_TASK = "model.task"
#: The preprocessing contract without the class names (JSON): input size, mean, std, layout, ...
TAG_CONTRACT = "model.contract"
#: The Airflow user who triggered the run that registered the version (may not approve it).
TAG_TRIGGERED_BY = "lineage.triggered_by"
#: sha256 of the evaluation gate report the registration is based on.
TAG_GATE_REPORT_SHA256 = "gates.report_sha256"
TAG_APPROVAL_STATUS = "approval.status"
TAG_APPROVAL_REVIEWER = "approval.reviewer"
TAG_APPROVAL_TIME = "approval.time"
TAG_APPROVAL_COMMENT = "approval.comment"
TAG_REGISTRATION_ID = "registration.id"
TAG_REGISTRATION_STATE = "registration.state"
TAG_REGISTRATION_TIME = "registration.time"
TAG_PREVIOUS_CHAMPION = "champion.previous"

STATUS_PENDING = "pending"
STATUS_APPROVED = "approved"
STATUS_REJECTED = "rejected"
STATE_VERIFYING = "verifying"
STATE_COMPLETE = "complete"

#: File name of the ONNX graph inside an MLflow ONNX-flavour model.
ONNX_FILE = "model.onnx"

def current_user() -> str:
    """Who is acting: ``$CVPLATFORM_USER`` if set, else the OS user (``"unknown"`` if none).

    Example:
        >>> import os; os.environ["CVPLATFORM_USER"] = "alice"
        >>> current_user()
        'alice'
    """
    env = os.environ.get(ENV_USER, "").strip()
    if env:
        return env
    try:
        return getpass.getuser()
    except Exception:  # no login name (e.g. container without passwd entry)
        return "unknown"


def utc_now() -> str:
    """The current UTC time as ISO 8601 with microseconds, e.g. ``2025-01-31T12:00:00.123456+00:00``."""
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="microseconds")


# --------------------------------------------------------------------------- classification
def _is_mlflow_error(exc: BaseException) -> bool:
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException)


def is_not_found(exc: BaseException) -> bool:
    """True for MLflow's RESOURCE_DOES_NOT_EXIST / NOT_FOUND answers."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and str(exc.error_code) in {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}


def is_already_exists(exc: BaseException) -> bool:
    """True for MLflow's RESOURCE_ALREADY_EXISTS / ALREADY_EXISTS answers."""
    from mlflow.exceptions import MlflowException

    return isinstance(exc, MlflowException) and str(exc.error_code) in {"RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"}


# --------------------------------------------------------------------------- client
class RegistryClient:
    """An MLflow client whose calls retry transient failures within a fixed budget.

    Any ``MlflowClient`` method is available as an attribute and runs through
    :meth:`call` (e.g. ``client.get_model_version(name, "3")``); the helpers
    :meth:`model`, :meth:`version`, :meth:`version_by_alias` and :meth:`versions`
    also turn "does not exist" into specific errors.

    Args:
        tracking_uri: MLflow tracking URI (also used as the registry URI).
        retry: The retry budget.
        sleep: How to wait between tries (``time.sleep``).

    Example:
        >>> client = RegistryClient("sqlite:///mlflow.db", RetryPolicy(attempts=3))  # doctest: +SKIP
        >>> client.version("cvplatform", 1).tags["approval.status"]  # doctest: +SKIP
        'pending'
    """

    def __init__(
        self, tracking_uri: str, retry: RetryPolicy | None = None, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.uri = tracking_uri
        self.retry = retry or RetryPolicy()
        self.store = MlflowStore(tracking_uri, tracking_uri, self.retry)
        self._sleep = sleep
        self._client: MlflowClient | None = None

    @classmethod
    def from_params(
        cls,
        params: Params | RegistryParams | None = None,
        root: str | os.PathLike[str] | None = None,
        *,
        tracking_uri: str | None = None,
    ) -> RegistryClient:
        """A client on ``tracking_uri`` (default :func:`cvplatform.tracking.tracking_uri` of ``root``).

        Example:
            >>> from cvplatform.config import Params
            >>> RegistryClient.from_params(Params(), "/srv/project").uri  # doctest: +SKIP
            'sqlite:////srv/project/mlflow.db'
        """
        from cvplatform.config import Params, RegistryParams
        from cvplatform.tracking import tracking_uri as _tracking_uri

        if isinstance(params, Params):
            reg = params.registry
        elif isinstance(params, RegistryParams):
            reg = params
        else:
            reg = RegistryParams()
        uri = tracking_uri or _tracking_uri(Path(root or os.getcwd()))
        return cls(uri, RetryPolicy.from_params(reg.retry))

    # ---------------------------------------------------------------- plumbing
    @property
    def mlflow(self) -> MlflowClient:
        """The underlying ``MlflowClient`` (no retries: prefer the wrapped methods)."""
        if self._client is None:
            self._client = self.store.client()
        return self._client

    def http_settings(self) -> AbstractContextManager[None]:
        """Set MLflow's per-request retries and timeout to the policy's for the duration."""
        return self.store.http_settings()

    def fluent(self) -> AbstractContextManager[None]:
        """Point MLflow's global tracking/registry URIs at this client's URI for the duration.

        Needed by MLflow code that does not take a URI: ``mlflow.onnx.log_model``, and the
        SQL registry store resolving a ``models:/<model_id>`` source. See
        :meth:`cvplatform.mlflow_store.MlflowStore.active` (public MLflow API only; the
        caller's URIs are unchanged afterwards).
        """
        return self.store.active()

    def call(self, what: str, fn: Callable[[], T], *, recover: Callable[[], T | None] | None = None) -> T:
        """Run ``fn()``, retrying transient failures with exponential backoff.

        Args:
            what: What the call does, for logs and errors (e.g. "get version 3 of 'cvplatform'").
            fn: The call.
            recover: For non-idempotent calls: run before each retry; when it returns
                something other than None (what the failed attempt already did), that is
                returned instead of calling ``fn`` again.

        Raises:
            RegistryUnavailableError: every try failed with a transient error.
            RegistryError: MLflow refused the call (a 4xx other than "does not exist" / "already exists").
            MlflowException: RESOURCE_DOES_NOT_EXIST / RESOURCE_ALREADY_EXISTS, at once, for the caller
                to turn into a specific error.
            Exception: any other non-transient error, at once.

        Example:
            >>> client.call("list models", lambda: client.mlflow.search_registered_models())  # doctest: +SKIP
        """
        try:
            return self.store.call(what, fn, recover=recover, sleep=self._sleep, fluent=True)
        except RetriesExhausted as exc:
            raise RegistryUnavailableError(
                f"cannot reach the MLflow tracking server at {self.uri}: {exc}. Check that the server is running "
                f"and reachable (e.g. `curl {self.uri.rstrip('/')}/health` for an HTTP server), that "
                "MLFLOW_TRACKING_URI points at it, and that its database is up; registry.retry.attempts / "
                "backoff_s in params.yaml set how long cvplatform keeps trying."
            ) from exc.last
        except RegistryError:
            raise
        except Exception as exc:
            if _is_mlflow_error(exc) and not (is_not_found(exc) or is_already_exists(exc)):
                raise RegistryError(
                    f"MLflow at {self.uri} refused to {what}: {short_error(exc)}. Check the model name / "
                    "version / alias, and that this user may write to the registry."
                ) from exc
            raise  # "does not exist" / "already exists": the caller turns it into a specific error

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        target = getattr(self.mlflow, name)
        if not callable(target):
            return target

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            shown = ", ".join([*(repr(a) for a in args[:3]), *(f"{k}=..." for k in kwargs)])
            return self.call(f"{name}({shown})", lambda: target(*args, **kwargs))

        wrapped.__name__ = name
        return wrapped

    # ---------------------------------------------------------------- lookups with clear errors
    def model(self, name: str) -> RegisteredModel:
        """The registered model ``name``.

        Raises:
            UnknownModelError: no such registered model (the message lists the existing ones).
        """
        try:
            return self.call(f"get registered model {name!r}", lambda: self.mlflow.get_registered_model(name))
        except Exception as exc:
            if not is_not_found(exc):
                raise
        try:
            names = sorted(m.name for m in self.call(
                "list registered models", lambda: self.mlflow.search_registered_models(max_results=50)))
        except Exception:  # only for the hint in the message
            names = []
        known = f" Registered models: {', '.join(names)}." if names else " The registry has no models yet."
        raise UnknownModelError(
            f"registered model {name!r} does not exist at {self.uri}.{known} Check the name (params "
            "registry.model_name) and MLFLOW_TRACKING_URI, or register a version first with "
            "`cvplatform registry register`."
        ) from None

    def version(self, name: str, version: str | int) -> ModelVersion:
        """Version ``version`` of model ``name``.

        Raises:
            UnknownModelError: no such registered model.
            UnknownVersionError: the model exists but not that version (the message lists them).
        """
        v = str(version).strip()
        if not v.isdigit():
            raise UnknownVersionError(
                f"model version {version!r} of {name!r} is not a version number; use an integer such as 3 "
                "(see `cvplatform registry show NAME`)."
            )
        try:
            return self.call(f"get version {v} of {name!r}", lambda: self.mlflow.get_model_version(name, v))
        except Exception as exc:
            if not is_not_found(exc):
                raise
        self.model(name)  # raises UnknownModelError when the model itself is missing
        have = [mv.version for mv in self.versions(name)]
        raise UnknownVersionError(
            f"model {name!r} has no version {v} at {self.uri} (versions: {', '.join(map(str, have)) or 'none'}). "
            "Check the number with `cvplatform registry show NAME`."
        ) from None

    def version_by_alias(self, name: str, alias: str) -> ModelVersion | None:
        """The version ``name@alias`` points at, or None when the alias is not set.

        Raises:
            UnknownModelError: no such registered model.
        """
        model = self.model(name)
        target = (model.aliases or {}).get(alias)
        if target is None:
            return None
        return self.version(name, target)

    def versions(self, name: str, extra_filter: str | None = None) -> list[ModelVersion]:
        """All versions of ``name`` (optionally filtered, e.g. ``tags.`artifact.sha256` = '...'``), oldest first."""
        flt = f"name = '{_quote(name)}'" + (f" and {extra_filter}" if extra_filter else "")
        out: list[ModelVersion] = []
        token: str | None = None
        while True:
            page = self.call(
                f"search versions of {name!r}",
                lambda tok=token: self.mlflow.search_model_versions(flt, max_results=200, page_token=tok),
            )
            out.extend(page)
            token = getattr(page, "token", None)
            if not token:
                break
        return sorted(out, key=lambda mv: int(mv.version))


def _quote(value: str) -> str:
    """Escape a value for an MLflow filter string literal."""
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def tag_filter(key: str, value: str) -> str:
    """A search filter clause on a model-version tag (keys with dots are back-quoted).

    Example:
        >>> tag_filter("artifact.sha256", "ab12")
        "tags.`artifact.sha256` = 'ab12'"
    """
    return f"tags.`{key}` = '{_quote(value)}'"


__all__ = [
    "ENV_USER",
    "ONNX_FILE",
    "RegistryClient",
    "RetryPolicy",
    "current_user",
    "is_already_exists",
    "is_not_found",
    "is_transient",
    "short_error",
    "tag_filter",
    "utc_now",
]
