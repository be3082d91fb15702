"""gcp-storage-emulator, run with the parts of Cloud Storage's JSON API that TensorStore (under Orbax) relies on
and the emulator leaves out: generation preconditions (`ifGenerationMatch`, `ifGenerationNotMatch`) on uploads,
downloads and metadata reads, and the `x-goog-generation` header on downloads. Without them OCDBT's manifest
writes fail at random ("Malformed StorageGeneration"). It also serves each request on its own thread, as Cloud
Storage serves clients side by side: the emulator's one thread blocks on a client that stops reading a response
(gcsfs's read-ahead) and with it every other client. Storage operations stay one at a time (one lock).
Started by tests/gcs_emulator.py as `python tests/gcs_emulator_server.py ARGS...` with the emulator's arguments.
"""

from __future__ import annotations

import functools
import inspect
import sys
import threading
from http import HTTPStatus
from http.server import ThreadingHTTPServer

from gcp_storage_emulator import server as emulator_server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects
from gcp_storage_emulator.storage import Storage

_lock = threading.RLock()  # a precondition and the write it guards happen as one (get may call download)
_download, _insert, _get = objects.download, objects.insert, objects.get


def _generation(storage, bucket: str, name: str) -> str:
    """The live generation of an object, "0" when there is none (as Cloud Storage's preconditions count)."""
    try:
        return str(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        return "0"


def _refused(request, response, storage, name: str | None, read: bool) -> bool:
    """Answer 412 (or 304 for a read whose generation is unchanged) when a precondition does not hold."""
    if name is None:
        return False
    current = _generation(storage, request.params["bucket_name"], name)
    match = request.query.get("ifGenerationMatch")
    if match and match[0] != current:
        response.status = HTTPStatus.PRECONDITION_FAILED if current != "0" or not read else HTTPStatus.NOT_FOUND
        return True
    not_match = request.query.get("ifGenerationNotMatch")
    if not_match and not_match[0] == current:
        response.status = HTTPStatus.NOT_MODIFIED if read else HTTPStatus.PRECONDITION_FAILED
        return True
    return False


def _upload_name(request) -> str | None:
    if "name" in request.query:
        return request.query["name"][0]
    data = request.data
    return data.get("meta", {}).get("name") if isinstance(data, dict) else None


def insert(request, response, storage, *args, **kwargs):
    with _lock:
        if _refused(request, response, storage, _upload_name(request), read=False):
            return None
        return _insert(request, response, storage, *args, **kwargs)


def download(request, response, storage, *args, **kwargs):
    with _lock:
        name = request.params["object_id"]
        if _refused(request, response, storage, name, read=True):
            return
        generation = _generation(storage, request.params["bucket_name"], name)
        _download(request, response, storage, *args, **kwargs)
    if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
        response["x-goog-generation"] = generation
        response["x-goog-metageneration"] = "1"


def get(request, response, storage, *args, **kwargs):
    with _lock:
        if _refused(request, response, storage, request.params["object_id"], read=True):
            return
        _get(request, response, storage, *args, **kwargs)


def _one_at_a_time(method):
    @functools.wraps(method)
    def locked(*args, **kwargs):
        with _lock:
            return method(*args, **kwargs)

    return locked


def _serve_threaded(self) -> None:
    """`APIThread.run` with a thread per request."""
    handler = functools.partial(emulator_server.RequestHandler, self._storage)
    self._httpd = ThreadingHTTPServer((self._host, self._port), handler)
    self._httpd.daemon_threads = True
    self.is_running.set()
    self._httpd.serve_forever()


objects.insert, objects.download, objects.get = insert, download, get
for _name, _member in list(vars(Storage).items()):
    if inspect.isfunction(_member) and not _name.startswith("__"):
        setattr(Storage, _name, _one_at_a_time(_member))
emulator_server.APIThread.run = _serve_threaded

if __name__ == "__main__":
    from gcp_storage_emulator.__main__ import main  # imported after the patch: its URL table takes these handlers

    sys.exit(main())
