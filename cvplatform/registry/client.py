"""A retrying MLflow client for the registry, and the tag names every registry module shares.

:class:`RegistryClient` wraps :class:`mlflow.tracking.MlflowClient`. Every call to
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
both for its duration and restores them exactly (:meth:`RegistryClient.fluent`).
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
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cvplatform.errors import RegistryError
from cvplatform.registry.errors import (
    RegistryUnavailableError,
    UnknownModelError,
    UnknownVersionError,
)

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.entities.model_registry import ModelVersion, RegisteredModel
    from mlflow.tracking import MlflowClient

    from cvplatform.config import Params, RegistryParams, RegistryRetryParams

log = logging.getLogger(__name__)
T = TypeVar("T")

ENV_USER = "CVPLATFORM_USER"
ENV_HTTP_MAX_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
ENV_HTTP_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"

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

_TRANSIENT_CODES = frozenset(
    {"TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"}
)
_TRANSIENT_STATUS = frozenset({408, 429})
_HTTP_CODE_IN_MESSAGE = re.compile(r"failed with error code (\d{3})")


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


# --------------------------------------------------------------------------- retry policy
@dataclass(frozen=True)
class RetryPolicy:
    """How many times a registry call is tried and how long to wait in between.

    Example:
        >>> RetryPolicy(attempts=4, backoff_s=0.5, backoff_factor=2, max_backoff_s=1.5).delays()
        [0.5, 1.0, 1.5]
    """

    attempts: int = 5
    backoff_s: float = 0.5
    backoff_factor: float = 2.0
    max_backoff_s: float = 8.0
    request_timeout_s: int = 30
    http_max_retries: int = 0

    @classmethod
    def from_params(cls, retry: RegistryRetryParams) -> RetryPolicy:
        """Build from ``params.registry.retry``."""
        return cls(
            attempts=retry.attempts,
            backoff_s=retry.backoff_s,
            backoff_factor=retry.backoff_factor,
            max_backoff_s=retry.max_backoff_s,
            request_timeout_s=retry.request_timeout_s,
            http_max_retries=retry.http_max_retries,
        )

    def delays(self) -> list[float]:
        """The waits before the 2nd, 3rd, ... try (``attempts - 1`` values)."""
        out, d = [], float(self.backoff_s)
        for _ in range(max(self.attempts - 1, 0)):
            out.append(min(d, self.max_backoff_s))
            d *= self.backoff_factor
        return out

    @property
    def max_wait_s(self) -> float:
        """Total time spent waiting between tries when every try fails."""
        return float(sum(self.delays()))


# --------------------------------------------------------------------------- classification
def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    stack = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        stack.extend(x for x in (e.__cause__, e.__context__) if x is not None)


def is_transient(exc: BaseException) -> bool:
    """True when ``exc`` is worth retrying (the server may answer a moment later).

    Example:
        >>> import requests
        >>> is_transient(requests.exceptions.ConnectionError("refused"))
        True
        >>> from mlflow.exceptions import MlflowException
        >>> from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
        >>> is_transient(MlflowException("no such version", error_code=RESOURCE_DOES_NOT_EXIST))
        False
    """
    import requests
    import urllib3.exceptions
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, MlflowException):
        code = str(exc.error_code)
        if code in _TRANSIENT_CODES:
            return True
        status = exc.get_http_status_code()
        if isinstance(exc, RestException):  # the server answered: its status decides
            return status >= 500 or status in _TRANSIENT_STATUS
        m = _HTTP_CODE_IN_MESSAGE.search(str(exc.message))
        if m:  # a non-JSON error page (e.g. a proxy's 502)
            s = int(m.group(1))
            return s >= 500 or s in _TRANSIENT_STATUS
        if 400 <= status < 500:
            return False
    for e in _exception_chain(exc):
        if isinstance(e, requests.exceptions.HTTPError) and e.response is not None:
            s = e.response.status_code
            if s >= 500 or s in _TRANSIENT_STATUS:
                return True
            continue
        if isinstance(
            e,
            requests.exceptions.ConnectionError
            | requests.exceptions.Timeout
            | requests.exceptions.RetryError
            | requests.exceptions.ChunkedEncodingError
            | urllib3.exceptions.MaxRetryError
            | urllib3.exceptions.NewConnectionError
            | urllib3.exceptions.ProtocolError
            | urllib3.exceptions.TimeoutError
            | ConnectionError
            | TimeoutError,
        ):
            return True
        if type(e).__name__ == "OperationalError" and type(e).__module__.startswith("sqlalchemy"):
            return True
        if isinstance(e, MlflowException) and str(e.error_code) in _TRANSIENT_CODES:
            return True
    return False


def short_error(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` on one line, shortened to ``limit`` characters."""
    text = " ".join(str(getattr(exc, "message", None) or exc).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}"


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


@contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
        return self._client

    @contextmanager
    def http_settings(self) -> Iterator[None]:
        """Set MLflow's per-request retries and timeout to the policy's for the duration."""
        with _env({
            ENV_HTTP_MAX_RETRIES: str(self.retry.http_max_retries),
            ENV_HTTP_TIMEOUT: str(self.retry.request_timeout_s),
        }):
            yield

    @contextmanager
    def fluent(self) -> Iterator[None]:
        """Point MLflow's global tracking/registry URIs at this client's URI for the duration.

        Needed by MLflow code that does not take a URI: ``mlflow.onnx.log_model``, and the
        SQL registry store resolving a ``models:/<model_id>`` source. The previous state
        (module globals *and* the ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI``
        variables, which ``mlflow.set_tracking_uri`` also sets) is restored exactly, so
        :func:`cvplatform.tracking.tracking_uri` is unaffected afterwards.
        """
        import mlflow
        from mlflow.tracking._model_registry import utils as registry_utils
        from mlflow.tracking._tracking_service import utils as tracking_utils

        env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        prev_t = getattr(tracking_utils, "_tracking_uri", None)
        prev_r = getattr(registry_utils, "_registry_uri", None)
        if prev_t != self.uri:
            mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        try:
            yield
        finally:
            tracking_utils._tracking_uri = prev_t
            registry_utils._registry_uri = prev_r
            for k, v in env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

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
        delays = self.retry.delays()
        attempts = len(delays) + 1
        t0 = time.monotonic()
        last: BaseException | None = None
        for attempt in range(1, attempts + 1):
            try:
                with self.http_settings(), self.fluent():
                    if attempt > 1 and recover is not None:
                        done = recover()
                        if done is not None:
                            log.info("registry: %s had succeeded before the connection failed", what)
                            return done
                    return fn()
            except Exception as exc:
                if isinstance(exc, RegistryError):
                    raise
                if not is_transient(exc):
                    if _is_mlflow_error(exc) and not (is_not_found(exc) or is_already_exists(exc)):
                        raise RegistryError(
                            f"MLflow at {self.uri} refused to {what}: {short_error(exc)}. Check the model name / "
                            "version / alias, and that this user may write to the registry."
                        ) from exc
                    raise  # "does not exist" / "already exists": the caller turns it into a specific error
                last = exc
                if attempt == attempts:
                    break
                delay = delays[attempt - 1]
                log.warning("registry: %s failed (try %d/%d, %s); retrying in %.1fs",
                            what, attempt, attempts, short_error(exc, 160), delay)
                self._sleep(delay)
        elapsed = time.monotonic() - t0
        assert last is not None
        raise RegistryUnavailableError(
            f"cannot reach the MLflow tracking server at {self.uri}: {what} failed {attempts} time(s) over "
            f"{elapsed:.1f}s (last error: {short_error(last)}). Check that the server is running and reachable "
            f"(e.g. `curl {self.uri.rstrip('/')}/health` for an HTTP server), that MLFLOW_TRACKING_URI points at "
            "it, and that its database is up; registry.retry.attempts / backoff_s in params.yaml set how long "
            "cvplatform keeps trying."
        ) from last

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
