"""The one MLflow adapter: where the store is, the client, retries, MLflow's global URIs.

Every module of cvplatform reaches MLflow through this one:

* **Where.** :func:`tracking_uri` is ``$MLFLOW_TRACKING_URI`` when set (an MLflow
  server ``http://mlflow:5000``, ``postgresql://...``), else the embedded default
  ``sqlite:///<store root>/mlflow.db``. :func:`registry_uri` is
  ``$MLFLOW_REGISTRY_URI`` when set, else the tracking URI. :meth:`MlflowStore.at`
  resolves both once; the rest of a stage uses the resulting :class:`MlflowStore`.
* **The client.** :meth:`MlflowStore.client` is the only place in cvplatform that
  builds an ``MlflowClient``.
* **Retries.** :meth:`MlflowStore.call` runs a call through ``tenacity``: *transient*
  failures (:func:`is_transient`: connection errors, timeouts, HTTP 408/429/5xx,
  MLflow's ``TEMPORARILY_UNAVAILABLE`` & co.) are retried with the waits of a
  :class:`RetryPolicy`; everything else propagates at once. While a call runs,
  MLflow's own HTTP retries and timeout are set from the policy, so the budget is
  predictable: ``attempts * (http_max_retries + 1)`` requests, each bounded by the
  timeout, plus :attr:`RetryPolicy.max_wait_s`.
* **Global URIs.** Some MLflow code takes no URI (``mlflow.onnx.log_model``,
  ``mlflow.start_run``, the SQL registry resolving ``models:/<model_id>``).
  :meth:`MlflowStore.active` points MLflow's global tracking and registry URIs at the
  store for the duration, through the public ``mlflow.set_tracking_uri`` /
  ``mlflow.set_registry_uri``, and restores the caller's state afterwards (the
  ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI`` variables exactly).
* **Warnings once.** :func:`warn_once` logs a warning the first time a key is seen
  (e.g. "MLflow logging failed" at every canary step is logged once per rollout).

mlflow and tenacity are imported inside functions: importing this module is cheap.

Example:
    >>> store = MlflowStore.at(".")  # doctest: +SKIP
    >>> run = store.call("get run", lambda: store.client().get_run(run_id))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from cvplatform.errors import RegistryError

if TYPE_CHECKING:  # pragma: no cover
    from mlflow.tracking import MlflowClient

    from cvplatform.config import RegistryRetryParams

log = logging.getLogger(__name__)
T = TypeVar("T")

ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_REGISTRY_URI = "MLFLOW_REGISTRY_URI"
ENV_STORE_ROOT = "CVPLATFORM_STORE_ROOT"
"""The project whose embedded store (``mlflow.db``, ``mlartifacts/``) a run's working copy uses."""
ENV_HTTP_MAX_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
ENV_HTTP_TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"

_TRANSIENT_CODES = frozenset(
    {"TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED", "REQUEST_LIMIT_EXCEEDED", "RESOURCE_EXHAUSTED"}
)
_TRANSIENT_STATUS = frozenset({408, 429})
_HTTP_CODE_IN_MESSAGE = re.compile(r"failed with error code (\d{3})")


# --------------------------------------------------------------------------- where
def store_root(root: str | os.PathLike[str]) -> Path:
    """Where the embedded store lives: ``$CVPLATFORM_STORE_ROOT`` (set in an Airflow run's working
    copy: the project it was made from) or else ``root`` itself."""
    env = os.environ.get(ENV_STORE_ROOT, "").strip()
    return Path(env or root).resolve()


