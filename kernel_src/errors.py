"""The kernel's exceptions: one base, `KernelError`, and one class per kind of failure.

Standard library only: `kernel_src.bundle` raises these before any wheel is installed. Each
error also derives from the built-in it replaced (`ValueError` for a bad setting or file layout,
`RuntimeError` for the rest), so `except ValueError` / `except RuntimeError` still catch them.
Every one pickles (the dry-run executes the notebook in another process), keeping its message
and attributes.
"""

from __future__ import annotations


class KernelError(Exception):
    """Base of every error the kernel raises on purpose. The message names the input and the fix."""


class BundleError(KernelError, RuntimeError):
    """The bundle or the competition data cannot be used. The message names the file and the fix."""


class SpecError(KernelError, ValueError):
    """A setting is invalid. `key` is its dotted path, e.g. `segmenters[1].tta`."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message

    def __reduce__(self) -> tuple[type[SpecError], tuple[str, str]]:
        return type(self), (self.key, self.message)


class SubmissionFormatError(KernelError, ValueError):
    """A sample submission (or a submission being scored) does not have the configured layout. The
    message names the file, the line and the setting to change."""


class ModelError(KernelError, RuntimeError):
    """A model cannot be built or its weights do not fit. The message names the model and key."""


class ModelRunError(KernelError, RuntimeError):
    """A model raised (or returned an output of the wrong shape) while predicting a batch."""

    def __init__(self, model: str, error: BaseException | str) -> None:
        detail = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        super().__init__(f"model {model!r} failed: {detail}")
        self.model = model
        self.detail = detail

    def __reduce__(self) -> tuple[type[ModelRunError], tuple[str, str]]:
        return type(self), (self.model, self.detail)


class BatchError(KernelError, RuntimeError):
    """A batch could not be predicted for a reason outside every model's forward (e.g. a CUDA error
    in the merge): its images get the fallback (empty masks) and the run goes on."""

    def __init__(self, images: int, error: BaseException | str) -> None:
        detail = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        super().__init__(f"a batch of {images} images failed outside the models' forwards: {detail}")
        self.images = images
        self.detail = detail

    def __reduce__(self) -> tuple[type[BatchError], tuple[int, str]]:
        return type(self), (self.images, self.detail)


class InputError(BundleError):
    """The test input (the image folder, an array file, a CSV of pixel rows) does not fit the `[input]`
    settings. The message names the file, what was found and the setting to change."""
