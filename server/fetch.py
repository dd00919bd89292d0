"""Fetching URLs that clients name (input pictures, webhook targets), safe against SSRF.

Each hop resolves the host once, checks every address it resolved to, and connects to the checked
address (the transport pins the IP while Host and TLS SNI/certificate checks keep the name), so a
DNS answer cannot change between the check and the connection. Loopback, private, link-local
(cloud metadata at 169.254.169.254), unique-local, multicast, reserved and IPv4-mapped addresses
are refused, as are IPv4 addresses hidden in 6to4/NAT64 forms; odd spellings (``0x7f000001``,
``2130706433``, ``127.1``) resolve to what they mean and are refused with it. Redirects are
followed by hand, each re-checked, at most ``max_redirects``. The allowlist in settings opens
exactly the host names and CIDRs it lists (studios fetch from internal asset servers).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import unquote_to_bytes

import httpx

from .errors import ServiceError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Some servers label pictures generically; anything else (text/html, JSON...) is not a picture.
_GENERIC_TYPES = {"application/octet-stream", "binary/octet-stream"}


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 20 * 1024 * 1024
    timeout_s: float = 30.0
    connect_timeout_s: float = 5.0
    max_redirects: int = 3
    allow_hosts: frozenset[str] = frozenset()
    allow_nets: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = field(default=())

    @classmethod
    def from_settings(cls, settings) -> FetchPolicy:
        hosts, nets = set(), []
        for item in (x.strip() for x in (settings.fetch_allow or "").split(",")):
            if not item:
                continue
            try:
                nets.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(
            max_bytes=settings.fetch_max_bytes,
            timeout_s=settings.fetch_timeout_s,
            connect_timeout_s=settings.fetch_connect_timeout_s,
            max_redirects=settings.fetch_max_redirects,
            allow_hosts=frozenset(hosts),
            allow_nets=tuple(nets),
        )


def _fail(what: str, reason: str) -> ServiceError:
    return ServiceError("INPUT_FETCH_FAILED", f"{what} could not be fetched: {reason}", field=what)


def _blocked(what: str, reason: str) -> ServiceError:
    return ServiceError("INPUT_URL_BLOCKED", f"{what}: {reason}", field=what)


def blocked_reason(ip: IPAddress) -> str | None:
    """Why connecting to ``ip`` is refused, or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return "an IPv4-mapped IPv6 address"
        embedded = ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None and blocked_reason(embedded):
            return f"an IPv6 address wrapping {embedded}"
    for test, reason in (
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_unspecified, "an unspecified address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved, "a reserved address"),
        (not ip.is_global, "not a public address"),
    ):
        if test:
            return reason
    return None