def tracking_uri(root: str | os.PathLike[str]) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<store root>/mlflow.db``.

    Example:
        >>> import os; os.environ.pop("MLFLOW_TRACKING_URI", None)  # doctest: +SKIP
        >>> tracking_uri("/srv/project")  # doctest: +SKIP
        'sqlite:////srv/project/mlflow.db'
    """
    env = os.environ.get(ENV_TRACKING_URI, "").strip()
    if env:
        return env
    return f"sqlite:///{store_root(root) / 'mlflow.db'}"


def registry_uri(tracking: str) -> str:
    """``$MLFLOW_REGISTRY_URI`` if set, else the tracking URI (MLflow's own rule)."""
    return os.environ.get(ENV_REGISTRY_URI, "").strip() or tracking


def default_artifact_location(root: str | os.PathLike[str]) -> str | None:
    """``file://<store root>/mlartifacts`` for the embedded default; None when a server decides."""
    if os.environ.get(ENV_TRACKING_URI, "").strip():
        return None
    return (store_root(root) / "mlartifacts").as_uri()


# --------------------------------------------------------------------------- what is transient
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


def _mlflow_error_is_transient(exc: Any) -> bool | None:
    """The verdict an ``MlflowException`` carries itself (None: look at the exception chain)."""
    from mlflow.exceptions import RestException

    if str(exc.error_code) in _TRANSIENT_CODES:
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
    return None


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
    from mlflow.exceptions import MlflowException

    if isinstance(exc, MlflowException):
        verdict = _mlflow_error_is_transient(exc)
        if verdict is not None:
            return verdict
    network = (requests.exceptions.ConnectionError, requests.exceptions.Timeout, requests.exceptions.RetryError,
               requests.exceptions.ChunkedEncodingError, urllib3.exceptions.MaxRetryError,
               urllib3.exceptions.NewConnectionError, urllib3.exceptions.ProtocolError,
               urllib3.exceptions.TimeoutError, ConnectionError, TimeoutError)
    for e in _exception_chain(exc):
        if isinstance(e, requests.exceptions.HTTPError) and e.response is not None:
            s = e.response.status_code
            if s >= 500 or s in _TRANSIENT_STATUS:
                return True
            continue
        if isinstance(e, network):
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


# --------------------------------------------------------------------------- retry policy
@dataclass(frozen=True)
class RetryPolicy:
    """How many times an MLflow call is tried and how long to wait in between.

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


class RetriesExhausted(Exception):  # noqa: N818 (it wraps the last error; callers name their own error)
    """Every try of :meth:`MlflowStore.call` failed with a transient error (``last`` is the last one)."""

    def __init__(self, what: str, attempts: int, elapsed_s: float, last: BaseException) -> None:
        super().__init__(f"{what} failed {attempts} time(s) over {elapsed_s:.1f}s (last error: {short_error(last)})")
        self.what, self.attempts, self.elapsed_s, self.last = what, attempts, elapsed_s, last


# --------------------------------------------------------------------------- warnings once
_warned: set[str] = set()
_warned_lock = threading.Lock()


def warn_once(logger: logging.Logger, key: str, msg: str, *args: Any) -> bool:
    """Log ``msg % args`` as a warning the first time ``key`` is seen in this process; True if logged.

    Example:
        >>> warn_once(log, "canary-run-1:mlflow", "deploy: MLflow logging failed (%s)", "timeout")  # doctest: +SKIP
        True
    """
    with _warned_lock:
        if key in _warned:
            return False
        _warned.add(key)
    logger.warning(msg, *args)
    return True


@contextmanager
def _env(values: dict[str, str | None]) -> Iterator[None]:
    """Set (or, for None, remove) environment variables for the duration; restore them exactly."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------- the store
@dataclass(frozen=True)
class MlflowStore:
    """One MLflow tracking store + model registry, its client and its retry budget.

    Example:
        >>> store = MlflowStore.at("/srv/project")  # doctest: +SKIP
        >>> store.tracking_uri, store.registry_uri  # doctest: +SKIP
        ('sqlite:////srv/project/mlflow.db', 'sqlite:////srv/project/mlflow.db')
    """

    tracking_uri: str
    registry_uri: str = ""
    """Defaults to ``tracking_uri`` (:meth:`at` reads ``$MLFLOW_REGISTRY_URI`` once)."""
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    def __post_init__(self) -> None:
        if not self.registry_uri:
            object.__setattr__(self, "registry_uri", self.tracking_uri)

    @classmethod
    def at(cls, root: str | os.PathLike[str], retry: RetryPolicy | None = None) -> MlflowStore:
        """The store the configuration of project ``root`` names (environment or embedded default)."""
        uri = tracking_uri(root)
        return cls(uri, registry_uri(uri), retry or RetryPolicy())

    def client(self) -> MlflowClient:
        """A new ``MlflowClient`` on this store (no retries: wrap calls in :meth:`call`)."""
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    @contextmanager
    def http_settings(self) -> Iterator[None]:
        """Set MLflow's per-request retries and timeout to the policy's for the duration."""
        with _env({ENV_HTTP_MAX_RETRIES: str(self.retry.http_max_retries),
                   ENV_HTTP_TIMEOUT: str(self.retry.request_timeout_s)}):
            yield

    @contextmanager
    def active(self) -> Iterator[None]:
        """Point MLflow's global tracking and registry URIs at this store for the duration.

        Uses the public ``mlflow.set_tracking_uri`` / ``mlflow.set_registry_uri``. On exit the
        globals are cleared (``set_*_uri(None)``) and ``MLFLOW_TRACKING_URI`` /
        ``MLFLOW_REGISTRY_URI`` are restored exactly: MLflow falls back to those variables, and
        ``mlflow.set_tracking_uri`` always exports its value there, so the caller's effective
        URIs are unchanged. Do not use two stores concurrently in threads of one process.
        """
        import mlflow

        with _env({ENV_TRACKING_URI: os.environ.get(ENV_TRACKING_URI),
                   ENV_REGISTRY_URI: os.environ.get(ENV_REGISTRY_URI)}):
            mlflow.set_tracking_uri(self.tracking_uri)
            mlflow.set_registry_uri(self.registry_uri)
            try:
                yield
            finally:
                mlflow.set_tracking_uri(None)  # type: ignore[arg-type]  # public way back to "not set"
                mlflow.set_registry_uri(None)  # type: ignore[arg-type]

    def call(self, what: str, fn: Callable[[], T], *, recover: Callable[[], T | None] | None = None,
             sleep: Callable[[float], None] = time.sleep, fluent: bool = False) -> T:
        """Run ``fn()``, retrying transient failures (tenacity) with the policy's waits.

        Args:
            what: What the call does, for logs and errors (e.g. "log metrics to run 3f2a").
            fn: The call.
            recover: For non-idempotent calls: run before each retry; when it returns something
                other than None (what the failed attempt already did), that is returned instead.
            sleep: How to wait between tries.
            fluent: Also point MLflow's global URIs at the store during the call (:meth:`active`).

        Raises:
            RetriesExhausted: every try failed with a transient error.
            Exception: a non-transient error (or a :class:`~cvplatform.errors.RegistryError`), at once.
        """
        import tenacity

        delays = self.retry.delays()
        attempts = len(delays) + 1
        t0 = time.monotonic()
        tries = [0]

        def attempt_once() -> T:
            tries[0] += 1
            n = tries[0]
            with self.http_settings(), (self.active() if fluent else _nothing()):
                if n > 1 and recover is not None:
                    done = recover()
                    if done is not None:
                        log.info("mlflow: %s had succeeded before the connection failed", what)
                        return done
                return fn()

        def before_sleep(state: tenacity.RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            log.warning("mlflow: %s failed (try %d/%d, %s); retrying in %.1fs", what, state.attempt_number,
                        attempts, short_error(exc, 160) if exc else "?", state.upcoming_sleep)

        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(attempts),
            wait=lambda state: delays[min(state.attempt_number, len(delays)) - 1] if delays else 0.0,
            retry=tenacity.retry_if_exception(lambda e: not isinstance(e, RegistryError) and is_transient(e)),
            sleep=sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            return retrying(attempt_once)
        except Exception as exc:
            if isinstance(exc, RegistryError) or not is_transient(exc):
                raise
            raise RetriesExhausted(what, attempts, time.monotonic() - t0, exc) from exc


@contextmanager
def _nothing() -> Iterator[None]:
    yield


def log_to_run(tracking: str, run_id: str, what: str, *, metrics: dict[str, float], tags: dict[str, str],
               files: list[Path], artifact_path: str, dirs: dict[str, Path] | None = None) -> None:
    """Add a stage's metrics (those the run lacks), tags and files to an existing run (e.g. the training run
    that evaluate and export report into); retried as a whole, which is idempotent.

    ``dirs`` maps an artifact path to a folder logged whole (e.g. ``{"evaluate/plots": plots_dir}``).
    """
    from mlflow.entities import Metric, RunTag

    store = MlflowStore(tracking)
    client = store.client()

    def log_all() -> None:
        have = client.get_run(run_id).data.metrics
        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, 0) for k, v in metrics.items()
                 if v is not None and not (k in have and have[k] == float(v))]
        for i in range(0, len(items), 500):
            client.log_batch(run_id, metrics=items[i : i + 500])
        client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in tags.items()])  # MLflow's tag limit
        for f in files:
            if f.is_file():
                client.log_artifact(run_id, str(f), artifact_path=artifact_path)
        for path, folder in (dirs or {}).items():
            if folder.is_dir():
                client.log_artifacts(run_id, str(folder), artifact_path=path)

    store.call(what, log_all)


__all__ = [
    "ENV_REGISTRY_URI",
    "ENV_STORE_ROOT",
    "ENV_TRACKING_URI",
    "MlflowStore",
    "RetriesExhausted",
    "RetryPolicy",
    "default_artifact_location",
    "is_transient",
    "log_to_run",
    "registry_uri",
    "short_error",
    "store_root",
    "tracking_uri",
    "warn_once",
]
