"""Serving configuration (``configs/deploy/serving.yaml``) and the HTTP API's request/response models.

The configuration is a frozen pydantic model that rejects unknown keys and bad
types (:class:`ServingConfig`, loaded with :func:`load_serving_config`); the API
models document the JSON the server accepts and returns (they also appear in the
OpenAPI schema at ``/docs``).

Only pydantic is imported here: the module is cheap to import.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cvplatform.config import StrictModel, load_config
from cvplatform.errors import ConfigError

ADMIN_TOKEN_ENV = "CVPLATFORM_ADMIN_TOKEN"
MIN_ADMIN_TOKEN_LENGTH = 32
"""Shortest admin token the server accepts (``secrets.token_urlsafe(32)`` gives 43 characters)."""
EXAMPLE_ADMIN_TOKENS: frozenset[str] = frozenset({
    "change-me", "changeme", "change_me", "secret", "token", "admin", "password", "test", "example",
    "your-token-here", "replace-me",
})
"""Tokens that appear in documentation and examples: refused whatever their length (compared lower-case)."""
TOKEN_HINT = ('Generate one with `python -c "import secrets; print(secrets.token_urlsafe(32))"` and pass it in '
              f"${ADMIN_TOKEN_ENV} (or admin.token in the serving config).")
REFUSED_STATE_KEY = "cvplatform.refused"
"""ASGI ``scope["state"]`` key where the connection layer (:mod:`cvplatform.serving.protocol`) records
``(status, code, detail)`` of a request it refused while its handler waited for the body."""
VARIANTS: tuple[str, str] = ("champion", "canary")
Variant = Literal["champion", "canary"]


# --------------------------------------------------------------------------- configuration
class ModelsConfig(StrictModel):
    """Which registered model is served and how its versions are found and run."""

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, data: Any) -> Any:
        if isinstance(data, dict):
            moved = {"registered_model": "registry.model_name", "champion_alias": "registry.champion_alias"}
            found = [f"models.{k} was replaced by {v} in params.yaml" for k, v in moved.items() if k in data]
            if found:
                raise ValueError("; ".join(found) + " (one key per setting): move the value there and delete it here")
        return data

    # the registered model and its champion alias are params.yaml's registry.model_name and
    # registry.champion_alias (one key per setting)
    canary_alias: str = Field("canary", min_length=1)
    """Registry alias of the version receiving a traffic share (set by the admin API)."""
    poll_interval_s: float = Field(30.0, ge=0.0)
    """Seconds between registry alias checks (a changed alias is reloaded and swapped); 0 = never poll."""
    intra_op_threads: int = Field(0, ge=0, le=256)
    """onnxruntime intra-op threads per session (0 = onnxruntime's default: one per physical core)."""
    allow_spinning: bool = False
    """Let idle onnxruntime threads busy-wait for work (lower latency on dedicated cores; on shared
    cores they steal CPU from the server's own threads)."""
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    """onnxruntime execution providers in order of preference (unavailable ones are skipped)."""
    warmup: bool = True
    """Run one batch through a freshly loaded model before it receives traffic (a failure = load failure)."""


class BatchingConfig(StrictModel):
    """Dynamic micro-batching: concurrent requests share one onnxruntime call."""

    max_batch_size: int = Field(32, ge=1, le=4096)
    """Most images in one onnxruntime call (a single larger request still runs, alone)."""
    max_wait_ms: float = Field(2.0, ge=0.0, le=1000.0)
    """Longest time the first image of a batch waits for others to join it."""
    workers: int = Field(1, ge=1, le=16)
    """onnxruntime calls in flight at once per model (each in its own thread)."""
    inline_decode_max_pixels: int = Field(65_536, ge=0, le=89_000_000)
    """A request whose images cost at most this many pixels to decode and preprocess (source pixels +
    model-input pixels per image) is decoded on the event loop, which is cheaper than a thread hop
    for small images; a larger one is decoded in a worker thread so the loop keeps serving. 0 = always
    a worker thread."""


class LimitsConfig(StrictModel):
    """Input limits; anything beyond them is answered with a 4xx JSON error."""

    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    """Largest request body in bytes (413 above)."""
    max_images: int = Field(64, ge=1, le=4096)
    """Most images (or tensor rows) in one request (413 above)."""
    max_pixels: int = Field(16_777_216, ge=1, le=89_000_000)
    """Largest width*height of an image, read from its header before decoding (413 above)."""
    min_side: int = Field(1, ge=1)
    """Smallest accepted width/height in pixels (400 below)."""
    formats: tuple[str, ...] = ("PNG", "JPEG", "BMP", "WEBP", "TIFF", "GIF")
    """Accepted image formats as Pillow names them (415 otherwise)."""
    max_request_pixels: int = Field(33_554_432, ge=1, le=10**10)
    """Largest sum of width*height over the images of one request, read from their headers before
    any pixel is decoded (413 above). Bounds what one request can make the server decode."""
    max_inflight_decode_bytes: int = Field(1 << 30, ge=1 << 20)
    """Memory budget shared by all requests in flight: estimated peak bytes of decoding images and
    parsing JSON bodies. A request is charged before decoding; one that does not fit now gets 429
    (retry later), one that could never fit gets 413."""
    header_timeout_s: float = Field(10.0, gt=0.0, le=3600.0)
    """Seconds a client has to send a request's headers, from its first byte (408 and closed after)."""
    body_timeout_s: float = Field(60.0, gt=0.0, le=3600.0)
    """Seconds a client has to send a request's body once its headers are in (408 and closed after)."""
    keep_alive_timeout_s: float = Field(5.0, gt=0.0, le=3600.0)
    """Seconds an idle connection (no request in progress, including a new one) is kept open."""
    max_header_bytes: int = Field(65_536, ge=1024, le=16 * 1024 * 1024)
    """Largest request line + headers in bytes (431 above)."""


class TrafficConfig(StrictModel):
    """Traffic split between champion and canary, shadow mirroring, and the headers that drive them."""

    canary_share: float = Field(0.0, ge=0.0, le=1.0)
    """Share of requests answered by the canary at start-up (the admin API changes it at run time)."""
    shadow: bool = False
    """Mirror requests to the other variant (scored in the background, never answering) at start-up."""
    shadow_share: float = Field(1.0, ge=0.0, le=1.0)
    """Share of requests mirrored when shadow mode is on."""
    max_pending_shadow: int = Field(256, ge=1)
    """Mirrored requests allowed in flight; more are skipped (counted), never queued without bound."""
    request_id_header: str = Field("X-Request-ID", min_length=1)
    """Header carrying the request id (hashed to pick the variant; generated when absent)."""
    session_header: str = Field("X-Session-ID", min_length=1)
    """Header that makes routing sticky: the same session always gets the same variant."""
    label_header: str = Field("X-True-Label", min_length=1)
    """Header with the true label(s) (comma-separated, one per image) for per-variant accuracy (classification)."""
    boxes_header: str = Field("X-True-Boxes", min_length=1)
    """Header with the true boxes of a detector's request images (JSON ``[[x0, y0, x1, y1, "class"], ...]`` in the
    image's pixels, or one such list per image) for per-variant mAP50 on labelled feedback (detection)."""


class AdminConfig(StrictModel):
    """The token-protected admin API (``/admin/...``)."""

    token: str | None = None
    """Bearer token; the environment variable named by ``token_env`` wins. None and unset = admin disabled.
    At least :data:`MIN_ADMIN_TOKEN_LENGTH` characters and not a documented example (see :func:`check_admin_token`)."""
    token_env: str = Field(ADMIN_TOKEN_ENV, min_length=1)
    """Environment variable holding the admin token."""

    @field_validator("token")
    @classmethod
    def _strong_token(cls, v: str | None) -> str | None:
        if v is not None:
            problem = admin_token_problem(v)
            if problem:
                raise ValueError(f"{problem} {TOKEN_HINT}")
        return v


class StatsConfig(StrictModel):
    """In-memory per-variant statistics read by the canary controller (``GET /admin/stats``)."""

    window: int = Field(5000, ge=10, le=1_000_000)
    """Latest latency and confidence samples kept per variant (percentiles and KS use them)."""
    confidence_bins: int = Field(10, ge=2, le=100)
    """Equal-width bins of the confidence histogram over [0, 1]."""
    disagreements_kept: int = Field(50, ge=0, le=10_000)
    """Latest shadow disagreements kept for inspection."""
    feedback_kept: int = Field(500, ge=0, le=100_000)
    """Latest labelled images kept per variant for a task that scores its labelled feedback from kept records
    (detection: true and served boxes, for mAP50); 0 keeps none. Each worker process keeps its own."""


class ServingConfig(StrictModel):
    """Everything in ``configs/deploy/serving.yaml``.

    Example:
        >>> from cvplatform.serving.schemas import ServingConfig
        >>> ServingConfig().batching.max_batch_size
        32
        >>> cfg = load_serving_config("configs/deploy/serving.yaml")  # doctest: +SKIP
    """

    models: ModelsConfig = ModelsConfig()
    batching: BatchingConfig = BatchingConfig()
    limits: LimitsConfig = LimitsConfig()
    traffic: TrafficConfig = TrafficConfig()
    admin: AdminConfig = AdminConfig()
    stats: StatsConfig = StatsConfig()

    def admin_token(self) -> str | None:
        """The admin token: ``$<admin.token_env>`` if set and non-empty, else ``admin.token``."""
        env = os.environ.get(self.admin.token_env, "").strip()
        return env or (self.admin.token or None)

    def admin_token_source(self) -> str:
        """Where :meth:`admin_token` comes from (for error messages)."""
        if os.environ.get(self.admin.token_env, "").strip():
            return f"${self.admin.token_env}"
        return "admin.token in the serving config"


def admin_token_problem(token: str) -> str | None:
    """Why ``token`` is too weak to protect the admin API, or None when it is acceptable.

    Example:
        >>> admin_token_problem("change-me")
        "the admin token is 'change-me', an example from the documentation."
        >>> admin_token_problem("x" * 40) is None
        True
    """
    if token.strip().lower() in EXAMPLE_ADMIN_TOKENS:
        return f"the admin token is {token.strip()!r}, an example from the documentation."
    if len(token) < MIN_ADMIN_TOKEN_LENGTH:
        return (f"the admin token has {len(token)} characters; at least {MIN_ADMIN_TOKEN_LENGTH} are needed "
                "so it cannot be guessed.")
    return None


def check_admin_token(token: str | None, source: str) -> None:
    """Refuse a weak admin token at start-up (None = admin API disabled, which is allowed).

    Args:
        token: the token the server would accept.
        source: where it came from (``$CVPLATFORM_ADMIN_TOKEN``, ``admin.token in FILE``, ...).

    Raises:
        ConfigError: shorter than :data:`MIN_ADMIN_TOKEN_LENGTH` characters or a documented example,
            with the command that generates a good one.

    Example:
        >>> check_admin_token(None, "$CVPLATFORM_ADMIN_TOKEN")
        >>> check_admin_token("change-me", "$CVPLATFORM_ADMIN_TOKEN")  # doctest: +IGNORE_EXCEPTION_DETAIL
        Traceback (most recent call last):
        cvplatform.errors.ConfigError: ...
    """
    if token is None:
        return
    problem = admin_token_problem(token)
    if problem:
        raise ConfigError(f"{source}: {problem} The server does not start with it. {TOKEN_HINT}")


def load_serving_config(path: str | os.PathLike[str] | None) -> ServingConfig:
    """Load ``configs/deploy/serving.yaml`` (None = all defaults).

    Raises:
        ConfigError: missing file, bad YAML, unknown keys or bad values, naming the file and key.

    Example:
        >>> load_serving_config(None).traffic.session_header
        'X-Session-ID'
    """
    if path is None:
        return ServingConfig()
    return load_config(Path(path), ServingConfig)


# --------------------------------------------------------------------------- API: errors
class ErrorResponse(BaseModel):
    """Every 4xx/5xx body: a stable error code and a human detail (what, where, what to do)."""

    error: str
    detail: str = ""


# --------------------------------------------------------------------------- API: /v1/predict
class Instance(BaseModel):
    """One image in a JSON request: base64 of the encoded file (PNG, JPEG, ...)."""

    model_config = ConfigDict(extra="forbid")

    b64: str = Field(min_length=1)


class PredictRequest(BaseModel):
    """``{"instances": [{"b64": "..."}, ...], "parameters": {...}}`` (a bare base64 string per instance is also
    accepted). ``parameters``: the task's decoding parameters (detection: ``score_threshold``,
    ``max_detections``); a model whose task declares none refuses any."""

    model_config = ConfigDict(extra="forbid")

    instances: list[Instance | str] = Field(min_length=1)
    parameters: dict[str, Any] | None = None


# --------------------------------------------------------------------------- API: Open Inference Protocol v2
class OipTensor(BaseModel):
    """An OIP v2 input tensor (JSON ``data`` flat or nested, row-major)."""

    model_config = ConfigDict(extra="allow")

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: Any = None


class OipRequestedOutput(BaseModel):
    """An output the client asks for (``probabilities`` or ``label``)."""

    model_config = ConfigDict(extra="allow")

    name: str
    parameters: dict[str, Any] | None = None


class OipInferRequest(BaseModel):
    """An OIP v2 inference request body."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[OipTensor] = Field(min_length=1)
    outputs: list[OipRequestedOutput] | None = None

    @field_validator("id")
    @classmethod
    def _unicode_text(cls, v: str | None) -> str | None:
        if v is not None:  # echoed in the response: a lone surrogate (legal as a JSON escape) cannot be
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("must be valid Unicode text (it has a lone surrogate escape)") from None
        return v


# --------------------------------------------------------------------------- API: admin
class CanaryRequest(BaseModel):
    """``POST /admin/canary``: load ``version`` as the canary (and optionally set its share / shadow)."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(min_length=1)
    share: float | None = Field(None, ge=0.0, le=1.0)
    shadow: bool | None = None
    shadow_share: float | None = Field(None, ge=0.0, le=1.0)

    @model_validator(mode="before")
    @classmethod
    def _version_as_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("version"), int) and not isinstance(data["version"], bool):
            data = {**data, "version": str(data["version"])}
        return data


