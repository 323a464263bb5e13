"""The one TorchServe client: inference and management calls with key handling and rotation.

Everything that calls TorchServe goes through this module: the page (``frontend``), the operator's
commands (``python -m scripts.serve status|smoke``, readiness while starting) and the container's
health check (``deploy/docker/entrypoint.py``). Every call has a timeout, and every failure
becomes one exception type, ``TorchServeError``, that already carries the status the page should
answer with (RELIABILITY.md section 4):

    ==========================================  ===================================================
    TorchServe                                  the page
    ==========================================  ===================================================
    400 / 413 / 415 / 422 from the handler      the same code, the handler's message (and a 413's
                                                ``max_scale``: the largest scale that fits in time)
    413 with an empty body (request too big)    413
    400 InvalidKeyException                     refresh the key and retry once; then 503
    404 ModelNotFoundException                  503 (the model is not loaded)
    503 ServiceUnavailableException (queue)     503 ServiceBusy with Retry-After
    503 ServiceBusy (the handler: batch full)   503 ServiceBusy with Retry-After
    507 InsufficientStorage / Out of resources  503 ServiceBusy with Retry-After (out of memory)
    500 / 507 "Worker died."                    sent once more (enhancement is idempotent); a second
                                                death is 502 WorkerDied naming the image as the
                                                likely cause, never sent a third time
    503 "Prediction failed" (a handler bug)     502, never retried
    connection refused, no key file             503 ServiceUnavailable
    read timeout                                504
    ==========================================  ===================================================

Token authorization (on by default since TorchServe 0.11.1) is handled here: keys are read from
TorchServe's ``key_file.json`` and re-read whenever the file changes (a restart writes new keys). A
400 InvalidKeyException means the key expired or was replaced: the file is read again and, when it
still holds the key that failed, the key is rotated with ``GET <management>/token?type=<kind>`` and
the API key (which never expires); the request is then sent once more.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import requests
from urllib3.exceptions import NewConnectionError

from enhancer.contract import CONTENT_TYPES, MODEL_NAME, OPTION_HEADER_PREFIX, option_header

logger = logging.getLogger(__name__)

# Content types the handler answers with; anything else is not passed on to the browser.
IMAGE_TYPES = tuple(CONTENT_TYPES.values())
_CHUNK = 256 * 1024
# Statuses the handler uses for problems with the request itself: passed through to the user.
_CLIENT_ERRORS = {
    400: "BadRequest",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
    422: "BadRequest",
}
_MESSAGE_LIMIT = 300


class TorchServeError(Exception):
    """A call to TorchServe failed; ``status`` and ``kind`` are what the page answers with.

    Attributes:
        status: the HTTP status for the page's response (400, 413, 415, 502, 503 or 504).
        kind: the error type for the JSON body, e.g. "ServiceBusy".
        message: a sentence for the user; it never holds paths, keys or tracebacks.
        retry_after: seconds the user should wait before trying again, for 503 ServiceBusy.
        extra: more fields of the error body: ``max_scale`` for a 413 that says the request is
            too much work (the largest scale that fits the image, or None).
    """

    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        retry_after: int | None = None,
        extra: Mapping[str, object] | None = None,
    ):
        super().__init__(f"{status} {kind}: {message}")
        self.status = status
        self.kind = kind
        self.message = message
        self.retry_after = retry_after
        self.extra = dict(extra or {})  # more fields for the body (a 413's ``max_scale``)


@dataclass
class Result:
    """A successful enhancement whose body is still streaming from TorchServe.

    Attributes:
        content_type: the image's type ("image/png", "image/jpeg" or "image/webp").
        content_length: bytes in the body, when TorchServe said.
        chunks: the body, in pieces.
        headers: the service's own response headers (the contract's prefix, as TorchServe sent
            them): ``X-Enhance-Scale-Used``, ``X-Enhance-Denoise``.
    """

    content_type: str
    content_length: int | None
    chunks: Iterator[bytes]
    _response: requests.Response
    headers: dict[str, str] = field(default_factory=dict)

    def close(self) -> None:
        """Release the connection to TorchServe (call when the body was sent or abandoned)."""
        self._response.close()


class KeyFile:
    """TorchServe's keys, read from its key_file.json and re-read whenever the file changes.

    Thread-safe. A rotation is done under a lock on the key file, so several threads, or several
    gunicorn workers, that see the same expired key rotate it only once.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._keys: dict[str, str] = {}
        self._missing = False  # log a missing key file once, not on every request

    def get(self, kind: str) -> str:
        """The current key of ``kind`` ("inference", "management" or "API").

        Raises:
            TorchServeError: (503) no readable key file, i.e. TorchServe is not running.
        """
        with self._lock:
            return self._load()[kind]

    def refresh(self, kind: str, failed: str, rotate) -> str:
        """A key of ``kind`` to use instead of ``failed``, which TorchServe just refused.

        Reads the key file again; if it still holds ``failed`` the key has expired, and
        ``rotate(kind, api_key)`` asks TorchServe for a new one (which it writes to the file).

        Raises:
            TorchServeError: (503) no key file, or the rotation failed.
        """
        with self._lock, self._file_lock():
            self._stamp = None  # force a re-read
            key = self._load()[kind]
            if key != failed:
                logger.info(
                    "TorchServe %s key changed in %s (restart or rotation); using it",
                    kind,
                    self.path,
                )
                return key
            rotate(kind, self._load()["API"])
            self._stamp = None
            key = self._load()[kind]
            logger.info("TorchServe %s key expired; rotated it through the management API", kind)
            return key

    def _load(self) -> dict[str, str]:
        for attempt in range(3):
            try:
                status = self.path.stat()
                stamp = (status.st_ino, status.st_mtime_ns, status.st_size)
                if stamp != self._stamp:
                    data = json.loads(self.path.read_text(encoding="utf-8"))
                    self._keys = {
                        kind: data[kind]["key"] for kind in ("inference", "management", "API")
                    }
                    self._stamp = stamp
                if self._missing:
                    logger.info("TorchServe's key file %s is back", self.path)
                    self._missing = False
                return self._keys
            except (ValueError, KeyError, TypeError) as error:
                # TorchServe rewrites the file in place: a read may catch it half written.
                problem = error
                time.sleep(0.05 * (attempt + 1))
            except OSError as error:
                problem = error
                break
        self._stamp = None
        if not self._missing:
            logger.warning("cannot read TorchServe's key file %s: %s", self.path, problem)
            self._missing = True
        raise TorchServeError(503, "ServiceUnavailable", "The enhancement service is not running.")

    @contextlib.contextmanager
    def _file_lock(self):
        # flock on the key file itself: other gunicorn workers wait here while one rotates.
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 - closed below
        except OSError:
            yield
            return
        try:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield
        finally:
            handle.close()  # also releases the lock


