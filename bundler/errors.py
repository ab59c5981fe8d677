"""One exception tree. Every message names the input at fault and says how to fix it."""

from __future__ import annotations


class BundlerError(Exception):
    """Base of every error `bundler` reports to a user (printed without a traceback)."""

    exit_code = 1


class ConfigError(BundlerError):
    """`bundle.toml` (or a CLI flag overriding it) is invalid."""

    exit_code = 2


class BuildError(BundlerError):
    """`bundler build` could not produce a complete dataset folder."""


class CredentialError(BuildError):
    """A credential file was found among the inputs and refused."""


class WeightsError(BuildError):
    """A checkpoint cannot be read or does not fit its declared architecture."""


class WheelsError(BuildError):
    """The wheel closure cannot be resolved, downloaded, built or installed offline."""


class PreprocessError(BuildError):
    """A model's albumentations pipeline cannot be read, translated, or proved equal."""


class TargetPythonError(BundlerError):
    """`BUNDLER_TARGET_PYTHON` names something that is not a working Python of the version wanted.

    The rehearsal and the dry-run's runtime turn it into their own error, adding their way out."""


class ManifestError(BundlerError):
    """A built bundle's `bundle.json` is missing, unreadable, malformed, or of another bundle."""


class RenderError(BundlerError):
    """The notebook or kernel-metadata.json cannot be written."""


class MetadataError(RenderError):
    """kernel-metadata.json breaks a rule the Kaggle CLI enforces."""


class DryRunError(BundlerError):
    """A dry-run could not start, or its verdict is a failure."""


class DemoError(BundlerError):
    """The demo could not complete."""


class RemoteError(BundlerError):
    """A Kaggle call failed or timed out, Kaggle reported a failure, or credentials are missing."""


class KaggleHTTPError(RemoteError):
    """A Kaggle call answered with an HTTP error (after any retries); `status` is its code, None when
    no answer came at all (no connection)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message, status)
        self.status = status

    def __str__(self) -> str:
        return str(self.args[0])


class TuneError(BundlerError):
    """`bundler tune` could not start: a missing or unfit input, or a bad option."""


class ScoringError(BundlerError):
    """A submission or its labels cannot be scored: a missing column or key, an unknown metric, a
    prediction of the wrong form for the metric."""
