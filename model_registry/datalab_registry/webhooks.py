"""MLflow webhook signatures (MLflow 3.3+): X-MLflow-Signature is
"v1," + base64(HMAC-SHA256(secret, "{delivery_id}.{timestamp}.{body}")).
A delivery older than max_age seconds is refused too (a replayed one)."""

import base64
import hashlib
import hmac
import time


class Forged(ValueError):
    pass


def sign(secret, delivery_id, timestamp, body):
    digest = hmac.new(secret.encode(), f"{delivery_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(secret, headers, body, now=None, max_age=300):
    """Raise Forged with the reason unless the delivery is signed with `secret` and fresh."""
    signature = headers.get("X-MLflow-Signature")
    delivery_id = headers.get("X-MLflow-Delivery-Id")
    timestamp = headers.get("X-MLflow-Timestamp")
    if not signature or not delivery_id or not timestamp:
        raise Forged("unsigned delivery (no X-MLflow-Signature, -Delivery-Id or -Timestamp)")
    try:
        age = (now or time.time()) - int(timestamp)
    except ValueError:
        raise Forged(f"bad timestamp {timestamp!r}") from None
    if abs(age) > max_age:
        raise Forged(f"delivery timestamp {age:.0f} s away from now (replayed?)")
    text = body.decode() if isinstance(body, bytes) else body
    if not hmac.compare_digest(sign(secret, delivery_id, timestamp, text), signature):
        raise Forged("signature does not match")
