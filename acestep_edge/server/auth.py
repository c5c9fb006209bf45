"""Who may use the server: the API key, and the Origin and Host checks that keep web pages and DNS rebinding out."""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from urllib.parse import urlsplit

from .wire import entry

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARDS = ("0.0.0.0", "::", "")


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_host(value: str) -> str:
    """The host name of a Host header or a URL's netloc ("[::1]:8000" → "::1"), lower case."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class Access:
    """The API key check and the browser-facing checks of one server."""

    def __init__(self, api_key: str | None = None, bind_host: str = "127.0.0.1", public_url: str | None = None,
                 cors_origins: Iterable[str] = ()):
        self.api_key = api_key
        self.cors_origins = tuple(o.rstrip("/").lower() for o in cors_origins)
        hosts = set(LOOPBACK_NAMES)
        if bind_host not in WILDCARDS:
            hosts.add(split_host(bind_host))
        if public_url:
            hosts.add(split_host(urlsplit(public_url).netloc))
        # Bound to every interface with no --public-url: clients may name the machine any way they like.
        self.hosts = None if bind_host in WILDCARDS and not public_url else frozenset(hosts)

    # -- the API key ---------------------------------------------------------------------------
    def key_ok(self, given: str | None) -> bool:
        if self.api_key is None:
            return True
        # Constant time: the comparison does not stop at the first differing byte.
        return given is not None and hmac.compare_digest(given.encode("utf-8"), self.api_key.encode("utf-8"))

    @staticmethod
    def bearer(headers: Mapping[str, str]) -> str | None:
        value = headers.get("authorization", "")
        return value[7:].strip() if value[:7].lower() == "bearer " else None

    @staticmethod
    def key_error(given: str | None, task_uuid: str | None = None) -> dict:
        if given is None:
            return entry("missingApiKey", "this server needs an API key: send 'Authorization: Bearer KEY' or "
                         "an {\"taskType\": \"authentication\", \"apiKey\": KEY} task first", "apiKey",
                         task_uuid, "authentication")
        return entry("invalidApiKey", "the API key is not valid for this server", "apiKey", task_uuid,
                     "authentication")

    # -- Host and Origin -----------------------------------------------------------------------
    def host_ok(self, host: str | None) -> bool:
        """A Host this server answers to: a page on a rebinding domain sends that domain's name."""
        return self.hosts is None or (host is not None and split_host(host) in self.hosts)

    def origin_ok(self, origin: str | None, host: str | None) -> bool:
        """No Origin (not a browser), the page's own origin, or one of --cors-origin."""
        if origin is None:
            return True
        origin = origin.rstrip("/").lower()
        if "*" in self.cors_origins or origin in self.cors_origins:
            return True
        parts = urlsplit(origin)
        return parts.scheme in ("http", "https") and host is not None and parts.netloc == host.strip().lower()

    def cross_origin(self, origin: str | None) -> bool:
        """An allowed origin other than our own: its responses carry CORS headers."""
        return origin is not None and ("*" in self.cors_origins or origin.rstrip("/").lower() in self.cors_origins)

    def refusal(self, headers: Mapping[str, str]) -> dict | None:
        """The error for a request from a foreign Host or Origin, or None."""
        host = headers.get("host")
        if not self.host_ok(host):
            return entry("forbidden", f"Host {host!r} is not a name of this server (DNS rebinding guard); use "
                         "the address it listens on, or start it with --public-url", "Host", None, None)
        origin = headers.get("origin")
        if not self.origin_ok(origin, host):
            return entry("forbidden", f"Origin {origin!r} may not call this server; start it with --cors-origin "
                         f"{origin} to allow that web page", "Origin", None, None)
        return None
