"""A fake Google Cloud Storage JSON API on 127.0.0.1, for end-to-end tests of gs:// workdirs.

It implements the subset of https://cloud.google.com/storage/docs/json_api/v1 that TensorStore's
`gcs` kvstore (orbax array writes), gcsfs (etils.epath) and google-cloud-storage (orbax's bucket
checks) use: bucket get/insert; object insert (media, multipart, resumable), get (metadata or
alt=media, with Range), list (prefix, delimiter, startOffset, endOffset, maxResults, pageToken),
delete, rewriteTo/copyTo/moveTo; generations with ifGenerationMatch / ifGenerationNotMatch.
Objects live in memory. It never listens on anything but 127.0.0.1.

    with FakeGCS(buckets=["testbucket"]) as gcs:
        env = gcs.client_env()   # STORAGE_EMULATOR_HOST, TENSORSTORE_GCS_HTTP_URL, ...
        ...
        gcs.objects("testbucket")  # {name: bytes}
"""

from __future__ import annotations

import datetime
import http.server
import json
import sys
import threading
import uuid
from urllib.parse import parse_qs, quote, unquote, urlsplit


class _Object:
    __slots__ = ("data", "generation", "content_type", "metadata", "created")

    def __init__(self, data: bytes, generation: int, content_type: str, metadata: dict | None):
        self.data, self.generation = data, generation
        self.content_type = content_type or "application/octet-stream"
        self.metadata = metadata
        self.created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class _Error(Exception):
    def __init__(self, code: int, message: str = ""):
        super().__init__(message)
        self.code, self.message = code, message


