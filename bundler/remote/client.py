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

Calls that Kaggle turns away for a while are tried again (`Retry`): a 429 waits what its
`Retry-After` header says (seconds or an HTTP date), an HTTP 5xx or a connection refused or reset
waits an exponential, jittered backoff; both bounded in count and in total time, and each wait
is said in one line on the console. A call that is not safe to repeat (a submission) is tried
again only on a 429, which Kaggle answers before doing anything. Status values are compared by
name: `KernelWorkerStatus.COMPLETE`, `COMPLETE` and `complete` are all `complete`.

The HTTP calls behind each method (POST `/api/v1/<service>/<method>`, JSON bodies):
- `dataset_status`: `datasets.DatasetApiService/GetDatasetStatus`;
- `dataset_version_number`: `datasets.DatasetApiService/GetDataset`;
- `dataset_files`: `datasets.DatasetApiService/ListDatasetFiles` (paged);
- `create_dataset` / `version_dataset`: `blobs.BlobApiService/StartBlobUpload` and a PUT of each
  file to the URL it returns, then `datasets.DatasetApiService/CreateDataset` or
  `.../CreateDatasetVersion` (create first asks `GetDatasetStatus`, expecting 404);
- `model_owner` / `create_model`: `models.ModelApiService/GetModel` / `CreateModel`;
- `model_version` / `create_model_variation` / `version_model_variation`:
  `models.ModelApiService/GetModelInstance` / `CreateModelInstance` / `CreateModelInstanceVersion`
  (each upload as for datasets, blob type MODEL);
- `model_files`: `models.ModelApiService/ListModelInstanceVersionFiles` (paged);
- `push_kernel`: `kernels.KernelsApiService/SaveKernel`;
- `kernel_settings`: `kernels.KernelsApiService/GetKernel` (the settings Kaggle keeps, read back);
- `kernel_status`: `kernels.KernelsApiService/GetKernelSessionStatus`;
- `kernel_output`: `kernels.KernelsApiService/ListKernelSessionOutput` and a GET of each file URL;
- `submit_code`: `competitions.CompetitionApiService/CreateCodeSubmission`;
- `submission`: `competitions.CompetitionApiService/GetSubmission`.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import importlib
import io
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from bundler.errors import KaggleHTTPError, RemoteError

T = TypeVar("T")

NO_CREDENTIALS = (
    "no Kaggle credentials found: set KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json in ~/.kaggle/ "
    "(Kaggle > Settings > API > Create New Token), or set KAGGLE_API_TOKEN / write ~/.kaggle/access_token, "
    "or run `kaggle auth login`"
)
SOURCE_KINDS = ("dataset", "competition", "kernel", "model")
RATE_LIMITED = 429


@dataclass(frozen=True)
class Retry:
    """How often and how long a refused call is tried again.

    `attempts` tries in all, and no wait that would end past `total_s` after the first try;
    backoff waits are `base_s * 2**n` (capped at `cap_s`) times a random factor in [0.5, 1].
    `BUNDLER_RETRY_BASE_S` overrides `base_s` (the tests make it small)."""

    attempts: int = 6
    total_s: float = 600.0
    base_s: float = 2.0
    cap_s: float = 60.0

    @classmethod
    def from_env(cls) -> Retry:
        raw = os.environ.get("BUNDLER_RETRY_BASE_S")
        if raw is None:
            return cls()
        try:
            base = float(raw)
        except ValueError:
            raise RemoteError(f"BUNDLER_RETRY_BASE_S = {raw!r} must be seconds (a number > 0)") from None
        if not base > 0:
            raise RemoteError(f"BUNDLER_RETRY_BASE_S = {raw!r} must be seconds > 0")
        return cls(base_s=base)

    def backoff(self, attempt: int) -> float:
        """The jittered wait before try `attempt + 1` (attempt counts from 1)."""
        return float(min(self.cap_s, self.base_s * 2 ** (attempt - 1)) * random.uniform(0.5, 1.0))



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
    return bool(
        names
        & {"ConnectionError", "ConnectTimeout", "ProtocolError", "NewConnectionError", "ConnectionResetError",
           "ChunkedEncodingError", "ReadTimeout"}
    )