class TrafficRequest(BaseModel):
    """``POST /admin/traffic``: change the canary share and/or shadow mode (omitted fields unchanged)."""

    model_config = ConfigDict(extra="forbid")

    canary_share: float | None = Field(None, ge=0.0, le=1.0)
    shadow: bool | None = None
    shadow_share: float | None = Field(None, ge=0.0, le=1.0)


class AbortRequest(BaseModel):
    """``POST /admin/canary/abort``: stop the canary; ``reason`` is tagged on its registry version."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field("aborted by operator", min_length=1, max_length=5000)
    version: str | None = None
    """Version to tag when no canary is loaded (e.g. one that failed to load); None = the loaded canary."""
    status: Literal["rolled_back", "aborted"] = "rolled_back"
    """``deploy.status`` tagged on the version: rolled_back (judged) | aborted (no verdict, e.g. too little traffic)."""

    @model_validator(mode="before")
    @classmethod
    def _version_as_text(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("version"), int) and not isinstance(data["version"], bool):
            data = {**data, "version": str(data["version"])}
        return data


class PromoteRequest(BaseModel):
    """``POST /admin/promote``: make the loaded canary the champion (through the registry)."""

    model_config = ConfigDict(extra="forbid")

    version: str | None = None
    """Expected canary version (guards against promoting something else); None = whatever is loaded."""
    reason: str = Field("canary analysis passed", max_length=5000)


class RollbackRequest(BaseModel):
    """``POST /admin/rollback``: move the champion back to the previous champion (through the registry)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field("rolled back by operator", max_length=5000)


__all__ = [
    "ADMIN_TOKEN_ENV",
    "EXAMPLE_ADMIN_TOKENS",
    "MIN_ADMIN_TOKEN_LENGTH",
    "REFUSED_STATE_KEY",
    "TOKEN_HINT",
    "VARIANTS",
    "AbortRequest",
    "AdminConfig",
    "BatchingConfig",
    "CanaryRequest",
    "ErrorResponse",
    "Instance",
    "LimitsConfig",
    "ModelsConfig",
    "OipInferRequest",
    "OipTensor",
    "PredictRequest",
    "PromoteRequest",
    "RollbackRequest",
    "ServingConfig",
    "StatsConfig",
    "TrafficConfig",
    "TrafficRequest",
    "Variant",
    "admin_token_problem",
    "check_admin_token",
    "load_serving_config",
]
