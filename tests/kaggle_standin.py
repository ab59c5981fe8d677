"""A stand-in for Kaggle's API, for tests: the endpoints the kaggle package calls, with scripted state.

The kaggle package sends every call as `POST http://localhost/api/v1/<service>/<method>` with a
JSON body when `KAGGLE_API_ENVIRONMENT=LOCALHOST`; uploads are PUTs to the URL that
`StartBlobUpload` returned, downloads GETs of the URLs `ListKernelSessionOutput` listed. This
server answers exactly those, on port 80, so it must run where port 80 is free to bind: in a
network namespace of its own (`unshare -n`, loopback up), which also proves nothing reaches Kaggle.

Run as `python -m tests.kaggle_standin SCENARIO.json WORKDIR COMMANDS.json` inside the
namespace: it brings loopback up, serves in a thread, runs each command of COMMANDS.json (a list
of {"argv": [...], "cwd": "..."}) one after the other, then writes WORKDIR/results.json (argv,
returncode, stdout, stderr of each) and WORKDIR/calls.jsonl (one line per API call: endpoint,
body, whether credentials came with it, and for uploads the file's name and size).

The scenario (JSON; every key optional):
- "dataset": {"exists": bool, "version": N, "initial_statuses": [..], "statuses": [..]}: each dataset
  before the test (and the states of a version still processing then), and the processing
  states each new version goes through, one per status poll, the last one sticking (lower-case
  names: "blobs_received", "ready", "failed", ...);
- "kernels": {slug: {"statuses": [..], "failure_message": "", "log": [[stream, text], ...],
  "outputs": {file name: text}, "invalid": {"dataset": [..], ...}, "error": "", "not_found_polls": N}}
  ("*" for any slug): per push, the session states one per status poll (last sticking) after N
  polls answered 404, the log and outputs listed, the sources SaveKernel reports as invalid;
- "submission": {"statuses": [..], "public_score": "0.9", "error": ""};
- "datasets": {slug: {...}}: the same for one dataset by its slug (a bundle in parts);
- "models": {"existing": ["owner/model", ...], "licences": [...], "lose_files": [...]}: Kaggle Models
  that exist before the test, the licence names a new variation may take (others: 400), and the
  files the first new model version's list lacks;
- "key": the only KAGGLE_KEY accepted (HTTP Basic); any other is answered 401;
- "token": the access token `IntrospectToken` reports active (for KAGGLE_API_TOKEN);
- "refuse": {method: [status, ...]}: the first calls of `method` answered with these HTTP statuses
  instead (429 with `Retry-After: <"retry_after", default 1>`, 5xx as a server error);
- "dataset": {"lose_files": [names]}: a partial upload: the first new version's file list lacks them;
  a new version while the newest is still processing is refused with 403, as Kaggle does;
- "kernels": {slug: {"internet_after_push": true}}: `GetKernel` reports internet on whatever was
  pushed; a retired machine shape (NvidiaTeslaP100) is kept as NvidiaTeslaT4, as Kaggle does.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PORT = 80
HOST = "localhost"
PREFIX = "/api/v1/"


class Dataset:
    """One dataset's state: whether it exists, its newest version, its processing states, its versions' files."""

    def __init__(self, script: dict[str, Any]) -> None:
        self.script = script
        self.exists = bool(script.get("exists", False))
        self.version = int(script.get("version", 0))
        self.statuses: list[str] = list(script.get("initial_statuses", ["ready"]))
        self.version_files: dict[int, dict[str, int]] = {}
        self.lose_files: set[str] = set(script.get("lose_files", []))


class StandIn:
    """The scripted Kaggle state and the log of calls made to it."""

    def __init__(self, scenario: dict[str, Any], calls: Path) -> None:
        self.scenario = scenario
        self.datasets: dict[str, Dataset] = {}
        # Kaggle Models: "owner/model" -> created; "owner/model/variation" -> {version: {file: size}}
        self.lose_model_files: set[str] = set(scenario.get("models", {}).get("lose_files", []))
        self.models: set[str] = set(scenario.get("models", {}).get("existing", []))
        self.variations: dict[str, dict[int, dict[str, int]]] = {}
        self.kernel_versions: dict[str, int] = {}
        self.kernel_statuses: dict[str, list[str]] = {}
        self.not_found: dict[str, int] = {}
        self.submissions: dict[int, list[str]] = {}
        self.uploads: dict[str, dict[str, Any]] = {}
        self.saved: dict[str, dict[str, Any]] = {}
        self.refusals: dict[str, list[int]] = {k: list(v) for k, v in scenario.get("refuse", {}).items()}
        self.calls = calls
        self.lock = threading.Lock()

    def record(self, entry: dict[str, Any]) -> None:
        with self.lock, self.calls.open("a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    def kernel_script(self, slug: str) -> dict[str, Any]:
        kernels = self.scenario.get("kernels", {})
        script: dict[str, Any] = kernels.get(slug, kernels.get("*", {}))
        return script

    @staticmethod
    def _pop(queue: list[str]) -> str:
        return queue.pop(0) if len(queue) > 1 else queue[0]

    def refusal(self, method: str) -> tuple[int, dict[str, str]] | None:
        """(HTTP status, headers) when the scenario refuses this call of `method`, else None."""
        queue = self.refusals.get(method)
        if not queue:
            return None
        status = queue.pop(0)
        headers = {"Retry-After": str(self.scenario.get("retry_after", 1))} if status == 429 else {}
        return status, headers

    def dataset(self, body: dict[str, Any]) -> Dataset:
        """The dataset a call names (by its slug): "datasets"[slug] of the scenario, else "dataset"."""
        inner = body.get("body") if isinstance(body.get("body"), dict) else {}
        slug = str(body.get("datasetSlug") or body.get("slug") or inner.get("slug") or "")
        if slug not in self.datasets:
            script = self.scenario.get("datasets", {}).get(slug, self.scenario.get("dataset", {}))
            self.datasets[slug] = Dataset(script)
        return self.datasets[slug]

    def answer(self, method: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """(HTTP status, JSON answer) for one API call."""
        if method == "IntrospectToken":  # an access token (KAGGLE_API_TOKEN) is checked at authentication
            token = self.scenario.get("token", "")
            active = bool(token) and body.get("token") == token
            return 200, {"active": active, "username": "your-kaggle-name" if active else ""}
        if method == "GetDatasetStatus":
            ds = self.dataset(body)
            if not ds.exists:
                return 404, {"code": 404, "message": "Dataset not found"}
            return 200, {"status": self._pop(ds.statuses).upper()}
        if method == "GetDataset":
            ds = self.dataset(body)
            if not ds.exists:
                return 404, {"code": 404, "message": "Dataset not found"}
            return 200, {"currentVersionNumber": ds.version}
        if method == "StartBlobUpload":
            token = f"blob-{len(self.uploads) + 1}"
            self.uploads[token] = {"name": body.get("name"), "size": None}
            return 200, {"token": token, "createUrl": f"http://{HOST}/upload/{token}"}
        if method in ("CreateDataset", "CreateDatasetVersion"):
            files = body.get("files") or (body.get("body") or {}).get("files") or []
            missing = [f.get("token") for f in files if self.uploads.get(f.get("token"), {}).get("size") is None]
            if missing:
                return 400, {"code": 400, "message": f"blobs never uploaded: {missing}"}
            ds = self.dataset(body)
            if method == "CreateDataset" and ds.exists:
                return 200, {"status": "error", "error": "slug already in use"}
            if method == "CreateDatasetVersion" and ds.statuses[0] not in ("ready", "failed"):
                return 403, {"code": 403, "message": "The previous version of this dataset is still processing"}
            ds.exists = True
            ds.version += 1
            lost, ds.lose_files = ds.lose_files, set()  # only the first version is partial
            ds.version_files[ds.version] = {
                self.uploads[f["token"]]["name"]: self.uploads[f["token"]]["size"]
                for f in files
                if self.uploads[f["token"]]["name"] not in lost
            }
            ds.statuses = list(ds.script.get("statuses", ["ready"]))
            return 200, {"status": "ok", "ref": "/datasets/x", "url": "http://localhost/datasets/x"}
        if method in ("GetModel", "CreateModel"):
            model = f"{body.get('ownerSlug')}/{body.get('modelSlug') or body.get('slug')}"
            if method == "CreateModel":
                self.models.add(model)
                return 200, {"ref": model, "url": f"http://{HOST}/models/{model}"}
            if model not in self.models:
                return 404, {"code": 404, "message": "Model not found"}
            return 200, {"ref": model, "title": model}
        if method in ("GetModelInstance", "CreateModelInstance", "CreateModelInstanceVersion"):
            inner = body.get("body") if isinstance(body.get("body"), dict) else {}
            variation = body.get("instanceSlug") or inner.get("instanceSlug")
            key = f"{body.get('ownerSlug')}/{body.get('modelSlug')}/{variation}"
            versions = self.variations.get(key)
            if method == "GetModelInstance":
                if versions is None:
                    return 404, {"code": 404, "message": "Model instance not found"}
                return 200, {"slug": key.split("/")[-1], "versionNumber": max(versions)}
            if f"{body.get('ownerSlug')}/{body.get('modelSlug')}" not in self.models:
                return 404, {"code": 404, "message": "Model not found"}
            licences = self.scenario.get("models", {}).get("licences", ["Apache 2.0", "MIT", "CC0: Public Domain"])
            if method == "CreateModelInstance" and inner.get("licenseName") not in licences:
                return 400, {"code": 400, "message": f"License {inner.get('licenseName')!r} not found"}
            files = inner.get("files") or []
            lost, self.lose_model_files = self.lose_model_files, set()
            uploaded = {
                self.uploads[f["token"]]["name"]: self.uploads[f["token"]]["size"]
                for f in files
                if self.uploads.get(f.get("token"), {}).get("name") not in lost
            }
            versions = self.variations.setdefault(key, {})
            versions[max(versions, default=0) + 1] = uploaded
            return 200, {"ref": key, "url": f"http://{HOST}/models/{key}"}
        if method == "ListModelInstanceVersionFiles":
            key = f"{body.get('ownerSlug')}/{body.get('modelSlug')}/{body.get('instanceSlug')}"
            files = self.variations.get(key, {}).get(int(body.get("versionNumber") or 0))
            if files is None:
                return 404, {"code": 404, "message": "Model instance version not found"}
            return 200, {"files": [{"name": n, "size": size} for n, size in sorted(files.items())]}
        if method == "ListDatasetFiles":
            ds = self.dataset(body)
            number = int(body.get("datasetVersionNumber") or ds.version)
            if number not in ds.version_files:
                return 404, {"code": 404, "message": "Dataset version not found"}
            listed = [{"name": n, "totalBytes": size} for n, size in sorted(ds.version_files[number].items())]
            start = int(body.get("pageToken") or 0)
            size = int(body.get("pageSize") or 20)
            page: dict[str, Any] = {"datasetFiles": listed[start : start + size]}
            if start + size < len(listed):
                page["nextPageToken"] = str(start + size)
            return 200, page
        if method == "GetKernel":
            slug = str(body.get("kernelSlug"))
            saved = self.saved.get(slug)
            if saved is None:
                return 404, {"code": 404, "message": "Kernel not found"}
            internet = bool(saved.get("enableInternet")) or bool(self.kernel_script(slug).get("internet_after_push"))
            shape = str(saved.get("machineShape") or "")
            return 200, {
                "metadata": {
                    "ref": f"{body.get('userName')}/{slug}",
                    "title": saved.get("newTitle", ""),
                    "enableInternet": internet,
                    "machineShape": "NvidiaTeslaT4" if shape == "NvidiaTeslaP100" else shape,
                    "datasetDataSources": saved.get("datasetDataSources", []),
                    "modelDataSources": saved.get("modelDataSources", []),
                },
                "blob": {"source": saved.get("text", ""), "language": "python", "kernelType": "notebook"},
            }
        if method == "SaveKernel":
            slug = str(body.get("slug", "")).split("/")[-1]
            script = self.kernel_script(slug)
            self.saved[slug] = body
            self.kernel_versions[slug] = self.kernel_versions.get(slug, 0) + 1
            self.kernel_statuses[slug] = list(script.get("statuses", ["complete"]))
            self.not_found[slug] = int(script.get("not_found_polls", 0))
            answer: dict[str, Any] = {
                "ref": f"/code/{body.get('slug')}",
                "url": f"http://{HOST}/code/{body.get('slug')}",
                "versionNumber": self.kernel_versions[slug],
            }
            for kind, sources in script.get("invalid", {}).items():
                answer[f"invalid{kind.capitalize()}Sources"] = sources
            if script.get("error"):
                answer["error"] = script["error"]
            return 200, answer
        if method == "GetKernelSessionStatus":
            slug = str(body.get("kernelSlug"))
            if slug not in self.kernel_statuses:
                return 404, {"code": 404, "message": "Kernel not found"}
            if self.not_found.get(slug, 0) > 0:  # a version just pushed, not listed yet
                self.not_found[slug] -= 1
                return 404, {"code": 404, "message": "Kernel session not found"}
            status = self._pop(self.kernel_statuses[slug])
            message = self.kernel_script(slug).get("failure_message", "") if status == "error" else ""
            return 200, {"status": status.upper(), "failureMessage": message}
        if method == "ListKernelSessionOutput":
            slug = str(body.get("kernelSlug"))
            script = self.kernel_script(slug)
            version = str(body.get("versionLabel", "")).lstrip("v") or str(self.kernel_versions.get(slug, 0))
            files = [
                {"fileName": name, "url": f"http://{HOST}/files/{slug}/{version}/{name}"}
                for name in script.get("outputs", {})
            ]
            log = [
                {"stream_name": stream, "time": i * 0.5, "data": text}
                for i, (stream, text) in enumerate(script.get("log", []))
            ]
            return 200, {"files": files, "log": json.dumps(log)}
        if method == "CreateCodeSubmission":
            ref = 1000 + len(self.submissions) + 1
            self.submissions[ref] = list(self.scenario.get("submission", {}).get("statuses", ["complete"]))
            return 200, {"message": "Successfully submitted", "ref": ref}
        if method == "GetSubmission":
            ref = int(body.get("ref", 0))
            if ref not in self.submissions:
                return 404, {"code": 404, "message": "Submission not found"}
            script = self.scenario.get("submission", {})
            status = self._pop(self.submissions[ref])
            answer = {"ref": ref, "status": status.upper()}
            if status == "complete":
                answer["publicScore"] = script.get("public_score", "")
            if status == "error":
                answer["errorDescription"] = script.get("error", "")
            return 200, answer
        return 501, {"code": 501, "message": f"the stand-in does not serve {method}"}

    def output_file(self, slug: str, name: str) -> bytes | None:
        text = self.kernel_script(slug).get("outputs", {}).get(name)
        return None if text is None else str(text).encode("utf-8")


def _basic_password_is(header: str | None, key: str) -> bool:
    """Whether an `Authorization: Basic ...` header carries `key` as its password."""
    if not header or not header.startswith("Basic "):
        return False
    try:
        return base64.b64decode(header[6:]).decode().partition(":")[2] == key
    except ValueError:
        return False


def _handler(standin: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def _send(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Last-Modified", time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                out = b""
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return out
                    out += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def do_POST(self) -> None:
            raw = self._body()
            if not self.path.startswith(PREFIX):
                self._send(404, b"{}", "application/json")
                return
            service, _, method = self.path[len(PREFIX) :].partition("/")
            body = json.loads(raw or b"{}")
            key = standin.scenario.get("key")
            if key and method != "IntrospectToken" and not _basic_password_is(self.headers.get("Authorization"), key):
                standin.record({"endpoint": f"{service}/{method}", "body": body, "refused": 401})
                self._send(401, json.dumps({"code": 401, "message": "Unauthenticated"}).encode(), "application/json")
                return
            refused = standin.refusal(method)
            standin.record(
                {
                    "endpoint": f"{service}/{method}",
                    "body": body,
                    "auth": bool(self.headers.get("Authorization")),
                    **({"refused": refused[0]} if refused else {}),
                }
            )
            if refused:
                status, headers = refused
                answer = {"code": status, "message": "Too many requests" if status == 429 else "Server error"}
                self._send(status, json.dumps(answer).encode(), "application/json", headers)
                return
            status, answer = standin.answer(method, body)
            self._send(status, json.dumps(answer).encode(), "application/json")

        def do_PUT(self) -> None:
            data = self._body()
            token = self.path.rsplit("/", 1)[-1]
            upload = standin.uploads.get(token)
            if upload is None:
                self._send(404, b"", "text/plain")
                return
            if self.headers.get("Content-Range", "").startswith("bytes */"):  # the client resuming: a status query
                standin.record({"endpoint": "PUT resume", "name": upload["name"]})
                done = upload["size"] is not None
                self._send(200 if done else 308, b"", "text/plain")
                return
            upload["size"] = len(data)
            standin.record({"endpoint": "PUT upload", "name": upload["name"], "size": len(data)})
            self._send(200, b"", "text/plain")

        def do_GET(self) -> None:
            parts = self.path.strip("/").split("/")
            data = standin.output_file(parts[1], parts[3]) if len(parts) == 4 and parts[0] == "files" else None
            standin.record({"endpoint": "GET file", "path": self.path})
            if data is None:
                self._send(404, b"", "text/plain")
            else:
                self._send(200, data, "application/octet-stream")

    return Handler


class _DualStackServer(ThreadingHTTPServer):
    """IPv6 and IPv4 on one socket: `localhost` may resolve to ::1 first, and a refusal there costs time."""

    address_family = socket.AF_INET6
    daemon_threads = True


def serve(scenario: dict[str, Any], calls: Path) -> ThreadingHTTPServer:
    """Start the stand-in on port 80 in a daemon thread."""
    server = _DualStackServer(("::", PORT), _handler(StandIn(scenario, calls)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def main(argv: list[str]) -> int:
    scenario_path, workdir, commands_path = (Path(a) for a in argv)
    ip = shutil.which("ip") or "/usr/sbin/ip"  # /usr/sbin is not on every PATH
    subprocess.run([ip, "link", "set", "lo", "up"], check=True)
    scenario = json.loads(scenario_path.read_text())
    commands = json.loads(commands_path.read_text())
    server = serve(scenario, workdir / "calls.jsonl")
    results = []
    try:
        for command in commands:
            done = subprocess.run(
                command["argv"], cwd=command.get("cwd"), capture_output=True, text=True, timeout=120, check=False
            )
            results.append(
                {"argv": command["argv"], "returncode": done.returncode, "stdout": done.stdout, "stderr": done.stderr}
            )
    finally:
        server.shutdown()
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