def retry_after(error: BaseException) -> float | None:
    """Seconds a 429's `Retry-After` header asks to wait (a number or an HTTP date), None without one."""
    response = getattr(error, "response", None)
    headers = getattr(response, "headers", None) or {}
    raw = headers.get("Retry-After") if hasattr(headers, "get") else None
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(str(raw))
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def transient(error: BaseException) -> str:
    """Why `error` is worth another try ('' when it is not): rate limited, a server error, no connection."""
    status = _http_status(error)
    if status == RATE_LIMITED:
        return "rate limited (HTTP 429)"
    if status is not None and 500 <= status < 600:
        return f"HTTP {status}"
    if status is None and _is_connection_error(error):
        return "connection failed"
    return ""


def describe_failure(what: str, error: BaseException) -> str:
    """One line for a failed call `what`: the HTTP status or the client's reason, and the fix."""
    status = _http_status(error)
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if status in (401, 403):
        return f"{what}: Kaggle refused the credentials or the access (HTTP {status}: {first}); check them and the id"
    if status == 404:
        return f"{what}: not found on Kaggle (HTTP 404: {first}); check the id in bundle.toml"
    if status == 400:
        return f"{what}: Kaggle refused the values (HTTP 400: {first}); check them in bundle.toml"
    if status is not None:
        return f"{what}: Kaggle answered HTTP {status} ({first}); try again later"
    if _is_connection_error(error):
        return f"{what}: cannot reach Kaggle ({first}); check the network connection"
    return f"{what}: {first}"


def state_name(value: Any) -> str:
    """A status by its name: `KernelWorkerStatus.COMPLETE`, `COMPLETE` and `complete` are `complete`."""
    name = getattr(value, "name", value)
    return str(name or "").rsplit(".", 1)[-1].strip().lower()


def _stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def connect(say: Callable[[str], None] | None = None) -> Kaggle:
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
    return Kaggle(api, say=say)


