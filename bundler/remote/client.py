"""The one door to Kaggle: the `kaggle` package's Python API, imported lazily, errors made one line.

`connect()` imports the package (which authenticates at import time and prints a long help
text when no credentials exist: both are captured here, never shown) and authenticates with
the credentials where the package reads them: `KAGGLE_API_TOKEN` or `~/.kaggle/access_token`,
`KAGGLE_USERNAME` + `KAGGLE_KEY`, `~/.kaggle/kaggle.json` (or `KAGGLE_CONFIG_DIR`), or a
`kaggle auth login`. Missing credentials are one `RemoteError` line naming those fixes.
Credentials are never printed, logged or stored by bundler.

`Kaggle` wraps the few calls bundler makes and returns plain values; every failure of the
client (an HTTP error, no connection, a refusal of the client's own checks) becomes a
`RemoteError` naming the call and the likely fix. With `KAGGLE_API_ENVIRONMENT=LOCALHOST` the
package talks to `http://localhost` instead of Kaggle (how the tests reach their stand-in).

The HTTP calls behind each method (POST `/api/v1/<service>/<method>`, JSON bodies):
- `dataset_status`: `datasets.DatasetApiService/GetDatasetStatus`;
- `dataset_version_number`: `datasets.DatasetApiService/GetDataset`;
- `create_dataset` / `version_dataset`: `blobs.BlobApiService/StartBlobUpload` and a PUT of each
  file to the URL it returns, then `datasets.DatasetApiService/CreateDataset` or
  `.../CreateDatasetVersion` (create first asks `GetDatasetStatus`, expecting 404);
- `push_kernel`: `kernels.KernelsApiService/SaveKernel`;
- `kernel_status`: `kernels.KernelsApiService/GetKernelSessionStatus`;
- `kernel_output`: `kernels.KernelsApiService/ListKernelSessionOutput` and a GET of each file URL;
- `submit_code`: `competitions.CompetitionApiService/CreateCodeSubmission`;
- `submission`: `competitions.CompetitionApiService/GetSubmission`.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bundler.errors import RemoteError

T = TypeVar("T")

NO_CREDENTIALS = (
    "no Kaggle credentials found: set KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json in ~/.kaggle/ "
    "(Kaggle > Settings > API > Create New Token), or set KAGGLE_API_TOKEN / write ~/.kaggle/access_token, "
    "or run `kaggle auth login`"
)
SOURCE_KINDS = ("dataset", "competition", "kernel", "model")


@dataclass(frozen=True)
class PushResponse:
    """What `SaveKernel` answered."""

    version: int | None
    url: str
    error: str
    invalid: dict[str, list[str]]  # "dataset" | "competition" | "kernel" | "model" -> refused sources


@dataclass(frozen=True)
class Submission:
    """A submission's scoring state, as `GetSubmission` answers it."""

    ref: int
    status: str  # "pending" | "complete" | "error"
    public_score: str
    error: str


@contextlib.contextmanager
def _silenced() -> Iterator[io.StringIO]:
    """The client's own prints (help texts, upload chatter) kept off the user's terminal."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        yield buf


def _http_status(error: BaseException) -> int | None:
    response = getattr(error, "response", None)
    status = getattr(response, "status_code", None)
    return status if isinstance(status, int) else None


def _is_connection_error(error: BaseException) -> bool:
    names = {cls.__name__ for cls in type(error).__mro__}
    return bool(names & {"ConnectionError", "ConnectTimeout", "ProtocolError", "NewConnectionError"})


def describe_failure(what: str, error: BaseException) -> str:
    """One line for a failed call `what`: the HTTP status or the client's reason, and the fix."""
    status = _http_status(error)
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if status in (401, 403):
        return f"{what}: Kaggle refused the credentials or the access (HTTP {status}: {first}); check them and the id"
    if status == 404:
        return f"{what}: not found on Kaggle (HTTP 404: {first}); check the id in bundle.toml"
    if status is not None:
        return f"{what}: Kaggle answered HTTP {status} ({first}); try again later"
    if _is_connection_error(error):
        return f"{what}: cannot reach Kaggle ({first}); check the network connection"
    return f"{what}: {first}"


def _enum_name(value: Any) -> str:
    name = getattr(value, "name", value)
    return str(name or "").lower()


def connect() -> Kaggle:
    """An authenticated client; `RemoteError` with the fix when the package or credentials are missing."""
    try:
        with _silenced():
            module: Any = importlib.import_module("kaggle")
    except ImportError as e:
        raise RemoteError(f"the kaggle package cannot be imported ({e}); install it: pip install kaggle") from None
    api = module.api
    if not getattr(api, "_authenticated", False):
        try:
            with _silenced():
                api.authenticate()
        except SystemExit:
            raise RemoteError(NO_CREDENTIALS) from None
        except Exception as e:
            raise RemoteError(describe_failure("authenticating with Kaggle", e)) from None
    return Kaggle(api)