class TorchServeClient:
    """Calls TorchServe's inference and management APIs with a key and a timeout on every call.

    Args:
        inference_url: base URL of the inference API, e.g. "http://127.0.0.1:8080".
        management_url: base URL of the management API (for key rotation and the model's status);
            empty to do without (then an expired key cannot be rotated).
        model_name: the model to call, e.g. "enhancer".
        key_file: TorchServe's key_file.json.
        connect_timeout: seconds to wait for a connection.
        read_timeout: seconds to wait for an enhancement (keep it above the model's responseTimeout
            so TorchServe's own timeout answers first).
        status_timeout: seconds to wait for /ping, the model's status and a key rotation.
        retry_after: seconds to tell a user to wait when TorchServe is busy.
    """

    def __init__(
        self,
        inference_url: str,
        management_url: str,
        model_name: str = MODEL_NAME,
        key_file: str | os.PathLike = "key_file.json",
        *,
        connect_timeout: float = 3.0,
        read_timeout: float = 310.0,
        status_timeout: float = 5.0,
        retry_after: int = 10,
    ):
        self.inference_url = inference_url.rstrip("/")
        self.management_url = (management_url or "").rstrip("/")
        self.model_name = model_name
        self.keys = KeyFile(key_file)
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.status_timeout = status_timeout
        self.retry_after = retry_after
        self._local = threading.local()

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> TorchServeClient:
        """A client configured by the Flask app's config (TORCHSERVE_URL, KEY_FILE, ...)."""
        return cls(
            str(config["TORCHSERVE_URL"]),
            str(config.get("TORCHSERVE_MANAGEMENT_URL") or ""),
            str(config["MODEL_NAME"]),
            str(config["KEY_FILE"]),
            connect_timeout=float(config["CONNECT_TIMEOUT"]),
            read_timeout=float(config["READ_TIMEOUT"]),
            status_timeout=float(config["STATUS_TIMEOUT"]),
            retry_after=int(config["RETRY_AFTER"]),
        )

    # -- the calls ---------------------------------------------------------------------------------

    def enhance(self, data: bytes, options: Mapping[str, str]) -> Result:
        """Send one image with its options; return the enhanced image as a stream.

        Args:
            data: the encoded image.
            options: option name -> value ("scale", "format", "quality", "strength").

        Raises:
            TorchServeError: with the status the page should answer (see the module docstring).
        """
        headers = {"Content-Type": "application/octet-stream"}
        headers.update({option_header(name): value for name, value in options.items()})
        for attempt in (1, 2):
            response = self._call(
                "POST",
                f"{self.inference_url}/predictions/{self.model_name}",
                "inference",
                timeout=(self.connect_timeout, self.read_timeout),
                data=data,
                headers=headers,
                stream=True,
            )
            if response.status_code == 200:
                break
            died = _worker_died(response)
            error = self._error_for(response)
            response.close()
            if not died:
                raise error
            if attempt == 2:
                logger.warning("TorchServe's worker died twice on one image; not sending it again")
                raise TorchServeError(
                    502,
                    "WorkerDied",
                    "The enhancement service's worker died on this image twice (it was retried "
                    "once), so the image itself is the likely cause; it was not sent again.",
                )
            # Enhancement is idempotent: send it once more to the restarted worker (queued there).
            logger.warning("TorchServe's worker died during a request; sending it once more")
        content_type = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type not in IMAGE_TYPES:
            response.close()
            logger.error("TorchServe answered 200 with content type %r", content_type)
            raise TorchServeError(
                502,
                "BadGateway",
                "The enhancement service sent back something that is not an image.",
            )
        length = response.headers.get("Content-Length")
        return Result(
            content_type=content_type,
            content_length=int(length) if length and length.isdigit() else None,
            chunks=response.iter_content(_CHUNK),
            _response=response,
            headers={
                name: value
                for name, value in response.headers.items()
                if name.lower().startswith(OPTION_HEADER_PREFIX.lower())
            },
        )

    def health(self) -> tuple[bool, dict[str, str]]:
        """Whether TorchServe answers and the model has a READY worker.

        Returns:
            (ready, report) where report is {"torchserve": "ready" | "unhealthy" | "down",
            "model": "READY" | <worker status> | "NOT_LOADED" | "unknown"} plus "message" when not
            ready.
        """
        timeout = (self.connect_timeout, self.status_timeout)
        try:
            ping = self._call("GET", f"{self.inference_url}/ping", "inference", timeout=timeout)
        except TorchServeError as error:
            return False, {"torchserve": "down", "model": "unknown", "message": error.message}
        if ping.status_code != 200:
            return False, {
                "torchserve": "unhealthy",
                "model": "unknown",
                "message": f"TorchServe reports itself unhealthy ({ping.status_code}).",
            }
        if not self.management_url:
            return True, {"torchserve": "ready", "model": "unknown"}
        try:
            described = self._call(
                "GET",
                f"{self.management_url}/models/{self.model_name}",
                "management",
                timeout=timeout,
            )
        except TorchServeError as error:
            return False, {"torchserve": "ready", "model": "unknown", "message": error.message}
        if described.status_code == 404:
            return False, {
                "torchserve": "ready",
                "model": "NOT_LOADED",
                "message": f"TorchServe runs but does not serve the model '{self.model_name}'.",
            }
        try:
            statuses = worker_statuses(described.json())
        except ValueError:
            statuses = []
        if "READY" in statuses:
            return True, {"torchserve": "ready", "model": "READY"}
        status = statuses[0] if statuses else "NO_WORKERS"
        return False, {
            "torchserve": "ready",
            "model": status,
            "message": f"The model '{self.model_name}' has no READY worker ({status}).",
        }

    def model_status(self) -> dict:
        """The management API's description of the model (``GET /models/<name>``), first version.

        Raises:
            TorchServeError: TorchServe is down, refused the key even after a rotation, or
                answered something other than 200 with JSON.
        """
        response = self.call(
            "GET",
            f"{self.management_url}/models/{self.model_name}",
            "management",
            timeout=(self.connect_timeout, self.status_timeout),
        )
        if response.status_code != 200:
            kind, message = _body(response)
            raise TorchServeError(
                503,
                kind or "ServiceUnavailable",
                message or f"the management API answered {response.status_code}",
            )
        try:
            described = response.json()
        except ValueError:
            raise TorchServeError(502, "BadGateway", "the management API sent no JSON") from None
        described = described[0] if isinstance(described, list) and described else described
        return described if isinstance(described, dict) else {}

    def describe_costs(self) -> tuple[dict | None, int]:
        """The worker's cost estimator and how many workers serve the model.

        ``GET /models/<name>?customized=true``: TorchServe asks a worker (the handler's
        ``describe_handle``; it waits its turn in the model's queue) and hands on its answer as
        ``customizedMetadata``: ``{"estimator": ...}`` (``enhancer.admission.Estimator.to_json``).

        Returns:
            (the estimator's JSON, or None when the worker publishes none, the count of workers,
            at least 1).

        Raises:
            TorchServeError: TorchServe is down, timed out, or answered without a description.
        """
        metadata, version = self._customized()
        estimator = metadata.get("estimator") if isinstance(metadata, dict) else None
        workers = max(1, len(worker_statuses(version)))
        return (estimator if isinstance(estimator, dict) else None), workers

    def describe_models(self) -> dict | None:
        """The served models as the worker lists them (``Enhancer.models``: ``models``, each
        with name, version, scale, default, loaded and quality; ``pair``; ``max_loaded``), from
        the same ``GET /models/<name>?customized=true``; None when the worker lists none (a
        handler from before several models were served).

        Raises:
            TorchServeError: TorchServe is down, timed out, or answered without a description.
        """
        metadata, _ = self._customized()
        if not isinstance(metadata, dict) or not isinstance(metadata.get("models"), list):
            return None
        # TorchServe's frontend (Gson) drops the null fields of customizedMetadata: put them back
        fields = ("name", "version", "scale", "default", "loaded", "quality")
        models = [
            {field: entry.get(field) for field in fields}
            for entry in metadata["models"]
            if isinstance(entry, dict)
        ]
        return {"models": models, "pair": bool(metadata.get("pair")),
                "max_loaded": metadata.get("max_loaded")}  # fmt: skip

    def _customized(self) -> tuple[object, dict]:
        """(the worker's ``customizedMetadata``, parsed; the model version's description)."""
        response = self.call(
            "GET",
            f"{self.management_url}/models/{self.model_name}",
            "management",
            timeout=(self.connect_timeout, self.status_timeout),
            params={"customized": "true"},
        )
        if response.status_code != 200:
            kind, message = _body(response)
            raise TorchServeError(
                503,
                kind or "ServiceUnavailable",
                message or f"the management API answered {response.status_code}",
            )
        try:
            described = response.json()
        except ValueError:
            raise TorchServeError(502, "BadGateway", "the management API sent no JSON") from None
        version = described[0] if isinstance(described, list) and described else described
        if not isinstance(version, dict):
            raise TorchServeError(502, "BadGateway", "the management API sent no description")
        metadata = version.get("customizedMetadata")
        if isinstance(metadata, str):
            try:
                metadata = json.loads(metadata)
            except ValueError:
                metadata = None
        return metadata, version

    def ready(self) -> bool:
        """Whether the model has a READY worker (any failure counts as not ready)."""
        try:
            return "READY" in worker_statuses(self.model_status())
        except TorchServeError:
            return False

    def call(
        self, method: str, url: str, kind: str = "inference", *, timeout=None, **kwargs
    ) -> requests.Response:
        """Any call to TorchServe with the ``kind`` key, rotated once when it has expired.

        Args:
            method, url: the request, e.g. ("POST", f"{inference_url}/predictions/enhancer").
            kind: which key: "inference" (port 8080) or "management" (port 8081).
            timeout: (connect, read) seconds; default (connect_timeout, read_timeout).
            kwargs: passed to ``requests`` (data, files, headers, params, stream).

        Raises:
            TorchServeError: not reachable, timed out, or the key was refused even after rotation.
        """
        timeout = timeout or (self.connect_timeout, self.read_timeout)
        return self._call(method, url, kind, timeout=timeout, **kwargs)

    # -- plumbing ----------------------------------------------------------------------------------

    @property
    def _session(self) -> requests.Session:
        # One session per thread: connection reuse without sharing a Session across threads.
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            # TorchServe is a local backend: never route it through a proxy from the environment.
            session.trust_env = False
            self._local.session = session
        return session

    def _call(
        self, method: str, url: str, kind: str, *, timeout, headers=None, **kwargs
    ) -> requests.Response:
        """Send with the ``kind`` key; on InvalidKeyException refresh the key and send once more."""
        key = self.keys.get(kind)
        response = self._send(method, url, key, timeout=timeout, headers=headers, **kwargs)
        if not _invalid_key(response):
            return response
        response.close()
        key = self.keys.refresh(kind, key, self._rotate)
        response = self._send(method, url, key, timeout=timeout, headers=headers, **kwargs)
        if _invalid_key(response):
            response.close()
            logger.error("TorchServe refused a fresh %s key from %s", kind, self.keys.path)
            raise TorchServeError(
                503,
                "ServiceUnavailable",
                "The page cannot authenticate to the enhancement service.",
            )
        return response

    def _send(
        self, method: str, url: str, key: str, *, timeout, headers=None, **kwargs
    ) -> requests.Response:
        headers = {**(headers or {}), "Authorization": f"Bearer {key}"}
        try:
            return self._session.request(method, url, headers=headers, timeout=timeout, **kwargs)
        except requests.ConnectTimeout:
            logger.warning(
                "TorchServe did not accept a connection within %s s: %s", self.connect_timeout, url
            )
            raise TorchServeError(
                503, "ServiceUnavailable", "The enhancement service is not reachable."
            ) from None
        except requests.ReadTimeout:
            logger.warning("TorchServe did not answer within %s s: %s %s", timeout[1], method, url)
            raise TorchServeError(
                504,
                "GatewayTimeout",
                f"The enhancement service did not answer within {timeout[1]:g} seconds.",
            ) from None
        except requests.ConnectionError as error:
            if _refused(error):
                logger.warning("TorchServe refused the connection: %s", url)
                raise TorchServeError(
                    503, "ServiceUnavailable", "The enhancement service is not running."
                ) from None
            logger.warning("TorchServe dropped the connection: %s %s: %s", method, url, error)
            raise TorchServeError(
                502, "BadGateway", "The enhancement service dropped the connection."
            ) from None
        except requests.RequestException as error:
            logger.warning("request to TorchServe failed: %s %s: %s", method, url, error)
            raise TorchServeError(
                502, "BadGateway", "The request to the enhancement service failed."
            ) from None

    def _rotate(self, kind: str, api_key: str) -> None:
        """Ask TorchServe for a new ``kind`` key; it writes it to the key file."""
        if not self.management_url:
            raise TorchServeError(
                503, "ServiceUnavailable", "The page's key for the enhancement service expired."
            )
        response = self._send(
            "GET",
            f"{self.management_url}/token",
            api_key,
            timeout=(self.connect_timeout, self.status_timeout),
            params={"type": kind},
        )
        response.close()
        if response.status_code != 200:
            logger.error("key rotation answered %d: %s", response.status_code, response.text[:200])
            raise TorchServeError(
                503,
                "ServiceUnavailable",
                "The page could not renew its key for the enhancement service.",
            )

    def _error_for(self, response: requests.Response) -> TorchServeError:
        """The TorchServeError for a non-200 answer to an enhancement."""
        status = response.status_code
        kind, message = _body(response)
        logger.info("TorchServe answered %d %s: %s", status, kind, message)
        if _worker_died(response):
            # a crash, the OS's kill (507) or a responseTimeout: not the image's fault, not memory
            return TorchServeError(
                502,
                "WorkerDied",
                "The enhancement service's worker died while working on this image.",
            )
        if status in _CLIENT_ERRORS:
            if status == 413 and not message:
                # TorchServe's own max_request_size (bytes); its pixel limits come with a message.
                message = "The upload is over the enhancement service's request size limit."
            extra = {}
            if status == 413 and "max_scale" in _json(response):
                extra["max_scale"] = _json(response)["max_scale"]
            return TorchServeError(
                status,
                kind or _CLIENT_ERRORS[status],
                message or "The image was refused.",
                extra=extra,
            )
        if status == 404:
            return TorchServeError(
                503, "ServiceUnavailable", f"The model '{self.model_name}' is not loaded."
            )
        if status == 503 and kind == "ServiceUnavailableException":
            return TorchServeError(
                503,
                "ServiceBusy",
                "The enhancement service is busy with other images.",
                self.retry_after,
            )
        if status == 503 and kind == "ServiceBusy":  # the handler: its batch's time is taken
            return TorchServeError(
                503,
                "ServiceBusy",
                "The enhancement service is busy with other images.",
                self.retry_after,
            )
        if status == 429:
            return TorchServeError(
                503, "ServiceBusy", "The enhancement service is busy.", self.retry_after
            )
        if status == 507:
            return TorchServeError(
                503,
                "ServiceBusy",
                "The server ran out of memory for this image: try again, or a lower scale.",
                self.retry_after,
            )
        if status == 504:
            return TorchServeError(
                504, "GatewayTimeout", "The enhancement service timed out on this image."
            )
        # 500 "Worker died." (a crash or its responseTimeout) and 503 "Prediction failed" (a handler
        # bug): the worker restarts by itself; the image is not sent again, it may be the cause.
        return TorchServeError(502, "BadGateway", "The enhancement service failed on this image.")