class Kaggle:
    """The calls bundler makes, through an authenticated `kaggle.api.KaggleApi`.

    `say` shows each retry's wait (one line); `retry` bounds the tries; `sleep` waits (tests swap it)."""

    def __init__(
        self,
        api: Any,
        *,
        say: Callable[[str], None] | None = None,
        retry: Retry | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._api = api
        self._say = say or _stderr_line
        self._retry = retry or Retry.from_env()
        self._sleep = sleep

    @property
    def username(self) -> str:
        return str(self._api.config_values.get("username") or "")

    def _call(self, what: str, fn: Callable[[], T], *, repeatable: bool = True) -> T:
        """`fn()` with the client's prints captured, tried again while Kaggle refuses it for a while.

        `repeatable=False`: a call that may have taken effect before failing (a submission) is
        tried again only after a 429. Past the tries or the total time: `KaggleHTTPError`."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                with _silenced():
                    return fn()
            except RemoteError:
                raise
            except SystemExit:
                raise RemoteError(NO_CREDENTIALS) from None
            except Exception as e:
                status = _http_status(e)
                reason = transient(e)
                if reason and (repeatable or status == RATE_LIMITED) and attempt < self._retry.attempts:
                    asked = retry_after(e) if status == RATE_LIMITED else None
                    delay = asked if asked is not None else self._retry.backoff(attempt)
                    spent = time.monotonic() - started
                    if spent + delay <= self._retry.total_s:
                        told = "as Retry-After asks" if asked is not None else "backing off"
                        self._say(
                            f"  {what}: {reason}; trying again in {delay:.1f} s, {told} "
                            f"(try {attempt + 1} of {self._retry.attempts})"
                        )
                        self._sleep(delay)
                        continue
                message = describe_failure(what, e)
                if reason and attempt > 1:
                    message += f" (gave up after {attempt} tries in {time.monotonic() - started:.0f} s)"
                raise KaggleHTTPError(message, status) from None

    def dataset_status(self, ref: str) -> str | None:
        """The newest version's processing state (`ready`, `failed`, ...), None when no such dataset."""
        try:
            return state_name(self._call(f"status of dataset {ref}", lambda: self._api.dataset_status(ref)))
        except KaggleHTTPError as e:
            if e.status == 404:
                return None
            raise

    def dataset_files(self, ref: str, version: int) -> dict[str, int]:
        """{file name: size in bytes} of version `version` of dataset `ref`, as Kaggle lists it."""
        files: dict[str, int] = {}
        token: str | None = None
        while True:
            response = self._call(
                f"files of dataset {ref}/{version}",
                functools.partial(self._api.dataset_list_files, f"{ref}/{version}", page_token=token, page_size=200),
            )
            error = str(getattr(response, "error_message", "") or "")
            if error:
                raise RemoteError(f"files of dataset {ref}/{version}: Kaggle answered {error!r}")
            for record in getattr(response, "dataset_files", None) or []:
                files[str(record.name)] = int(getattr(record, "total_bytes", 0) or 0)
            token = str(getattr(response, "next_page_token", "") or "") or None
            if token is None:
                return files

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

    def model_owner(self, model: str) -> str | None:
        """The owner of model `owner/slug` as Kaggle reports it, None when there is no such model."""
        try:
            response = self._call(f"model {model}", lambda: self._api.model_get(model))
        except KaggleHTTPError as e:
            if e.status == 404:
                return None
            raise
        ref = str(getattr(response, "ref", "") or model)
        return ref.split("/")[0]

    def create_model(self, folder: Path) -> None:
        what = f"creating the model from {folder}"
        self._dataset_result(what, self._call(what, lambda: self._api.model_create_new(str(folder))))

    def model_version(self, handle: str) -> int | None:
        """The newest version of variation `owner/model/framework/variation`, None when there is none."""
        try:
            response = self._call(f"model variation {handle}", lambda: self._api.model_instance_get(handle))
        except KaggleHTTPError as e:
            if e.status == 404:
                return None
            raise
        number = getattr(response, "version_number", None)
        return int(number) if number else None

    def create_model_variation(self, folder: Path) -> None:
        what = f"creating the model variation from {folder}"
        self._dataset_result(what, self._call(what, lambda: self._api.model_instance_create(str(folder), quiet=True)))

    def version_model_variation(self, handle: str, folder: Path, notes: str) -> None:
        what = f"uploading a new version of model variation {handle} from {folder}"
        response = self._call(
            what, lambda: self._api.model_instance_version_create(handle, str(folder), version_notes=notes, quiet=True)
        )
        self._dataset_result(what, response)

    def model_files(self, handle: str, version: int) -> dict[str, int]:
        """{file name: size in bytes} of version `version` of model variation `handle`."""
        files: dict[str, int] = {}
        token: str | None = None
        while True:
            response = self._call(
                f"files of model {handle}/{version}",
                functools.partial(
                    self._api.model_instance_version_files, f"{handle}/{version}", page_token=token, page_size=200
                ),
            )
            for record in getattr(response, "files", None) or []:
                files[str(record.name)] = int(getattr(record, "size", 0) or 0)
            token = str(getattr(response, "next_page_token", "") or "") or None
            if token is None:
                return files

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
            response = self._call(f"status of notebook {target}", lambda: self._api.kernels_status(target))
        except KaggleHTTPError as e:
            if e.status == 404:  # a version just pushed may not be listed yet
                return "not_found", ""
            raise
        return state_name(getattr(response, "status", "")), str(getattr(response, "failure_message", "") or "")

    def kernel_settings(self, ref: str) -> dict[str, Any]:
        """The settings Kaggle keeps for notebook `ref` (enable_internet, machine_shape, sources), read back."""
        owner, _, slug = ref.partition("/")

        def get() -> Any:
            types: Any = importlib.import_module("kagglesdk.kernels.types.kernels_api_service")
            request = types.ApiGetKernelRequest()
            request.user_name = owner
            request.kernel_slug = slug
            with self._api.build_kaggle_client() as client:
                return client.kernels.kernels_api_client.get_kernel(request)

        meta = getattr(self._call(f"reading back the settings of notebook {ref}", get), "metadata", None)
        return {
            "enable_internet": getattr(meta, "enable_internet", None),
            "machine_shape": str(getattr(meta, "machine_shape", "") or ""),
            "dataset_sources": [str(s) for s in getattr(meta, "dataset_data_sources", None) or []],
            "model_sources": [str(s) for s in getattr(meta, "model_data_sources", None) or []],
        }

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
            repeatable=False,  # a submission that went through before the error must not be made twice
        )
        ref = getattr(response, "ref", None)
        return int(ref) if ref else None

    def submission(self, ref: int) -> Submission:
        response = self._call(f"status of submission {ref}", lambda: self._api.get_submission(ref))
        return Submission(
            ref=ref,
            status=state_name(getattr(response, "status", "")) or "pending",
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
