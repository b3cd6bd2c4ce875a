"""Is a version a drop-in replacement for the champion? Task, class list and input contract.

A version whose task, class list (names *and* order: the logits' meaning) or input
contract (input size, normalisation, channel order, layout, resize interpolation, stretch or letterbox)
differs from the champion's breaks every client of the service. It may still become
champion, but only when the reviewer confirms the change explicitly when approving
(``cvplatform registry approve ... --confirm-incompatible``); the confirmation, with the
differences and the champion it was confirmed against, is part of the signed approval
event, and :func:`cvplatform.registry.promote` checks it against the champion at
promotion time.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from cvplatform.registry.client import TAG_CLASS_NAMES, TAG_CONTRACT, TAG_INPUT_SIZE, TAG_TASK

DEFAULT_TASK = "classification"
#: What a contract key a version does not record means (it was registered before the key existed).
_CONTRACT_DEFAULTS: dict[str, Any] = {"resize": "stretch"}


def _json(raw: str | None) -> Any:
    try:
        return json.loads(raw) if raw else None
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class ModelFacts:
    """What clients of a served model rely on.

    Example:
        >>> a = ModelFacts("classification", ("cat", "dog"), {"input_size": [8, 8]})
        >>> b = ModelFacts("classification", ("cat", "dog", "fox"), {"input_size": [8, 8]})
        >>> differences(b, a)
        ["class list: 2 classes ['cat', 'dog'] -> 3 classes ['cat', 'dog', 'fox']"]
    """

    task: str
    class_names: tuple[str, ...]
    contract: dict[str, Any]

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> ModelFacts:
        """Read the facts from a version's tags (older versions: class names and input size only)."""
        names = _json(tags.get(TAG_CLASS_NAMES)) or []
        contract = _json(tags.get(TAG_CONTRACT))
        if not isinstance(contract, dict):
            size = _json(tags.get(TAG_INPUT_SIZE))
            contract = {"input_size": size} if size is not None else {}
        return cls(str(tags.get(TAG_TASK) or DEFAULT_TASK), tuple(str(n) for n in names), dict(contract))

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, "class_names": list(self.class_names), "contract": self.contract}

    def fingerprint(self) -> str:
        """sha256 of the canonical JSON of the facts (what a confirmation is bound to)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _names(n: tuple[str, ...]) -> str:
    shown = list(n) if len(n) <= 12 else [*n[:12], "..."]
    return f"{len(n)} classes {shown}"


def differences(new: ModelFacts, old: ModelFacts) -> list[str]:
    """What changes for clients when ``new`` replaces ``old`` (empty: compatible)."""
    out: list[str] = []
    if new.task != old.task:
        out.append(f"task: {old.task} -> {new.task}")
    if new.class_names != old.class_names:
        if set(new.class_names) == set(old.class_names):
            out.append(f"class order: {list(old.class_names)} -> {list(new.class_names)} (same classes, other logits)")
        else:
            out.append(f"class list: {_names(old.class_names)} -> {_names(new.class_names)}")
    for k in sorted(set(new.contract) | set(old.contract)):
        a, b = old.contract.get(k, _CONTRACT_DEFAULTS.get(k)), new.contract.get(k, _CONTRACT_DEFAULTS.get(k))
        if a is not None and b is not None and a != b:
            out.append(f"input contract {k}: {a} -> {b}")
    return out


__all__ = ["DEFAULT_TASK", "ModelFacts", "differences"]