class FakeGCS:
    """In-memory GCS: `buckets` {bucket: {name: _Object}}, served by a threaded HTTP server."""

    def __init__(self, buckets=("testbucket",)):
        self.buckets: dict[str, dict[str, _Object]] = {b: {} for b in buckets}
        self.uploads: dict[str, dict] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status), for debugging
        self.lock = threading.RLock()
        self._generation = 1_000_000
        self._server = None
        self._thread = None

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self) -> "FakeGCS":
        fake = self

        class Handler(_Handler):
            gcs = fake

        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-gcs", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = None

    def __enter__(self) -> "FakeGCS":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def client_env(self) -> dict[str, str]:
        """Environment that points every GCS client at this server, with no credentials and no
        metadata-server probing (anything that still tries reaches a closed local port)."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,           # gcsfs, google-cloud-storage
            "TENSORSTORE_GCS_HTTP_URL": self.url,        # TensorStore's gcs kvstore (orbax arrays)
            "TENSORSTORE_GCS_HTTP_VERSION": "1",         # plain HTTP/1.1
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-token",  # TensorStore: skip credential lookup
            "FSSPEC_GS_TOKEN": "anon",                   # gcsfs: anonymous
            "FSSPEC_GCS_TOKEN": "anon",
            # gcsfs's default ExtendedGcsFileSystem asks a gRPC storage-control API for the bucket
            # type (60 s timeout per bucket against a JSON-only server): use the plain one.
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "GOOGLE_CLOUD_PROJECT": "fake-project",
            "NO_GCE_CHECK": "True",
            "GCE_METADATA_HOST": "127.0.0.1:9",
            "GCE_METADATA_IP": "127.0.0.1:9",
            "GCE_METADATA_ROOT": "127.0.0.1:9",
            "GOOGLE_APPLICATION_CREDENTIALS": "",
        }

    # ---- direct access for tests -----------------------------------------------------------
    def objects(self, bucket: str, prefix: str = "") -> dict[str, bytes]:
        with self.lock:
            return {k: o.data for k, o in sorted(self.buckets[bucket].items()) if k.startswith(prefix)}

    # ---- storage operations ----------------------------------------------------------------
    def _bucket(self, name: str) -> dict[str, _Object]:
        if name not in self.buckets:
            raise _Error(404, f"bucket {name} not found")
        return self.buckets[name]

    def _next_generation(self) -> int:
        self._generation += 1
        return self._generation

    @staticmethod
    def _check(obj: _Object | None, params: dict, *, for_read: bool = False) -> None:
        match = params.get("ifGenerationMatch")
        if match is not None:
            match = int(match)
            if match == 0 and obj is not None or match != 0 and (obj is None or obj.generation != match):
                raise _Error(412, "Precondition Failed")
        not_match = params.get("ifGenerationNotMatch")
        if not_match is not None and obj is not None and obj.generation == int(not_match):
            raise _Error(304 if for_read else 412, "Not Modified")

    def put(self, bucket: str, name: str, data: bytes, params: dict, content_type: str = "",
            metadata: dict | None = None) -> _Object:
        if not name:
            raise _Error(400, "object name is required")
        with self.lock:
            objects = self._bucket(bucket)
            self._check(objects.get(name), params)
            obj = _Object(bytes(data), self._next_generation(), content_type, metadata)
            objects[name] = obj
            return obj

    def resource(self, bucket: str, name: str, obj: _Object) -> dict:
        out = {
            "kind": "storage#object",
            "id": f"{bucket}/{name}/{obj.generation}",
            "selfLink": f"{self.url}/storage/v1/b/{bucket}/o/{quote(name, safe='')}",
            "mediaLink": f"{self.url}/download/storage/v1/b/{bucket}/o/{quote(name, safe='')}"
                         f"?generation={obj.generation}&alt=media",
            "name": name,
            "bucket": bucket,
            "generation": str(obj.generation),
            "metageneration": "1",
            "contentType": obj.content_type,
            "storageClass": "STANDARD",
            "size": str(len(obj.data)),
            "timeCreated": obj.created,
            "updated": obj.created,
            "etag": f"g{obj.generation}",
        }
        if obj.metadata:
            out["metadata"] = obj.metadata
        return out

    def list(self, bucket: str, params: dict) -> dict:
        prefix = params.get("prefix") or ""
        delimiter = params.get("delimiter") or ""
        start, end = params.get("startOffset") or "", params.get("endOffset")
        token = params.get("pageToken")
        limit = int(params.get("maxResults") or 1000)
        with self.lock:
            objects = self._bucket(bucket)
            names = sorted(objects)
            items, prefixes, last = [], [], None
            for name in names:
                if not name.startswith(prefix) or name < start or (end and name >= end):
                    continue
                if token is not None and (name <= token or delimiter and token.endswith(delimiter)
                                          and name.startswith(token)):
                    continue  # returned on an earlier page (an object, or a prefix holding it)
                rest = name[len(prefix):]
                if delimiter and delimiter in rest:
                    common = prefix + rest[: rest.index(delimiter) + len(delimiter)]
                    if prefixes and prefixes[-1] == common:
                        continue
                    entry = ("prefix", common)
                else:
                    entry = ("item", name)
                if len(items) + len(prefixes) >= limit:
                    return self._page(bucket, objects, items, prefixes, next_token=last)
                if entry[0] == "prefix":
                    prefixes.append(entry[1])
                else:
                    items.append(entry[1])
                last = entry[1]
            return self._page(bucket, objects, items, prefixes, next_token=None)

    def _page(self, bucket, objects, items, prefixes, next_token) -> dict:
        out = {"kind": "storage#objects", "items": [self.resource(bucket, n, objects[n]) for n in items]}
        if prefixes:
            out["prefixes"] = prefixes
        if next_token is not None:
            out["nextPageToken"] = next_token
        return out


class _Server(http.server.ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    gcs: FakeGCS
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # ---- plumbing ------------------------------------------------------------------------
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes | dict | None = None, headers: dict | None = None) -> None:
        if isinstance(body, dict):
            body = json.dumps(body).encode()
            headers = {"Content-Type": "application/json; charset=UTF-8", **(headers or {})}
        body = body or b""
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        with self.gcs.lock:
            self.gcs.requests.append((self.command, self.path, status))

    def _dispatch(self) -> None:
        body = self._body()
        split = urlsplit(self.path)
        params = {k: v[-1] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        parts = split.path.split("/")[1:]  # raw: object names are percent-encoded, '/' as %2F
        try:
            self._route(parts, params, body)
        except (BrokenPipeError, ConnectionResetError):  # the client hung up (aiohttp cancels)
            self.close_connection = True
        except _Error as e:
            if e.code == 304:
                self._send(304)
            else:
                self._send(e.code, {"error": {"code": e.code, "message": e.message or "error",
                                              "errors": [{"message": e.message or "error"}]}})
        except Exception as e:  # a bug in the fake: make it visible to the client
            try:
                self._send(500, {"error": {"code": 500, "message": f"fake gcs: {type(e).__name__}: {e}"}})
            except OSError:
                self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _dispatch

    # ---- routes --------------------------------------------------------------------------
    def _route(self, parts: list[str], params: dict, body: bytes) -> None:
        method, gcs = self.command, self.gcs
        if parts[:3] == ["upload", "storage", "v1"] and len(parts) == 6 and parts[3] == "b" and parts[5] == "o":
            return self._upload(unquote(parts[4]), params, body)
        download = parts[:3] == ["download", "storage", "v1"]
        if download:
            parts = parts[1:]
        if parts[:2] != ["storage", "v1"] or len(parts) < 3 or parts[2] != "b":
            raise _Error(404, f"unknown path {self.path}")
        if len(parts) == 3:  # /storage/v1/b: bucket insert or list
            if method == "POST":
                name = json.loads(body or b"{}").get("name", "")
                with gcs.lock:
                    if name in gcs.buckets:
                        raise _Error(409, "bucket exists")
                    gcs.buckets[name] = {}
                return self._send(200, _bucket_resource(name))
            return self._send(200, {"kind": "storage#buckets", "items": [_bucket_resource(b) for b in gcs.buckets]})
        bucket = unquote(parts[3])
        if len(parts) == 4:
            if method in ("GET", "HEAD"):
                gcs._bucket(bucket)
                return self._send(200, _bucket_resource(bucket))
            raise _Error(405, f"{method} on a bucket is not supported")
        if parts[4] != "o":
            raise _Error(404, f"unknown path {self.path}")
        if len(parts) == 5:
            if method == "GET":
                return self._send(200, gcs.list(bucket, params))
            raise _Error(400, "uploads must go to /upload/storage/v1")
        name = unquote(parts[5])
        if len(parts) > 6:
            return self._copy(bucket, name, parts[6:], params)
        if method in ("GET", "HEAD"):
            return self._get(bucket, name, params, media=download or params.get("alt") == "media")
        if method == "DELETE":
            with gcs.lock:
                objects = gcs._bucket(bucket)
                obj = objects.get(name)
                if obj is None:
                    raise _Error(404, f"{name} not found")
                gcs._check(obj, params)
                del objects[name]
            return self._send(204)
        if method == "PATCH":
            with gcs.lock:
                obj = gcs._bucket(bucket).get(name)
                if obj is None:
                    raise _Error(404, f"{name} not found")
                patch = json.loads(body or b"{}")
                if "metadata" in patch:
                    obj.metadata = {**(obj.metadata or {}), **(patch["metadata"] or {})}
                if "contentType" in patch:
                    obj.content_type = patch["contentType"]
                return self._send(200, gcs.resource(bucket, name, obj))
        raise _Error(405, f"{method} on an object is not supported")

    def _get(self, bucket: str, name: str, params: dict, media: bool) -> None:
        gcs = self.gcs
        with gcs.lock:
            obj = gcs._bucket(bucket).get(name)
            if obj is not None and params.get("generation") and int(params["generation"]) != obj.generation:
                obj = None
            gcs._check(obj, params, for_read=True)
            if obj is None:
                if params.get("ifGenerationMatch") == "0":
                    return self._send(204)
                raise _Error(404, f"No such object: {bucket}/{name}")
            if not media:
                return self._send(200, gcs.resource(bucket, name, obj))
            data, generation, content_type = obj.data, obj.generation, obj.content_type
        headers = {"Content-Type": content_type, "x-goog-generation": str(generation),
                   "x-goog-metageneration": "1", "x-goog-stored-content-length": str(len(data)),
                   "x-goog-storage-class": "STANDARD", "ETag": f"g{generation}"}
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes="):
            first, _, last = rng[len("bytes="):].split(",")[0].partition("-")
            size = len(data)
            if first == "":  # suffix range: the last N bytes
                start, stop = max(size - int(last), 0), size
            else:
                start, stop = int(first), (min(int(last) + 1, size) if last else size)
            if start >= size and size > 0 or start > stop:
                return self._send(416, {"error": {"code": 416, "message": "Requested range not satisfiable"}},
                                  {"Content-Range": f"bytes */{size}"})
            headers["Content-Range"] = f"bytes {start}-{max(stop - 1, start)}/{size}"
            return self._send(206, data[start:stop], headers)
        self._send(200, data, headers)

    def _upload(self, bucket: str, params: dict, body: bytes) -> None:
        gcs = self.gcs
        kind = params.get("uploadType", "media")
        content_type = self.headers.get("Content-Type", "")
        if "upload_id" in params:
            return self._resumable_chunk(params["upload_id"], body)
        if kind == "media":
            obj = gcs.put(bucket, params.get("name", ""), body, params, content_type)
            return self._send(200, gcs.resource(bucket, params["name"], obj))
        if kind == "multipart":
            meta, data, data_type = _parse_multipart(content_type, body)
            name = meta.get("name") or params.get("name", "")
            obj = gcs.put(bucket, name, data, params, meta.get("contentType") or data_type, meta.get("metadata"))
            return self._send(200, gcs.resource(bucket, name, obj))
        if kind == "resumable":
            meta = json.loads(body) if body.strip() else {}
            name = meta.get("name") or params.get("name", "")
            upload_id = uuid.uuid4().hex
            with gcs.lock:
                gcs._bucket(bucket)
                gcs._check(gcs.buckets[bucket].get(name), params)
                gcs.uploads[upload_id] = {
                    "bucket": bucket, "name": name, "data": bytearray(), "params": params,
                    "content_type": self.headers.get("X-Upload-Content-Type") or meta.get("contentType", ""),
                    "metadata": meta.get("metadata"),
                }
            location = (f"{gcs.url}/upload/storage/v1/b/{quote(bucket, safe='')}/o"
                        f"?uploadType=resumable&upload_id={upload_id}")
            return self._send(200, b"", {"Location": location})
        raise _Error(400, f"uploadType={kind} is not supported")

    def _resumable_chunk(self, upload_id: str, body: bytes) -> None:
        gcs = self.gcs
        with gcs.lock:
            upload = gcs.uploads.get(upload_id)
            if upload is None:
                raise _Error(404, "no such upload")
            if self.command == "DELETE":
                del gcs.uploads[upload_id]
                return self._send(499)
            content_range = self.headers.get("Content-Range", "")
            total = None
            if content_range.startswith("bytes "):
                span, _, total_s = content_range[len("bytes "):].partition("/")
                total = None if total_s == "*" else int(total_s)
                if span != "*":
                    first = int(span.split("-")[0])
                    del upload["data"][first:]
                    upload["data"] += body
            else:  # a single request with the whole object
                upload["data"] += body
                total = len(upload["data"])
            received = len(upload["data"])
            if total is None or received < total:
                headers = {"Range": f"bytes=0-{received - 1}"} if received else {}
                return self._send(308, b"", headers)
            del gcs.uploads[upload_id]
        obj = gcs.put(upload["bucket"], upload["name"], bytes(upload["data"]), upload["params"],
                      upload["content_type"], upload["metadata"])
        self._send(200, gcs.resource(upload["bucket"], upload["name"], obj))

    def _copy(self, bucket: str, name: str, rest: list[str], params: dict) -> None:
        gcs = self.gcs
        op = rest[0]
        if op in ("rewriteTo", "copyTo") and len(rest) == 5 and rest[1] == "b" and rest[3] == "o":
            dst_bucket, dst_name = unquote(rest[2]), unquote(rest[4])
        elif op == "moveTo" and len(rest) == 3 and rest[1] == "o":
            dst_bucket, dst_name = bucket, unquote(rest[2])
        else:
            raise _Error(404, f"unsupported object operation {'/'.join(rest)}")
        with gcs.lock:
            src = gcs._bucket(bucket).get(name)
            if src is None:
                raise _Error(404, f"No such object: {bucket}/{name}")
            dst_params = {k: v for k, v in params.items() if k in ("ifGenerationMatch", "ifGenerationNotMatch")}
            obj = gcs.put(dst_bucket, dst_name, src.data, dst_params, src.content_type, src.metadata)
            if op == "moveTo":
                del gcs.buckets[bucket][name]
            resource = gcs.resource(dst_bucket, dst_name, obj)
        if op == "rewriteTo":
            size = str(len(obj.data))
            return self._send(200, {"kind": "storage#rewriteResponse", "totalBytesRewritten": size,
                                    "objectSize": size, "done": True, "resource": resource})
        self._send(200, resource)


def _bucket_resource(name: str) -> dict:
    return {"kind": "storage#bucket", "id": name, "name": name, "location": "US", "storageClass": "STANDARD",
            "metageneration": "1", "timeCreated": "2026-01-01T00:00:00.000Z", "updated": "2026-01-01T00:00:00.000Z",
            "projectNumber": "0"}


def _parse_multipart(content_type: str, body: bytes) -> tuple[dict, bytes, str]:
    """(metadata, data, data content type) of a multipart/related upload body (CRLF or LF)."""
    boundary = None
    for piece in content_type.split(";"):
        key, _, value = piece.strip().partition("=")
        if key.lower() == "boundary":
            boundary = value.strip().strip('"')
    if not boundary:
        raise _Error(400, "multipart upload without a boundary")
    delim = b"--" + boundary.encode()
    first = body.index(delim) + len(delim)
    second = body.index(delim, first)
    meta_part = body[first:second]
    closing = body.rindex(delim + b"--")
    data_part = body[second + len(delim):closing]
    meta_headers, meta_body = _split_part(meta_part)
    data_headers, data = _split_part(data_part)
    data_type = ""
    for line in data_headers.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-type":
            data_type = value.strip()
    return json.loads(meta_body.strip() or b"{}"), data, data_type


def _split_part(part: bytes) -> tuple[str, bytes]:
    """A multipart part (after its delimiter line, up to the next delimiter) -> (headers, body)."""
    if part.startswith(b"\r\n"):
        part = part[2:]
    elif part.startswith(b"\n"):
        part = part[1:]
    found = [(part.find(sep), sep) for sep in (b"\r\n\r\n", b"\n\n") if part.find(sep) >= 0]
    if found:
        idx, sep = min(found)
        headers, payload = part[:idx], part[idx + len(sep):]
    else:
        headers, payload = b"", part
    # the newline before the next delimiter belongs to the delimiter
    if payload.endswith(b"\r\n"):
        payload = payload[:-2]
    elif payload.endswith(b"\n"):
        payload = payload[:-1]
    return headers.decode("latin-1"), payload
