"""Which models the server runs: resolution from registry aliases, loading, atomic swaps, reloads.

* A **model source** turns a version into a ready :class:`~cvplatform.runtime.RuntimeModel` (the
  library's one runtime model: an onnxruntime session plus the :class:`~cvplatform.preprocess.PreprocessContract`
  from the model's own ONNX metadata) and manages aliases.
  :class:`RegistrySource` uses the MLflow registry (``models:/NAME/VERSION``;
  ``cvplatform.registry.load_model`` verifies the artifact's sha256 against the
  registered tag); :class:`FileSource` serves one local ONNX file
  (``cvplatform serve --model model.onnx``; no canary).
* :class:`ModelManager` holds the two variant slots (``champion``, ``canary``),
  each a :class:`ModelHandle` (model + its :class:`~cvplatform.serving.batching.MicroBatcher`).
  A reload loads the new version in a worker thread, warms it up, then swaps the
  slot in one assignment on the event loop: requests already holding the old
  handle finish on it (its batcher drains before it stops), new requests get the
  new one, and none is dropped.
* A version that fails to load (unreadable, sha256 mismatch, bad metadata, a
  failing warm-up) never enters a slot: a failed canary receives no traffic, a
  failed champion reload keeps the old champion.
* A background task polls the aliases every ``models.poll_interval_s`` and
  reloads a slot when its alias *changed* since it was last seen (so an admin
  action is not undone by a poll that raced it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cvplatform.errors import CVPlatformError, ModelError, RegistryError
from cvplatform.runtime import RuntimeModel, open_model, select_providers, session_options
from cvplatform.serving.batching import BatchTime, CallTracker, MicroBatcher
from cvplatform.serving.routing import TrafficState
from cvplatform.serving.schemas import ServingConfig
from cvplatform.tasks import Task, get_task

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from cvplatform.serving.metrics import ServingMetrics, StatsBook

log = logging.getLogger(__name__)

TAG_DEPLOY_STATUS = "deploy.status"
TAG_DEPLOY_REASON = "deploy.rollback_reason"
TAG_DEPLOY_TIME = "deploy.time"


class ServingError(CVPlatformError):
    """A request or admin action the server refuses: an HTTP status, a stable code and a detail.

    Example:
        >>> e = ServingError(404, "unknown_model", "no model 'x'; this server serves 'cvplatform'")
        >>> e.status, e.code
        (404, 'unknown_model')
    """

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.status = int(status)
        self.code = code
        self.detail = detail


# --------------------------------------------------------------------------- loaded model
def load_onnx(
    model: str | os.PathLike[str] | bytes,
    *,
    name: str,
    version: str,
    uri: str | None = None,
    sha256: str | None = None,
    providers: tuple[str, ...] | list[str] = ("CPUExecutionProvider",),
    intra_op_threads: int = 0,
    allow_spinning: bool = True,
) -> RuntimeModel:
    """Open an ONNX model (path or bytes) for serving; the contract comes from its ``metadata_props``.

    Raises:
        ModelError: unreadable model, missing/invalid contract metadata, or an input/output layout the
            server cannot batch.

    Example:
        >>> m = load_onnx("artifacts/export/model.onnx", name="cvplatform", version="local")  # doctest: +SKIP
        >>> m.contract.input_size  # doctest: +SKIP
        (32, 32)
    """
    where = uri or (str(model) if not isinstance(model, bytes | bytearray) else f"{name} v{version}")
    m = open_model(model, name=name, version=str(version), uri=where, sha256=sha256,
                   providers=select_providers(providers),
                   options=session_options(intra_op_threads=intra_op_threads, allow_spinning=allow_spinning))
    m.check_batchable()
    return m


# --------------------------------------------------------------------------- model sources
class ModelSource(Protocol):
    """Where versions come from and where aliases live (all methods are blocking; run them in threads)."""

    model_name: str
    supports_aliases: bool
    champion_alias: str

    def resolve(self, alias: str) -> str | None:
        """The version ``alias`` points at, or None when the alias is not set."""
        ...

    def load(self, version: str) -> RuntimeModel:
        """Load ``version`` (verified), or raise a CVPlatformError saying why not."""
        ...

    def set_alias(self, alias: str, version: str) -> None: ...

    def delete_alias(self, alias: str) -> None: ...

    def promote(self, version: str, reason: str) -> dict[str, Any]:
        """Make ``version`` the champion; return ``{"champion_version": ..., "previous_champion": ...}``."""
        ...

    def rollback(self, reason: str) -> dict[str, Any]:
        """Back to the previous champion; return ``{"champion_version": ..., "previous_champion": ...}``."""
        ...

    def tag_version(self, version: str, tags: dict[str, str]) -> None: ...


class FileSource:
    """Serve one local ONNX file as the champion (version ``local``); no registry, no canary.

    Example:
        >>> src = FileSource("artifacts/export/model.onnx")  # doctest: +SKIP
        >>> src.resolve("champion")  # doctest: +SKIP
        'local'
    """

    supports_aliases = False

    def __init__(self, path: str | os.PathLike[str], *, model_name: str | None = None,
                 providers: tuple[str, ...] = ("CPUExecutionProvider",), intra_op_threads: int = 0,
                 allow_spinning: bool = True, champion_alias: str = "champion") -> None:
        self.path = Path(path)
        self.model_name = model_name or self.path.stem
        self.providers = providers
        self.intra_op_threads = intra_op_threads
        self.allow_spinning = allow_spinning
        self.champion_alias = champion_alias

    def resolve(self, alias: str) -> str | None:
        return "local" if alias == self.champion_alias else None

    def load(self, version: str) -> RuntimeModel:
        if version != "local":
            raise ServingError(404, "unknown_version", f"{self.path} is served as version 'local', not {version!r}.")
        from cvplatform.utils.io import sha256_file

        if not self.path.is_file():
            raise ModelError(f"{self.path}: ONNX model not found. Run `cvplatform export` or pass the right path.")
        return load_onnx(self.path, name=self.model_name, version="local", uri=str(self.path),
                         sha256=sha256_file(self.path), providers=self.providers,
                         intra_op_threads=self.intra_op_threads, allow_spinning=self.allow_spinning)

    def _unsupported(self, what: str) -> ServingError:
        return ServingError(
            409, "no_registry",
            f"{what} needs the model registry, but this server serves the local file {self.path}. "
            "Start it without --model to serve registry aliases.",
        )

    def set_alias(self, alias: str, version: str) -> None:
        raise self._unsupported(f"setting alias {alias!r}")

    def delete_alias(self, alias: str) -> None:
        raise self._unsupported(f"deleting alias {alias!r}")

    def promote(self, version: str, reason: str) -> dict[str, Any]:
        raise self._unsupported("promotion")

    def rollback(self, reason: str) -> dict[str, Any]:
        raise self._unsupported("rollback")

    def tag_version(self, version: str, tags: dict[str, str]) -> None:
        return None


class RegistrySource:
    """Versions of one registered model in the MLflow registry (``cvplatform.registry``).

    Loading goes through :func:`cvplatform.registry.load_model` (which downloads the
    version's ONNX artifact, verifies its sha256 against the ``artifact.sha256`` tag and
    opens it with the serving session options); promotion and rollback through
    :func:`cvplatform.registry.promote` / :func:`cvplatform.registry.rollback`, so the
    registry's approval rules and audit log apply to the admin API too.

    Args:
        model_name: registered model name.
        root: project root (for the embedded tracking URI and the registry's params).
        tracking_uri: MLflow tracking/registry URI (default :func:`cvplatform.tracking.tracking_uri` of root).
        params: project params (passed to the registry functions; retry budget, reviewers).
        champion_alias: alias promote/rollback move.

    Example:
        >>> src = RegistrySource("cvplatform", root=".")  # doctest: +SKIP
        >>> src.resolve("champion")  # doctest: +SKIP
        '3'
    """

    supports_aliases = True

    def __init__(
        self,
        model_name: str,
        *,
        root: str | os.PathLike[str] | None = None,
        tracking_uri: str | None = None,
        params: Any = None,
        providers: tuple[str, ...] = ("CPUExecutionProvider",),
        intra_op_threads: int = 0,
        allow_spinning: bool = True,
        champion_alias: str = "champion",
        actor: str = "cvplatform-serve",
    ) -> None:
        from cvplatform.tracking import tracking_uri as _tracking_uri

        self.model_name = model_name
        self.root = Path(root or os.getcwd()).resolve()
        self.tracking_uri = tracking_uri or _tracking_uri(self.root)
        self.params = params
        self.providers = providers
        self.intra_op_threads = intra_op_threads
        self.allow_spinning = allow_spinning
        self.champion_alias = champion_alias
        self.actor = actor
        self._client: Any = None

    # ---------------------------------------------------------------- plumbing
    @property
    def client(self) -> Any:
        """The retrying :class:`cvplatform.registry.client.RegistryClient` of this source."""
        if self._client is None:
            from cvplatform.registry.client import RegistryClient

            if self.params is not None:
                self._client = RegistryClient.from_params(self.params, self.root, tracking_uri=self.tracking_uri)
            else:
                self._client = RegistryClient(self.tracking_uri)
        return self._client

    @staticmethod
    def _not_found(exc: BaseException) -> bool:
        code = getattr(exc, "error_code", "") or ""
        text = str(exc)
        return "RESOURCE_DOES_NOT_EXIST" in code or "RESOURCE_DOES_NOT_EXIST" in text or "not found" in text.lower()

    # ---------------------------------------------------------------- aliases
    def resolve(self, alias: str) -> str | None:
        try:
            mv = self.client.get_model_version_by_alias(self.model_name, alias)
        except Exception as exc:
            if self._not_found(exc):
                return None
            raise RegistryError(
                f"cannot resolve alias {alias!r} of registered model {self.model_name!r} at {self.tracking_uri} "
                f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}). Check the tracking server."
            ) from None
        return str(mv.version) if mv is not None else None

    def set_alias(self, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(self.model_name, alias, str(version))

    def delete_alias(self, alias: str) -> None:
        try:
            self.client.delete_registered_model_alias(self.model_name, alias)
        except Exception as exc:
            if not self._not_found(exc):
                raise

    def tag_version(self, version: str, tags: dict[str, str]) -> None:
        for k, v in tags.items():
            self.client.set_model_version_tag(self.model_name, str(version), k, str(v))

    # ---------------------------------------------------------------- load
    def load(self, version: str) -> RuntimeModel:
        """Download ``version``, verify its sha256 and open it with the serving session options.

        Raises:
            CVPlatformError: unknown version, unmanaged or tampered artifact, or an unusable model
                (see :func:`cvplatform.registry.load_model`).
        """
        from cvplatform.registry import load_model

        uri = f"models:/{self.model_name}/{version}"
        m = load_model(uri, client=self.client, providers=select_providers(self.providers),
                       sess_options=session_options(intra_op_threads=self.intra_op_threads,
                                                    allow_spinning=self.allow_spinning))
        m.check_batchable()
        return m

    # ---------------------------------------------------------------- promote / rollback
    def promote(self, version: str, reason: str) -> dict[str, Any]:
        """Move the champion alias to ``version`` through the registry's rules (approved versions only)."""
        from cvplatform.registry import promote

        res = promote(self.model_name, str(version), comment=reason, actor=self.actor, params=self.params,
                      root=self.root, client=self.client)
        now = self.resolve(self.champion_alias)
        if now != str(version):
            raise RegistryError(
                f"promotion of {self.model_name} v{version} moved alias {res.alias!r}, but this server follows "
                f"{self.champion_alias!r} (it points at {now}); set params registry.champion_alias to the "
                "alias the registry uses."
            )
        return {"champion_version": now, "previous_champion": res.previous}

    def rollback(self, reason: str) -> dict[str, Any]:
        """Move the champion alias back to the previous champion (recorded by the registry)."""
        from cvplatform.registry import rollback

        res = rollback(self.model_name, comment=reason, actor=self.actor, params=self.params, root=self.root,
                       client=self.client)
        return {"champion_version": self.resolve(self.champion_alias), "previous_champion": res.previous}


# --------------------------------------------------------------------------- handles and the manager
@dataclass
class ModelHandle:
    """A loaded model with its micro-batcher (what a variant slot holds)."""

    model: RuntimeModel
    batcher: MicroBatcher

    @property
    def version(self) -> str:
        return self.model.version

    async def infer(self, x: np.ndarray, *, announced: bool = False) -> tuple[dict[str, np.ndarray], float]:
        """The model's raw outputs (:meth:`RuntimeModel.forward`, keyed by output name, e.g. ``{"logits": ...}``)
        for a preprocessed batch and the model latency in ms (queue wait + run); the task decodes them."""
        t0 = time.perf_counter()
        outputs = await self.batcher.submit(x, announced=announced)
        return outputs, (time.perf_counter() - t0) * 1000.0

    async def prepare_and_infer(self, prepare: Callable[[], Awaitable[np.ndarray]]
                                ) -> tuple[np.ndarray, float, BatchTime]:
        """Announce the request to the batcher, run ``prepare()`` (decode/preprocess), then infer.

        Returns:
            The raw output (e.g. logits; the task decodes it), the model latency in ms (queue wait + run) and the :class:`BatchTime` of the
            model call it ran in (time per image and batch size; what the canary's latency check compares).
        """
        self.batcher.announce()
        try:
            x = await prepare()
        except BaseException:
            self.batcher.withdraw()
            raise
        t0 = time.perf_counter()
        probs, timing = await self.batcher.submit_timed(x, announced=True)
        return probs, (time.perf_counter() - t0) * 1000.0, timing


class ModelManager:
    """The champion and canary slots, the traffic state, and every change to them.

    All mutations run on the event loop under one lock; slot reads are plain
    attribute reads, so a request sees either the old or the new model, never a
    half-swapped state.

    Args:
        source: where versions come from.
        config: the serving configuration.
        metrics: Prometheus metrics (model info gauge, batch sizes).
        stats: per-variant statistics.
        task: the project's task (``get_task(params.project.task)``; default classification): it
            names the model's outputs and decodes them for responses, statistics and metrics.
    """

    def __init__(self, source: ModelSource, config: ServingConfig, metrics: ServingMetrics, stats: StatsBook,
                 task: Task | None = None) -> None:
        self.source = source
        self.task = task if task is not None else get_task()
        self.config = config
        self.metrics = metrics
        self.stats = stats
        self.slots: dict[str, ModelHandle | None] = {"champion": None, "canary": None}
        self.errors: dict[str, str | None] = {"champion": None, "canary": None}
        self.traffic = TrafficState(
            canary_share=config.traffic.canary_share, shadow=config.traffic.shadow,
            shadow_share=config.traffic.shadow_share,
        )
        self.metrics.canary_share.set(self.traffic.canary_share)
        self._seen: dict[str, str | None] = {"champion": None, "canary": None}
        self._failed: dict[str, str | None] = {"champion": None, "canary": None}
        self._lock = asyncio.Lock()
        self.calls = CallTracker()
        """Shared by every model's batcher: which calls overlapped another (the canary's latency compare)."""
        self._poller: asyncio.Task | None = None
        self._closing: set[asyncio.Task] = set()
        self.last_refresh: float | None = None
        self.last_refresh_error: str | None = None

    # ---------------------------------------------------------------- properties
    @property
    def champion(self) -> ModelHandle | None:
        return self.slots["champion"]

    @property
    def canary(self) -> ModelHandle | None:
        return self.slots["canary"]

    @property
    def alias(self) -> dict[str, str]:
        return {"champion": self.source.champion_alias, "canary": self.config.models.canary_alias}

    def ready(self) -> bool:
        return self.champion is not None

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Load what the aliases point at, then start polling (when configured)."""
        try:
            await self.refresh()
        except Exception as exc:  # the server still starts; /v2/health/ready says not ready
            log.error("initial model load failed: %s", exc)
        interval = self.config.models.poll_interval_s
        if interval > 0 and self.source.supports_aliases:
            self._poller = asyncio.create_task(self._poll(interval), name="alias-poller")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poller
        for variant in ("champion", "canary"):
            handle = self.slots[variant]
            self.slots[variant] = None
            if handle is not None:
                await handle.batcher.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def _poll(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("alias poll failed (keeping the loaded models): %s", exc)

    # ---------------------------------------------------------------- loading and swapping
    def _on_batch(self, model: RuntimeModel) -> Callable[[int, float], None]:
        hist = self.metrics.batch_size.labels(model.name, model.version)

        def hook(rows: int, seconds: float) -> None:
            hist.observe(rows)

        return hook

    async def _load_handle(self, version: str) -> ModelHandle:
        def work() -> RuntimeModel:
            model = self.source.load(version)
            if self.config.models.warmup:
                try:
                    model.warmup()
                except CVPlatformError as exc:
                    raise ModelError(f"{model.uri}: warm-up inference failed: {exc}") from None
            return model

        model = await asyncio.to_thread(work)
        b = self.config.batching
        batcher = MicroBatcher(
            model.forward, max_batch_size=b.max_batch_size, max_wait_ms=b.max_wait_ms, workers=b.workers,
            name=f"{model.name}-v{model.version}", on_batch=self._on_batch(model), tracker=self.calls,
        )
        await batcher.start()
        return ModelHandle(model, batcher)

    def _swap(self, variant: str, handle: ModelHandle | None) -> None:
        old = self.slots[variant]
        self.slots[variant] = handle  # the atomic step: one assignment on the event loop
        prev = (old.model.name, old.model.version) if old is not None else None
        new_name = handle.model.name if handle is not None else None
        new_version = handle.model.version if handle is not None else None
        if old is not None and (handle is None or handle.model is not old.model):
            self.metrics.set_model(variant, None, None, prev)
            task = asyncio.create_task(old.batcher.close())  # drains: in-flight requests finish on it
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        self.metrics.set_model(variant, new_name, new_version, None)
        if variant == "canary" and handle is None and self.traffic.canary_share > 0:
            self._set_traffic(self.traffic.updated(canary_share=0.0))
        log.info("%s: %s -> %s", variant, f"v{prev[1]}" if prev else "none",
                 f"v{new_version}" if new_version else "none")

    def _set_traffic(self, state: TrafficState) -> None:
        self.traffic = state
        self.metrics.canary_share.set(state.canary_share)

    async def refresh(self, *, retry_failed: bool = False) -> dict[str, Any]:
        """Re-read the aliases; load and swap every slot whose alias changed since last seen.

        A version that failed to load is not retried on every poll; ``retry_failed`` (the admin
        reload) tries it again.
        """
        async with self._lock:
            if retry_failed:
                self._failed = {"champion": None, "canary": None}
            changes: dict[str, Any] = {}
            for variant in ("champion", "canary"):
                alias = self.alias[variant]
                try:
                    version = await asyncio.to_thread(self.source.resolve, alias)
                except Exception as exc:
                    self.last_refresh_error = f"{alias}: {exc}"
                    raise
                current = self.slots[variant]
                if version == self._seen[variant] and (version is None or current is not None
                                                       or self._failed[variant] == version):
                    continue
                changes[variant] = await self._apply_alias(variant, version)
            self.last_refresh = time.time()
            self.last_refresh_error = None
            return changes

    async def _apply_alias(self, variant: str, version: str | None) -> dict[str, Any]:
        self._seen[variant] = version
        current = self.slots[variant]
        if version is None:
            if variant == "canary" and current is not None:
                self._swap("canary", None)
                return {"version": None, "action": "unloaded"}
            if variant == "champion" and current is not None:
                log.warning("alias %r is not set any more; keeping champion v%s", self.alias[variant],
                            current.version)
            return {"version": None, "action": "none"}
        if current is not None and current.version == version:
            return {"version": version, "action": "unchanged"}
        try:
            handle = await self._load_handle(version)
        except Exception as exc:
            self._failed[variant] = version
            self.errors[variant] = f"v{version}: {exc}"
            log.error("%s v%s failed to load: %s", variant, version, exc)
            if variant == "canary" and current is not None:
                self._swap("canary", None)  # the canary alias moved to a broken version: no canary traffic
            return {"version": version, "action": "load_failed", "error": str(exc)}
        self._failed[variant] = None
        self.errors[variant] = None
        self._swap(variant, handle)
        return {"version": version, "action": "loaded"}

    # ---------------------------------------------------------------- admin actions
    async def set_canary(self, version: str, *, share: float | None = None, shadow: bool | None = None,
                         shadow_share: float | None = None) -> dict[str, Any]:
        """Load ``version`` as the canary (alias ``canary`` moves to it); optionally set share / shadow.

        Raises:
            ServingError: 409 when it cannot be loaded (it then receives no traffic).
        """
        if not self.source.supports_aliases:
            raise ServingError(409, "no_registry", "this server serves a local file; canaries need the registry.")
        async with self._lock:
            if self.champion is not None and self.champion.version == version:
                raise ServingError(409, "already_champion", f"version {version} is already the champion.")
            current = self.slots["canary"]
            if current is None or current.version != version:
                try:
                    handle = await self._load_handle(version)
                except Exception as exc:
                    self.errors["canary"] = f"v{version}: {exc}"
                    raise ServingError(
                        409, "canary_load_failed",
                        f"{self.source.model_name} v{version} cannot be served ({exc}); it receives no traffic.",
                    ) from None
                self.errors["canary"] = None
                self._swap("canary", handle)
            try:
                await asyncio.to_thread(self.source.set_alias, self.alias["canary"], version)
                self._seen["canary"] = version
            except Exception as exc:
                log.warning("could not set alias %r -> v%s: %s", self.alias["canary"], version, exc)
            self._set_traffic(self.traffic.updated(canary_share=share, shadow=shadow, shadow_share=shadow_share))
            return self.status()

    async def set_traffic(self, *, canary_share: float | None = None, shadow: bool | None = None,
                          shadow_share: float | None = None) -> dict[str, Any]:
        """Change the canary share and/or shadow mode.

        Raises:
            ServingError: 409 when a share > 0 is asked for but no canary is loaded.
        """
        async with self._lock:
            if canary_share is not None and canary_share > 0 and self.canary is None:
                why = f" (last load error: {self.errors['canary']})" if self.errors["canary"] else ""
                raise ServingError(409, "no_canary", f"no canary is loaded{why}; set one with POST /admin/canary.")
            self._set_traffic(self.traffic.updated(canary_share=canary_share, shadow=shadow,
                                                   shadow_share=shadow_share))
            return self.status()

    async def abort_canary(self, reason: str, version: str | None = None, *, status: str = "rolled_back"
                           ) -> dict[str, Any]:
        """Stop the canary: share 0, shadow off, unloaded, alias removed, ``reason`` tagged on its version.

        ``version`` names the version to tag when no canary is loaded (e.g. it failed to load);
        ``status`` is its ``deploy.status`` (``rolled_back``, or ``aborted`` when there is no verdict).
        """
        async with self._lock:
            handle = self.canary
            if handle is not None:
                version = handle.version
            elif version is None:
                version = self._seen["canary"]
            self._set_traffic(self.traffic.updated(canary_share=0.0, shadow=False))
            self._swap("canary", None)
            self._seen["canary"] = None
            notes: list[str] = []
            if self.source.supports_aliases:
                try:
                    await asyncio.to_thread(self.source.delete_alias, self.alias["canary"])
                except Exception as exc:
                    notes.append(f"alias not removed: {exc}")
                if version is not None:
                    tags = {TAG_DEPLOY_STATUS: status, TAG_DEPLOY_REASON: reason[:5000],
                            TAG_DEPLOY_TIME: _utc_now()}
                    try:
                        await asyncio.to_thread(self.source.tag_version, version, tags)
                    except Exception as exc:
                        notes.append(f"rollback reason not tagged: {exc}")
            out = self.status()
            out["aborted_version"] = version
            out["notes"] = notes
            return out

    async def promote(self, expected_version: str | None, reason: str) -> dict[str, Any]:
        """Promote the loaded canary through the registry, then swap it into the champion slot.

        Raises:
            ServingError: 409 without a loaded canary, on a version mismatch, or when the registry refuses.
        """
        async with self._lock:
            handle = self.canary
            if handle is None:
                raise ServingError(409, "no_canary", "no canary is loaded; nothing to promote.")
            if expected_version is not None and handle.version != str(expected_version):
                raise ServingError(409, "version_mismatch",
                                   f"the loaded canary is v{handle.version}, not v{expected_version}.")
            try:
                info = await asyncio.to_thread(self.source.promote, handle.version, reason)
            except ServingError:
                raise
            except CVPlatformError as exc:
                raise ServingError(409, "promotion_refused", str(exc)) from None
            self._set_traffic(self.traffic.updated(canary_share=0.0, shadow=False))
            self.slots["canary"] = None  # the handle moves; do not close its batcher
            self.metrics.set_model("canary", None, None, (handle.model.name, handle.version))
            self._swap("champion", handle)
            self._seen["champion"] = handle.version
            self._seen["canary"] = None
            try:
                await asyncio.to_thread(self.source.delete_alias, self.alias["canary"])
            except Exception as exc:
                log.warning("could not remove alias %r after promotion: %s", self.alias["canary"], exc)
            try:
                await asyncio.to_thread(self.source.tag_version, handle.version,
                                        {TAG_DEPLOY_STATUS: "promoted", TAG_DEPLOY_TIME: _utc_now()})
            except Exception as exc:
                log.warning("could not tag v%s as promoted: %s", handle.version, exc)
            out = self.status()
            out.update(info)
            return out

    async def rollback(self, reason: str) -> dict[str, Any]:
        """Move the champion back to the previous champion (registry), then load it."""
        async with self._lock:
            try:
                info = await asyncio.to_thread(self.source.rollback, reason)
            except ServingError:
                raise
            except CVPlatformError as exc:
                raise ServingError(409, "rollback_refused", str(exc)) from None
            version = info.get("champion_version")
            if version is not None:
                result = await self._apply_alias("champion", str(version))
                if result.get("action") == "load_failed":
                    raise ServingError(409, "rollback_load_failed",
                                       f"the registry points at v{version} but it failed to load: {result['error']}")
            out = self.status()
            out.update(info)
            return out

    # ---------------------------------------------------------------- shared state (several worker processes)
    def shared_state(self) -> dict[str, Any]:
        """What another worker process needs to serve the same way: slot versions and the traffic state."""
        return {v: (h.version if h is not None else None) for v, h in self.slots.items()} | {
            "traffic": {"canary_share": self.traffic.canary_share, "shadow": self.traffic.shadow,
                        "shadow_share": self.traffic.shadow_share}}

    async def apply_shared(self, state: dict[str, Any]) -> dict[str, str]:
        """Make the slots and traffic match ``state`` (from :meth:`shared_state` of the worker that took an admin
        action). The registry is not touched: that worker already moved the aliases. Returns load errors by
        variant (a failed canary gets no traffic; a failed champion load keeps the old champion)."""
        errors: dict[str, str] = {}
        async with self._lock:
            want = state.get("champion")
            champ = self.slots["champion"]
            if want is not None and (champ is None or champ.version != want):
                canary = self.slots["canary"]
                if canary is not None and canary.version == want:  # a promotion: the canary handle moves
                    self.slots["canary"] = None
                    self.metrics.set_model("canary", None, None, (canary.model.name, canary.version))
                    self._swap("champion", canary)
                else:
                    errors.update(await self._load_into("champion", want))
            self._seen["champion"] = want
            want = state.get("canary")
            current = self.slots["canary"]
            if want is None and current is not None:
                self._swap("canary", None)
            elif want is not None and (current is None or current.version != want):
                errors.update(await self._load_into("canary", want))
            self._seen["canary"] = want
            self._set_traffic(TrafficState(**state["traffic"]))
        return errors

    async def _load_into(self, variant: str, version: str) -> dict[str, str]:
        try:
            handle = await self._load_handle(version)
        except Exception as exc:
            self.errors[variant] = f"v{version}: {exc}"
            log.error("%s v%s failed to load: %s", variant, version, exc)
            if variant == "canary" and self.slots["canary"] is not None:
                self._swap("canary", None)
            return {variant: self.errors[variant] or ""}
        self.errors[variant] = None
        self._swap(variant, handle)
        return {}

    # ---------------------------------------------------------------- status
    def status(self) -> dict[str, Any]:
        def slot(variant: str) -> dict[str, Any]:
            h = self.slots[variant]
            d: dict[str, Any] = {"alias": self.alias[variant], "loaded": h is not None,
                                 "error": self.errors[variant]}
            if h is not None:
                d.update(h.model.describe())
                d["batches"] = h.batcher.batches
            return d

        return {
            "model": self.source.model_name,
            "ready": self.ready(),
            "champion": slot("champion"),
            "canary": slot("canary"),
            "traffic": {"canary_share": self.traffic.canary_share, "shadow": self.traffic.shadow,
                        "shadow_share": self.traffic.shadow_share},
            "last_refresh": self.last_refresh,
            "last_refresh_error": self.last_refresh_error,
        }


def _utc_now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


__all__ = [
    "FileSource",
    "ModelHandle",
    "ModelManager",
    "ModelSource",
    "RegistrySource",
    "ServingError",
    "load_onnx",
]
