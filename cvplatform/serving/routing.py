"""Traffic split between champion and canary, and shadow mirroring: deterministic, sticky, monotone.

A request is routed by hashing a *routing key*: the session id when the client
sends one (``X-Session-ID``: every request of a session gets the same variant),
else the request id (``X-Request-ID``, generated when absent). The hash maps the
key to a number ``u`` in ``[0, 1)``; the request goes to the canary when
``u < canary_share``. Consequences:

* **deterministic**: the same key and the same canary version always give the
  same variant (retries land on the same model);
* **monotone**: raising the share from 10 % to 50 % keeps every key that was
  already on the canary there (users do not flip back and forth during a rollout);
* the hash is salted with the canary version, so each new canary samples a
  fresh population.

Shadow mirroring uses an independent hash (different salt) and ``shadow_share``.
Only the standard library is used.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass, replace

from cvplatform.errors import ConfigError


def unit_hash(key: str, salt: str = "") -> float:
    """Map ``key`` (with ``salt``) to a uniform number in ``[0, 1)``, stable across processes.

    Example:
        >>> unit_hash("abc") == unit_hash("abc")
        True
        >>> 0.0 <= unit_hash("abc", "v2") < 1.0
        True
    """
    digest = hashlib.sha256(f"{salt}\x00{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / float(1 << 64)


def new_request_id() -> str:
    """A fresh random request id (32 hex characters).

    Example:
        >>> len(new_request_id())
        32
    """
    return uuid.uuid4().hex


@dataclass(frozen=True)
class TrafficState:
    """The live routing settings (replaced as a whole, never mutated: readers see one consistent state).

    Attributes:
        canary_share: share of requests answered by the canary, in [0, 1].
        shadow: mirror requests to the other variant for agreement analysis.
        shadow_share: share of requests mirrored when ``shadow`` is on.
    """

    canary_share: float = 0.0
    shadow: bool = False
    shadow_share: float = 1.0

    def __post_init__(self) -> None:
        for name in ("canary_share", "shadow_share"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not 0.0 <= float(v) <= 1.0:
                raise ConfigError(f"traffic.{name}: expected a number in [0, 1], got {v!r}.")

    def updated(self, **changes: object) -> TrafficState:
        """A copy with the non-None ``changes`` applied (validated)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def routing_key(request_id: str, session_id: str | None) -> str:
    """The key a request is routed by: the session id when given (sticky), else the request id.

    Example:
        >>> routing_key("req-1", "user-7"), routing_key("req-1", None)
        ('s:user-7', 'r:req-1')
    """
    return f"s:{session_id}" if session_id else f"r:{request_id}"


def choose_variant(key: str, canary_share: float, canary_version: str | None) -> str:
    """``"canary"`` if ``key`` falls in the canary share, else ``"champion"``.

    Args:
        key: from :func:`routing_key`.
        canary_share: share in [0, 1].
        canary_version: the loaded canary's version (salts the hash); None = no canary loaded.

    Example:
        >>> choose_variant("r:abc", 0.0, "2"), choose_variant("r:abc", 1.0, "2"), choose_variant("r:abc", 1.0, None)
        ('champion', 'canary', 'champion')
    """
    if canary_version is None or canary_share <= 0.0:
        return "champion"
    if canary_share >= 1.0:
        return "canary"
    return "canary" if unit_hash(key, f"canary:{canary_version}") < canary_share else "champion"


def should_shadow(key: str, state: TrafficState) -> bool:
    """Whether a request with routing ``key`` is mirrored to the other variant.

    Example:
        >>> should_shadow("r:abc", TrafficState(shadow=True, shadow_share=1.0))
        True
        >>> should_shadow("r:abc", TrafficState(shadow=False))
        False
    """
    if not state.shadow or state.shadow_share <= 0.0:
        return False
    if state.shadow_share >= 1.0:
        return True
    return unit_hash(key, "shadow") < state.shadow_share


__all__ = ["TrafficState", "choose_variant", "new_request_id", "routing_key", "should_shadow", "unit_hash"]
