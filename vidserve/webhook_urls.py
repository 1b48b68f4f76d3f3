"""Where a webhook may be sent: http(s) URLs without credentials whose host resolves to public addresses only.

The API checks a job's `webhook_url` at submit; the webhook sender checks it again before every attempt and
connects to exactly the address it checked (worker/pinned_http.py), so a name that resolves elsewhere between
the check and the connection (DNS rebinding) cannot reach an internal address. Loopback or private targets
are allowed only through `VIDSERVE_WEBHOOK_ALLOWED_NETWORKS` (empty by default).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_PORTS = {"http": 80, "https": 443}


class UnsafeWebhookURL(ValueError):
    """The URL may not receive webhooks; the message says why (shown to clients and in delivery attempts)."""


@dataclass(frozen=True)
class Target:
    """A checked destination: connect to `address`, speak to `hostname` (Host header, TLS SNI and certificate)."""

    scheme: str
    hostname: str
    port: int
    address: IPAddress


def parse_networks(text: str) -> tuple[IPNetwork, ...]:
    """`VIDSERVE_WEBHOOK_ALLOWED_NETWORKS`: comma-separated CIDRs (a bare address is a /32 or /128)."""
    networks = []
    for part in text.split(","):
        if part.strip():
            try:
                networks.append(ipaddress.ip_network(part.strip(), strict=False))
            except ValueError:
                raise ValueError(f"VIDSERVE_WEBHOOK_ALLOWED_NETWORKS: {part.strip()!r} is not a CIDR") from None
    return tuple(networks)


def check_shape(url: str) -> tuple[str, str, int]:
    """(scheme, hostname, port) of an absolute http(s) URL without credentials; UnsafeWebhookURL otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeWebhookURL("must be an absolute http(s) URL with a host name") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise UnsafeWebhookURL("must be an absolute http(s) URL with a host name")
    if parts.username is not None or parts.password is not None:
        raise UnsafeWebhookURL("must not contain credentials (user:password@)")
    if not parts.hostname:
        raise UnsafeWebhookURL("must be an absolute http(s) URL with a host name")
    return parts.scheme, parts.hostname, port or DEFAULT_PORTS[parts.scheme]


def resolve(hostname: str, port: int) -> list[IPAddress]:
    """Every address `hostname` resolves to (an IP literal resolves to itself); UnsafeWebhookURL when none."""
    try:
        infos = socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeWebhookURL(f"host {hostname!r} does not resolve ({exc})") from None
    # An IPv6 address may carry a zone ("fe80::1%eth0"); the zone does not change what the address is.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast: not loopback, private, link-local, CGNAT, multicast, reserved or unspecified."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return is_public(address.ipv4_mapped)
    return address.is_global and not address.is_multicast


def check_address(address: IPAddress, allowed: tuple[IPNetwork, ...]) -> None:
    if is_public(address):
        return
    if any(address.version == net.version and address in net for net in allowed):
        return
    raise UnsafeWebhookURL(f"resolves to {address}, which is not a public address")


def check_url(url: str, allowed: tuple[IPNetwork, ...]) -> Target:
    """Resolve the URL's host once, check every address it resolves to, and return the first to connect to."""
    scheme, hostname, port = check_shape(url)
    addresses = resolve(hostname, port)
    for address in addresses:
        check_address(address, allowed)
    return Target(scheme, hostname, port, addresses[0])
