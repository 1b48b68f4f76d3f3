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
    except ValueError:
        raise UnsafeWebhookURL("must be an absolute http(s) URL with a host name") from None
    try:
        port = parts.port
    except ValueError:  # past 65535, or not a number
        raise UnsafeWebhookURL("must have a port between 1 and 65535") from None
    if parts.scheme not in DEFAULT_PORTS:
        raise UnsafeWebhookURL("must be an absolute http(s) URL with a host name")
    if parts.username is not None or parts.password is not None:
        raise UnsafeWebhookURL("must not contain credentials (user:password@)")
    if not parts.hostname:
        raise UnsafeWebhookURL("must be an absolute http(s) URL with a host name")
    # Port 0 is no port: a connection to it goes to the scheme's default instead, past what was checked.
    if port is not None and not 1 <= port <= 65535:
        raise UnsafeWebhookURL("must have a port between 1 and 65535")
    return parts.scheme, parts.hostname, port if port is not None else DEFAULT_PORTS[parts.scheme]


def resolve(hostname: str, port: int) -> list[IPAddress]:
    """Every address `hostname` resolves to (an IP literal resolves to itself); UnsafeWebhookURL when none."""
    try:
        infos = socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeWebhookURL(f"host {hostname!r} does not resolve ({exc})") from None
    # An IPv6 address may carry a zone ("fe80::1%eth0"); the zone does not change what the address is.
    return list(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


# The IANA special-purpose address registries (iana-ipv4-special-registry, iana-ipv6-special-registry, 2025),
# plus multicast and IPv6 site-local: blocks that are not ordinary unicast hosts on the internet. A webhook never
# goes to them, not even to the few the registries mark globally reachable (anycast relays, AS112 sinks), unless
# allow-listed. Listed here rather than read from `ipaddress`, whose tables lag the registries by Python release.
SPECIAL_PURPOSE_V4 = tuple(
    ipaddress.IPv4Network(block)
    for block in (
        "0.0.0.0/8",  # "this network"
        "10.0.0.0/8",  # private
        "100.64.0.0/10",  # shared address space (carrier-grade NAT)
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local (cloud metadata lives here)
        "172.16.0.0/12",  # private
        "192.0.0.0/24",  # IETF protocol assignments (NAT64 discovery, PCP/TURN anycast, dummy address, ...)
        "192.0.2.0/24",  # documentation (TEST-NET-1)
        "192.31.196.0/24",  # AS112-v4
        "192.52.193.0/24",  # AMT
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "192.168.0.0/16",  # private
        "192.175.48.0/24",  # direct delegation AS112
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation (TEST-NET-2)
        "203.0.113.0/24",  # documentation (TEST-NET-3)
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, and 255.255.255.255 limited broadcast
    )
)
SPECIAL_PURPOSE_V6 = tuple(
    ipaddress.IPv6Network(block)
    for block in (
        "::/128",  # unspecified
        "::1/128",  # loopback
        "64:ff9b:1::/48",  # local-use IPv4/IPv6 translation: where the IPv4 sits depends on the local prefix
        "100::/64",  # discard-only
        "100:0:0:1::/64",  # dummy prefix
        "2001::/23",  # IETF protocol assignments (ORCHID, benchmarking, AMT, AS112, DRIP, anycast, ...)
        "2001:db8::/32",  # documentation
        "2620:4f:8000::/48",  # direct delegation AS112
        "3fff::/20",  # documentation
        "5f00::/16",  # segment routing (SRv6) SIDs
        "fc00::/7",  # unique local
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated, still routed inside some sites)
        "ff00::/8",  # multicast
    )
)
# IPv6 forms that carry an IPv4 address: on a network that translates or tunnels them (NAT64, 6to4, Teredo,
# SIIT) they reach that IPv4 host, so they are judged by the IPv4 address inside.
IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
IPV4_TRANSLATED = ipaddress.IPv6Network("::ffff:0:0:0/96")  # SIIT (RFC 2765)
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")  # deprecated (RFC 4291)
# Inside ::/96 but IPv6 addresses of their own, refused as what they are.
UNSPECIFIED_AND_LOOPBACK = (ipaddress.IPv6Address("::"), ipaddress.IPv6Address("::1"))
NAT64_WELL_KNOWN = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052
SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")  # RFC 3056
TEREDO = ipaddress.IPv6Network("2001::/32")  # RFC 4380


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[ipaddress.IPv4Address, ...]:
    """The IPv4 addresses an IPv6 address carries (Teredo: its server and its client); () when none."""
    low32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in IPV4_MAPPED or address in IPV4_TRANSLATED or address in NAT64_WELL_KNOWN:
        return (low32,)
    if address in IPV4_COMPATIBLE and address not in UNSPECIFIED_AND_LOOPBACK:
        return (low32,)
    if address.sixtofour is not None:
        return (address.sixtofour,)
    if address.teredo is not None:
        return address.teredo
    return ()


def is_public(address: IPAddress) -> bool:
    """Globally routable unicast: in no special-purpose, multicast or reserved block, and for an IPv6 form that
    carries IPv4 addresses, every one of those public too. Only the mapped and NAT64 forms pass on what they carry:
    a Teredo, SIIT or IPv4-compatible address sits in a special-purpose or reserved block of its own."""
    if isinstance(address, ipaddress.IPv6Address):
        if not all(is_public(v4) for v4 in embedded_ipv4(address)):
            return False
        if address in IPV4_MAPPED or address in NAT64_WELL_KNOWN:
            return True  # the IPv4 host itself, written or translated as IPv6 (::/8 around them is reserved)
        blocks: tuple[IPNetwork, ...] = SPECIAL_PURPOSE_V6
    else:
        blocks = SPECIAL_PURPOSE_V4
    if any(address in block for block in blocks):
        return False
    # What the registries above do not list: IPv6 outside global unicast 2000::/3 is reserved by the IETF.
    return address.is_global and not address.is_reserved


def check_address(address: IPAddress, allowed: tuple[IPNetwork, ...]) -> None:
    if is_public(address) or any(address.version == net.version and address in net for net in allowed):
        return
    inner = embedded_ipv4(address) if isinstance(address, ipaddress.IPv6Address) else ()
    carries = f" (it carries {', '.join(map(str, inner))})" if inner else ""
    raise UnsafeWebhookURL(f"resolves to {address}, which is not a public address{carries}")


def check_url(url: str, allowed: tuple[IPNetwork, ...]) -> Target:
    """Resolve the URL's host once, check every address it resolves to, and return the first to connect to."""
    scheme, hostname, port = check_shape(url)
    addresses = resolve(hostname, port)
    for address in addresses:
        check_address(address, allowed)
    return Target(scheme, hostname, port, addresses[0])
