"""A real GCS JSON API server on 127.0.0.1 for the tests: gcp-storage-emulator in a subprocess.

Every client library we use finds it through its own environment variable:
  gcsfs, google-cloud-storage, tensorboardX  STORAGE_EMULATOR_HOST
  tensorstore (orbax)                        TENSORSTORE_GCS_HTTP_URL, GOOGLE_AUTH_TOKEN_FOR_TESTING
  google-cloud-cpp (array_record's reader)   CLOUD_STORAGE_EMULATOR_ENDPOINT
and ``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false`` keeps gcsfs from asking the bucket's type over
gRPC, which the emulator cannot answer (60 s per bucket). gcsfs reads that one when it is
imported, so this module sets it at import time (a conftest ``pytest_plugins`` line imports it
before any test module).

What the emulator lacks (measured with gcp-storage-emulator 2026.7.19, the latest):
- ``objects.moveTo`` (501), so a plain gcsfs ``mv`` spends ~35 s in retries before it falls
  back to copy + delete; ``cxrjax.io.fileio.rename`` copies and deletes directly.
- the ``x-goog-generation`` header on a media download (real GCS sends it). tensorstore then
  records generation 0, and its next conditional read of the object (``ifGenerationNotMatch``,
  which orbax's OCDBT manifest reads make as soon as a save opens more than a few arrays)
  fails with "Malformed StorageGeneration". The server is therefore started through this
  file, which adds that header (and ``x-goog-metageneration``) to the emulator's download
  handler: a fix to the test server, not to any client library.
- the ``ifGenerationMatch`` precondition of uploads and deletes (it ignores it); the run lock
  relies on it, so this file applies it to those two handlers as GCS does.
Everything else we use works.

Fixtures: ``gcs_server`` (one server per session; its client variables are set for the rest of
the session) and ``gcs_bucket`` (a fresh empty bucket per test, as ``gs://NAME``).
"""

from __future__ import annotations

import contextlib
import http
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")

START_TIMEOUT_S = 30.0
PROJECT = "cxrjax-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts_connections(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class GcsEmulator:
    """One gcp-storage-emulator process (in-memory storage) on a free port of 127.0.0.1."""

    def __init__(self, log_path: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        self._log_path = log_path
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "start", "--host", "127.0.0.1",
             "--port", str(self.port), "--in-memory", "--quiet"],
            stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _accepts_connections(self.port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                with open(log_path) as f:
                    tail = f.read()[-2000:]
                raise RuntimeError(f"gcp-storage-emulator did not start on {self.url}:\n{tail}")
            time.sleep(0.05)

    @property
    def env(self) -> dict[str, str]:
        """The variables that point every client library at this server."""
        return {"STORAGE_EMULATOR_HOST": self.url,
                "TENSORSTORE_GCS_HTTP_URL": self.url,
                "GOOGLE_AUTH_TOKEN_FOR_TESTING": "dummy",
                "CLOUD_STORAGE_EMULATOR_ENDPOINT": self.url,
                "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
                "GOOGLE_CLOUD_PROJECT": PROJECT}

    def create_bucket(self, name: str | None = None) -> str:
        """Creates a bucket (a fresh random name by default); returns ``gs://NAME``."""
        from google.cloud import storage

        name = name or f"test-{uuid.uuid4().hex[:12]}"
        with _env(self.env):
            storage.Client(project=PROJECT).create_bucket(name, timeout=10)
        return f"gs://{name}"

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._log.close()


@contextlib.contextmanager
def _env(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory) -> Iterator[GcsEmulator]:
    """The session's emulator; its variables are in os.environ (so subprocesses inherit them)."""
    server = GcsEmulator(str(tmp_path_factory.mktemp("gcs_emulator") / "server.log"))
    try:
        with _env(server.env):
            yield server
    finally:
        server.stop()


@pytest.fixture
def gcs_bucket(gcs_server: GcsEmulator) -> str:
    """A fresh, empty bucket on the session's emulator, as ``gs://NAME``."""
    return gcs_server.create_bucket()


def _serve(argv: list[str]) -> int:
    """gcp-storage-emulator's own ``main``, its download handler sending the generation
    headers that real GCS sends (see the module's docstring)."""
    from gcp_storage_emulator import __main__ as emulator_main
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    def with_generation(handler):
        def handle(request, response, storage, *args, **kwargs):
            handler(request, response, storage, *args, **kwargs)
            try:
                obj = storage.get_file_obj(request.params["bucket_name"],
                                           request.params["object_id"])
            except Exception:  # noqa: BLE001 - a 404 was answered already
                return
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj["metageneration"])
        return handle

    def object_name(request):
        if "object_id" in request.params:
            return request.params["object_id"]
        if "name" in request.query:
            return request.query["name"][0]
        data = request.data
        return data["meta"].get("name") if isinstance(data, dict) and "meta" in data else None

    def with_preconditions(handler):
        """``ifGenerationMatch`` as GCS applies it (0: only if absent), else 412."""
        def handle(request, response, storage, *args, **kwargs):
            wanted = request.query.get("ifGenerationMatch")
            if wanted is not None:
                try:
                    current = str(storage.get_file_obj(request.params["bucket_name"],
                                                       object_name(request))["generation"])
                except Exception:  # noqa: BLE001 - no such object: generation 0
                    current = "0"
                if current != wanted[0]:
                    response.status = http.HTTPStatus.PRECONDITION_FAILED
                    response.json({"error": {"code": 412, "message": "Precondition Failed",
                                             "errors": [{"reason": "conditionNotMet",
                                                         "message": "Precondition Failed"}]}})
                    return
            handler(request, response, storage, *args, **kwargs)
        return handle

    # Media reads: the download endpoint, and objects.get with alt=media.
    for _, handlers in server.HANDLERS:
        for method, handler in handlers.items():
            if handler in (objects.download, objects.get):
                handlers[method] = with_generation(handler)
            elif handler in (objects.insert, objects.delete):
                handlers[method] = with_preconditions(handler)
    return emulator_main.main(argv)


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1:]))