class Kaggle:
    """The calls bundler makes, through an authenticated `kaggle.api.KaggleApi`."""

    def __init__(self, api: Any) -> None:
        self._api = api

    @property
    def username(self) -> str:
        return str(self._api.config_values.get("username") or "")

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            with _silenced():
                return fn()
        except RemoteError:
            raise
        except SystemExit:
            raise RemoteError(NO_CREDENTIALS) from None
        except Exception as e:
            raise RemoteError(describe_failure(what, e)) from None

    def dataset_status(self, ref: str) -> str | None:
        """The newest version's processing state (`ready`, `failed`, ...), None when no such dataset."""
        try:
            with _silenced():
                return str(self._api.dataset_status(ref))
        except Exception as e:
            if _http_status(e) == 404:
                return None
            raise RemoteError(describe_failure(f"status of dataset {ref}", e)) from None

    def dataset_version_number(self, ref: str) -> int:
        import json

        text = self._call(
            f"version of dataset {ref}", lambda: self._api.dataset_status(ref, format="json(current_version_number)")
        )
        number = json.loads(text).get("current_version_number")
        if not isinstance(number, int) or number < 1:
            raise RemoteError(f"dataset {ref}: Kaggle reported no version number ({number!r}); check its page")
        return number

    def _dataset_result(self, what: str, response: Any) -> None:
        error = str(getattr(response, "error", "") or "")
        status = str(getattr(response, "status", "") or "")
        if error or (status and status.lower() != "ok"):
            raise RemoteError(f"{what}: Kaggle refused it ({error or status})")

    def create_dataset(self, folder: Path, *, public: bool) -> None:
        what = f"creating the dataset from {folder}"
        response = self._call(what, lambda: self._api.dataset_create_new(str(folder), public=public, quiet=True))
        self._dataset_result(what, response)

    def version_dataset(self, folder: Path, message: str) -> None:
        what = f"uploading a new dataset version from {folder}"
        response = self._call(what, lambda: self._api.dataset_create_version(str(folder), message, quiet=True))
        self._dataset_result(what, response)

    def push_kernel(self, folder: Path, *, no_run: bool) -> PushResponse:
        response = self._call(
            f"pushing the notebook in {folder}", lambda: self._api.kernels_push(str(folder), no_run=no_run)
        )
        invalid = {
            kind: [str(s) for s in (getattr(response, f"invalid_{kind}_sources", None) or [])] for kind in SOURCE_KINDS
        }
        version = getattr(response, "version_number", None)
        return PushResponse(
            version=int(version) if version else None,
            url=str(getattr(response, "url", "") or ""),
            error=str(getattr(response, "error", "") or ""),
            invalid={k: v for k, v in invalid.items() if v},
        )

    def kernel_status(self, ref: str, version: int | None) -> tuple[str, str]:
        """(status, failure message) of the kernel's version `version` (the newest when None)."""
        target = f"{ref}/{version}" if version else ref
        try:
            with _silenced():
                response = self._api.kernels_status(target)
        except Exception as e:
            if _http_status(e) == 404:  # a version just pushed may not be listed yet
                return "not_found", ""
            raise RemoteError(describe_failure(f"status of notebook {target}", e)) from None
        return _enum_name(getattr(response, "status", "")), str(getattr(response, "failure_message", "") or "")

    def kernel_output(self, ref: str, version: int | None, dest: Path) -> list[Path]:
        """Download every output file and the log of the kernel's version into `dest`."""
        target = f"{ref}/{version}" if version else ref
        dest.mkdir(parents=True, exist_ok=True)
        files, _ = self._call(
            f"downloading the outputs of {target}",
            lambda: self._api.kernels_output(target, str(dest), force=True, quiet=True),
        )
        return [Path(f) for f in files]

    def submit_code(self, *, competition: str, kernel: str, version: int, file_name: str, message: str) -> int | None:
        """Submit kernel version `version`'s `file_name`; the submission's ref (None when none came back)."""
        response = self._call(
            f"submitting {kernel} v{version} to {competition}",
            lambda: self._api.competition_submit_code(file_name, message, competition, kernel, version, quiet=True),
        )
        ref = getattr(response, "ref", None)
        return int(ref) if ref else None

    def submission(self, ref: int) -> Submission:
        response = self._call(f"status of submission {ref}", lambda: self._api.get_submission(ref))
        return Submission(
            ref=ref,
            status=_enum_name(getattr(response, "status", "")) or "pending",
            public_score=str(getattr(response, "public_score", "") or ""),
            error=str(getattr(response, "error_description", "") or ""),
        )


def poll_interval(option: float | None, default: float) -> float:
    """Seconds between polls: the option, else `BUNDLER_POLL_S`, else `default`."""
    if option is not None:
        value = option
    else:
        raw = os.environ.get("BUNDLER_POLL_S")
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise RemoteError(f"BUNDLER_POLL_S = {raw!r} must be seconds (a number > 0)") from None
    if not value > 0:
        raise RemoteError(f"poll interval {value!r} must be seconds > 0 (--poll or BUNDLER_POLL_S)")
    return value