def worker_statuses(described: object) -> list[str]:
    """The workers' statuses in a ``GET /models/<name>`` answer (a list of versions, or one).

    The one parser of "is the worker READY" in the project: ``"READY" in worker_statuses(...)``.
    """
    if isinstance(described, list):
        described = described[0] if described else {}
    if not isinstance(described, dict):
        return []
    workers = described.get("workers")
    if not isinstance(workers, list):
        return []
    return [str(worker.get("status")) for worker in workers if isinstance(worker, dict)]


def _json(response: requests.Response) -> dict:
    """A TorchServe error body as a dict; empty when it has none."""
    try:
        data = json.loads(response.content[:65536] or b"null")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _body(response: requests.Response) -> tuple[str, str]:
    """(type, message) of a TorchServe error body; empty strings when it has none."""
    data = _json(response)
    return str(data.get("type") or ""), str(data.get("message") or "")[:_MESSAGE_LIMIT]


def _worker_died(response: requests.Response) -> bool:
    """Whether TorchServe says the worker died under the request: 500 "Worker died." (a crash or
    ``responseTimeout``), or 507 with it (the OS killed the worker: exit 137). A 507 from the
    handler itself (InsufficientStorage) or TorchServe's "Out of resources" is out of memory."""
    return response.status_code in (500, 507) and "worker died" in _body(response)[1].lower()


def _invalid_key(response: requests.Response) -> bool:
    """Whether TorchServe refused the request's token (400 InvalidKeyException)."""
    if response.status_code != 400 or "json" not in response.headers.get("Content-Type", ""):
        return False
    kind, message = _body(response)
    return kind == "InvalidKeyException" or "Token Authorization" in message


def _refused(error: requests.ConnectionError) -> bool:
    """Whether the connection was never made (nothing listens), rather than dropped mid-request."""
    cause = error.args[0] if error.args else None
    return isinstance(getattr(cause, "reason", None), NewConnectionError)
