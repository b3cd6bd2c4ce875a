"""One exception hierarchy for the whole platform.

Every message says what was wrong, where (file / key / version) and what to do.
The CLI turns any :class:`CVPlatformError` into a one-screen message and a
non-zero exit code; Airflow tasks let it propagate so the task fails with it.
"""

from __future__ import annotations


class CVPlatformError(Exception):
    """Base class of every error raised on purpose by cvplatform."""

    exit_code: int = 1


class ConfigError(CVPlatformError):
    """A params file or a config file is missing, unreadable or invalid."""

    exit_code = 2


class SourceError(CVPlatformError):
    """A data source cannot be read (bad spec, missing folder, S3 failure)."""


class DataError(CVPlatformError):
    """The data is unusable for a stage (empty split, missing columns, ...)."""


class ValidationFailed(CVPlatformError):
    """The dataset failed its expectation suite."""

    exit_code = 3


class GateFailed(CVPlatformError):
    """A release gate (evaluation, parity, approval rule) failed."""

    exit_code = 3


class ModelError(CVPlatformError):
    """A model or checkpoint cannot be built, loaded or used."""


class ModelConfigError(ConfigError, ModelError):
    """An unknown architecture or invalid architecture arguments (``train.model``): a configuration error."""


class RegistryError(CVPlatformError):
    """A registry operation is not allowed or the registry cannot be reached."""
