"""One HTTP client for DataLab's clients: urllib3 with its `Retry`.

A refused or reset connection (a service restarting) and a proxy's 502, 503 or
504 are tried again with backoff; a request that reached the service is sent
again only if its method is idempotent (urllib3's default set: never a POST).
Every failure is an `HTTPError` naming what failed: the status and the
service's own message (its JSON "error" or "message"), or why it could not be
reached."""

import json

import urllib3
from urllib3.util import Retry

RETRY = Retry(total=4, connect=4, read=2, status=3, backoff_factor=0.25, status_forcelist=(502, 503, 504),
              raise_on_status=False)
TIMEOUT = urllib3.Timeout(connect=10, read=120)
_pool = urllib3.PoolManager(retries=RETRY, timeout=TIMEOUT)


def pool(ca_file):
    """Connections that verify HTTPS servers against this CA file (a lab's own CA)
    instead of the system's store."""
    return urllib3.PoolManager(retries=RETRY, timeout=TIMEOUT, ca_certs=str(ca_file))


def trust(ca_file):
    """Verify HTTPS servers against this CA file (a lab's own CA, whose certificate
    its hub serves) instead of the system's store, in every request of this process."""
    global _pool
    _pool = pool(ca_file)


class HTTPError(RuntimeError):
    def __init__(self, status, message, detail=""):
        super().__init__(message)
        self.status = status  # 0: never answered
        self.detail = detail or message  # the service's own words, when it answered


def request(method, url, token=None, body=None, scheme="token", headers=None, stream=False, timeout=TIMEOUT,
            retries=RETRY, connections=None):
    """The response (status < 400). `body`: sent as JSON; `stream`: the body is left
    unread (`response.stream()`), with no read timeout; `retries=False` for a probe;
    `connections`: a `pool` of this request's own."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token:
        sent["Authorization"] = f"{scheme} {token}"
    try:
        response = (connections or _pool).request(method, url, body=None if body is None else json.dumps(body).encode(),
                                 headers=sent, preload_content=not stream, retries=retries,
                                 timeout=urllib3.Timeout(connect=10, read=None) if stream else timeout)
    except urllib3.exceptions.MaxRetryError as e:
        raise HTTPError(0, f"cannot reach {url.split('?')[0]}: {e.reason}") from None
    except urllib3.exceptions.HTTPError as e:
        raise HTTPError(0, f"cannot reach {url.split('?')[0]}: {e}") from None
    if response.status >= 400:
        detail = _message(response)
        raise HTTPError(response.status, f"{method} {url.split('?')[0]}: {response.status} {detail}", detail)
    return response


def call(method, url, token=None, body=None, **kwargs):
    """The answer's JSON (None when empty)."""
    data = request(method, url, token, body, **kwargs).data
    return json.loads(data) if data else None


def _message(response):
    try:
        found = json.loads(response.data)
    except ValueError:
        return response.reason or ""
    return (found.get("error") or found.get("message") or response.reason or "") if isinstance(found, dict) else ""
