"""Registry errors: one class per thing that can go wrong, all :class:`~cvplatform.errors.RegistryError`.

Every message names the model / version / person involved and says what to do.
Callers that only care "did the registry operation fail" catch ``RegistryError``;
tests and tools that need to tell the cases apart catch the subclasses.
"""

from __future__ import annotations

from cvplatform.errors import GateFailed, RegistryError


class RegistryUnavailableError(RegistryError):
    """The tracking server could not be reached within the retry budget."""


class RegistrationInputError(RegistryError):
    """An input of ``register`` (export / evaluation / training outputs) is missing or inconsistent."""


class GateReportMismatchError(RegistrationInputError, GateFailed):
    """The evaluation gate report judged another artifact than the one being registered (exit code 3)."""


class UnknownModelError(RegistryError):
    """The registered model does not exist."""


class UnknownVersionError(RegistryError):
    """The model version (or alias) does not exist."""


class UnmanagedVersionError(RegistryError):
    """The version was not registered by cvplatform (lineage / approval tags missing) or is incomplete."""


class ApprovalError(RegistryError):
    """An approval or rejection is not allowed (a refused rule: exit code 3)."""

    exit_code = 3


class InvalidReviewerError(ApprovalError):
    """The reviewer name is empty, or mixes scripts (a look-alike of another name)."""


class IdentityError(ApprovalError):
    """Who is deciding cannot be established (unauthenticated server, a --reviewer that is not the caller)."""


class IncompatibleVersionError(ApprovalError):
    """The version's task, classes or input contract differ from the champion's and nobody confirmed the change."""


class FourEyesError(ApprovalError):
    """The reviewer is the version's author."""


class ReviewerNotAllowedError(ApprovalError):
    """The reviewer is not in ``registry.reviewers``."""


class GatesNotPassedError(ApprovalError, GateFailed):
    """The version's must-pass evaluation gates failed, so it cannot be approved."""


class AlreadyApprovedError(ApprovalError):
    """The version is already approved (approving twice, or rejecting an approved version)."""


class AlreadyRejectedError(ApprovalError):
    """The version is already rejected (approving a rejected version, or rejecting twice)."""


class PromotionError(RegistryError):
    """A promotion or rollback is not allowed (a refused rule: exit code 3)."""

    exit_code = 3


class NotApprovedError(PromotionError):
    """Promoting a version that is not approved."""


class NoChampionError(PromotionError):
    """Rolling back when no version holds the champion alias."""


class NoPreviousChampionError(PromotionError):
    """Rolling back when the champion has no previous champion to return to."""


class AuditIntegrityError(RegistryError):
    """A version's audit history is broken: an event was edited, reordered, inserted or deleted (exit code 3)."""

    exit_code = 3


class ArtifactIntegrityError(RegistryError):
    """A downloaded model artifact does not match the sha256 recorded at registration."""


__all__ = [
    "AlreadyApprovedError",
    "AlreadyRejectedError",
    "ApprovalError",
    "ArtifactIntegrityError",
    "AuditIntegrityError",
    "FourEyesError",
    "GateReportMismatchError",
    "GatesNotPassedError",
    "IdentityError",
    "IncompatibleVersionError",
    "InvalidReviewerError",
    "NoChampionError",
    "NoPreviousChampionError",
    "NotApprovedError",
    "PromotionError",
    "RegistrationInputError",
    "RegistryError",
    "RegistryUnavailableError",
    "ReviewerNotAllowedError",
    "UnknownModelError",
    "UnknownVersionError",
    "UnmanagedVersionError",
]
