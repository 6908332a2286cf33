"""How ``ingest top`` and ``ingest tap`` name the daemon they read: its base
URL, and why reaching it failed. Standard library only, so that ``ingest
tap`` starts without loading rich (``ingest top`` does, for the screen)."""

from __future__ import annotations

# Endpoints a user may paste whole; the base URL is what precedes them.
ENDPOINTS = ("/metrics", "/healthz", "/tap")


def base_url(url: str) -> str:
    """The daemon's base URL: a trailing /metrics, /healthz or /tap is
    accepted, and the scheme is optional (http)."""
    url = url.strip().rstrip("/")
    for endpoint in ENDPOINTS:
        url = url.removesuffix(endpoint)
    return url if "://" in url else "http://" + url


def why(exc: BaseException) -> str:
    """The cause in a few words ("connection refused", "timed out"); a
    urllib URLError is unwrapped to the socket error inside it."""
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror.lower()
    return str(reason) or type(reason).__name__