def resolve_checked(host: str, port: int, policy: FetchPolicy, what: str) -> str:
    """The one address to connect to for ``host``; every resolved address must pass."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, ValueError):
        raise _fail(what, f"the host {host!r} could not be resolved") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    if not addresses:
        raise _fail(what, f"the host {host!r} has no address")
    if host.lower().rstrip(".") in policy.allow_hosts:
        return str(addresses[0])
    for ip in addresses:
        if any(ip in net for net in policy.allow_nets):
            continue
        reason = blocked_reason(ip)
        if reason:
            raise _blocked(what, f"the URL's host resolves to {reason}; such addresses are not fetched")
    return str(addresses[0])


class _PinnedTransport(httpx.HTTPTransport):
    """Connects to a checked IP while the request keeps its host name (Host header, SNI, cert)."""

    def __init__(self, ip: str, **kwargs):
        super().__init__(**kwargs)
        self.ip = ip

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        name = request.url.host
        request.url = request.url.copy_with(host=self.ip)
        request.extensions = {**request.extensions, "sni_hostname": name}
        return super().handle_request(request)


def _checked_client(url: httpx.URL, policy: FetchPolicy, what: str, timeout_s: float) -> httpx.Client:
    if url.scheme not in ("http", "https") or not url.host:
        raise ServiceError("INVALID_PARAMETERS", f"{what} must be an http(s) or data: URL", field=what)
    ip = resolve_checked(url.host, url.port or (443 if url.scheme == "https" else 80), policy, what)
    timeout = httpx.Timeout(max(timeout_s, 0.1), connect=min(policy.connect_timeout_s, max(timeout_s, 0.1)))
    # trust_env=False: a proxy from the environment would connect to the name, not the checked IP.
    return httpx.Client(transport=_PinnedTransport(ip), timeout=timeout, trust_env=False)


def decode_data_url(url: str, *, max_bytes: int, what: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise ServiceError("INVALID_PARAMETERS", f"{what} is a malformed data: URL (no comma)", field=what)
    is_base64 = header.endswith(";base64")
    # Refuse by the encoded length first, so an oversized payload is never decoded.
    if len(payload) > (max_bytes * 4 // 3 + 4 if is_base64 else 3 * max_bytes):
        raise ServiceError("FILE_TOO_LARGE", f"{what} is over the {max_bytes} byte limit", field=what)
    try:
        data = base64.b64decode(payload, validate=True) if is_base64 else unquote_to_bytes(payload)
    except (binascii.Error, ValueError):
        raise ServiceError(
            "INVALID_PARAMETERS", f"{what} is a data: URL with invalid base64", field=what
        ) from None
    if len(data) > max_bytes:
        raise ServiceError("FILE_TOO_LARGE", f"{what} is over the {max_bytes} byte limit", field=what)
    return data


def fetch_url(
    url: str,
    *,
    max_bytes: int | None = None,
    timeout_s: float | None = None,
    what: str,
    policy: FetchPolicy | None = None,
) -> bytes:
    """GET a picture: SSRF-checked per hop, at most ``max_bytes``, ``timeout_s`` in total."""
    policy = policy or FetchPolicy()
    max_bytes = max_bytes or policy.max_bytes
    timeout_s = timeout_s or policy.timeout_s
    if url.startswith("data:"):
        return decode_data_url(url, max_bytes=max_bytes, what=what)
    if not url.startswith(("http://", "https://")):
        raise ServiceError("INVALID_PARAMETERS", f"{what} must be an http(s) or data: URL", field=what)
    deadline = time.monotonic() + timeout_s
    try:
        current = httpx.URL(url)
    except (httpx.InvalidURL, ValueError):
        raise ServiceError("INVALID_PARAMETERS", f"{what} is not a valid URL", field=what) from None
    try:
        for _hop in range(policy.max_redirects + 1):
            with (
                _checked_client(current, policy, what, deadline - time.monotonic()) as client,
                client.stream("GET", current) as resp,
            ):
                if resp.is_redirect and "location" in resp.headers:
                    current = current.join(resp.headers["location"])
                    continue
                return _read_picture(resp, what, max_bytes, deadline, timeout_s)
        raise _fail(what, f"more than {policy.max_redirects} redirects")
    except httpx.TimeoutException:
        raise _fail(what, f"no answer within {timeout_s:g} s") from None
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _fail(what, type(exc).__name__) from None


def _read_picture(
    resp: httpx.Response, what: str, max_bytes: int, deadline: float, timeout_s: float
) -> bytes:
    if resp.status_code != 200:
        raise _fail(what, f"the server answered HTTP {resp.status_code}")
    kind = resp.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind and not kind.startswith("image/") and kind not in _GENERIC_TYPES:
        raise _fail(what, f"the server sent {kind}, not a picture")
    declared = resp.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise ServiceError("FILE_TOO_LARGE", f"{what} is over the {max_bytes} byte limit", field=what)
    chunks, size = [], 0
    for chunk in resp.iter_bytes():
        size += len(chunk)
        if size > max_bytes:
            raise ServiceError("FILE_TOO_LARGE", f"{what} is over the {max_bytes} byte limit", field=what)
        if time.monotonic() > deadline:
            raise _fail(what, f"the download took longer than {timeout_s:g} s")
        chunks.append(chunk)
    return b"".join(chunks)


def check_callback_url(url: str, policy: FetchPolicy, what: str) -> None:
    """Refuse at submission a webhook URL that ``safe_post`` would refuse at delivery.

    The same address checks and allowlist as input fetches, so a client hears of a private or
    unresolvable receiver in the submit's answer instead of its job's webhook being dropped."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise ServiceError("INVALID_PARAMETERS", f"{what} is not a valid URL", field=what) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ServiceError("INVALID_PARAMETERS", f"{what} must be an http(s) URL", field=what)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        resolve_checked(parsed.host, port, policy, what)
    except ServiceError as exc:
        if exc.code == "INPUT_URL_BLOCKED":
            raise
        # A receiver that does not resolve now is most likely a typo; nothing was fetched.
        raise ServiceError(
            "INVALID_PARAMETERS", f"{what}: the host {parsed.host!r} could not be resolved", field=what
        ) from None


def safe_post(
    url: str, *, content: bytes | str, headers: dict, timeout_s: float, policy: FetchPolicy
) -> httpx.Response:
    """POST to a client-named URL (webhooks): same address checks, redirects not followed."""
    with _checked_client(httpx.URL(url), policy, "callback_url", timeout_s) as client:
        return client.post(url, content=content, headers=headers)
