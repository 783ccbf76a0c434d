"""Every error the engine raises on purpose.

All of them pass their message to ``super().__init__`` and take only that message in the
constructor, so they survive the pickle round trip Ray makes when a worker error travels
back to the driver.
"""

from __future__ import annotations

__all__ = [
    "ScreeningError",
    "InvalidParameterError",
    "StimulusError",
    "ModelNotFoundError",
    "UnknownModelIdError",
    "ModelLoadError",
    "CheckpointError",
    "StoreError",
    "UnsafePickleError",
    "IntegrityError",
    "ImageDecodeError",
    "InputChangedError",
    "RunLockedError",
    "UnitsFailedError",
    "OutputError",
]


class ScreeningError(Exception):
    """Base class of every error raised by ``screening``.

    ``exit_code`` is what the command line exits with (``screening.cli.main``, the one place that prints these): 2
    for a user's mistake (the default), 1 where the work ran and part of it did not complete."""

    exit_code = 2


class InvalidParameterError(ScreeningError, ValueError):
    """A parameter has a value outside its valid set; the message names both."""


class StimulusError(ScreeningError, ValueError):
    """An in-memory stimulus array is not a batch of RGB uint8-valued square images."""


class ModelNotFoundError(ScreeningError, LookupError):
    """The model id is unknown, or the store holds no such model."""


class UnknownModelIdError(ModelNotFoundError, InvalidParameterError):
    """A model id that is not one of the CNN8 models: BERG raises ModelNotFoundError, our rule says
    InvalidParameterError; this is both, so either ``except`` catches it."""


class ModelLoadError(ScreeningError, RuntimeError):
    """A model's files exist but could not be loaded."""


class CheckpointError(ModelLoadError):
    """A checkpoint does not match the published key set or shapes."""


class StoreError(ScreeningError, OSError):
    """A model store (local, s3:// or https) could not be read as a BERG layout."""


class UnsafePickleError(ScreeningError, RuntimeError):
    """A pickled file asked for an object outside the safe allow-list."""


class IntegrityError(ScreeningError, RuntimeError):
    """A downloaded or cached file does not match its expected size or sha256."""


class ImageDecodeError(ScreeningError, ValueError):
    """Encoded image bytes could not be decoded into an RGB image."""


class InputChangedError(InvalidParameterError):
    """An output root holds committed results for an input shard that has changed (or is gone) since."""


class RunLockedError(ScreeningError, RuntimeError):
    """Another live run holds the output root's lock."""


class UnitsFailedError(ScreeningError, RuntimeError):
    """Some units of a run could not be committed (write failures, missing or duplicated rows); the rest were."""

    exit_code = 1


class OutputError(ScreeningError, OSError):
    """The output root could not be written (disk full, permissions, storage errors); the message says which."""

    exit_code = 1
