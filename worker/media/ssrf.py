"""The SSRF guard: a media URI must not make the worker talk to itself, its pod network or cloud metadata.

The host is resolved ONCE here and every address it resolves to is checked; the caller then connects to
the checked address (`CheckedTarget.address`) instead of resolving the name again, so a DNS answer that
changes between check and connect (DNS rebinding) cannot smuggle a private address in. Redirects are new
URLs and go through the same check (see worker.media.fetch).
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from worker.core.errors import ErrorCode, MediaError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[..., Sequence[tuple[Any, ...]]]

_DEFAULT_PORTS = {"http": 80, "https": 443}
#: IPv6 prefixes that carry an IPv4 address in their last 32 bits (NAT64 well-known and local-use prefixes).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
#: IPv4 ranges that Python's `is_global` misses or that no public media host lives in.
_EXTRA_BLOCKED_V4 = (
    ipaddress.ip_network("100.64.0.0/10"),   # carrier-grade NAT (often the pod/VPC network)
    ipaddress.ip_network("192.0.0.0/24"),    # IETF protocol assignments
    ipaddress.ip_network("198.18.0.0/15"),   # benchmarking
)


@dataclass(frozen=True)
class CheckedTarget:
    """Where to connect: the checked IPs in resolver order, and the host name for Host and TLS SNI."""

    scheme: str
    host: str
    port: int
    addresses: tuple[str, ...]

    @property
    def address(self) -> str:
        """The first checked address (the resolver's preference)."""
        return self.addresses[0]


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    packed = int(ip)
    if packed >> 32 == 0 and packed > 1:  # deprecated IPv4-compatible ::a.b.c.d
        return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(packed & 0xFFFFFFFF)
    return None


def is_blocked(ip: IPAddress) -> bool:
    """True for every address no public media host has: loopback, private, link-local, multicast, ..."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None:
            return True  # tunnels to an address we cannot check
        embedded = _embedded_v4(ip)
        if embedded is not None:
            return is_blocked(embedded)
    elif any(ip in net for net in _EXTRA_BLOCKED_V4):
        return True
    blocked = (
        not ip.is_global
        or ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_reserved
        or ip.is_unspecified
    )
    if isinstance(ip, ipaddress.IPv6Address):
        blocked = blocked or ip.is_site_local
    return blocked


def _parse_allow_list(allow_hosts: Sequence[str]) -> tuple[set[str], list[IPNetwork]]:
    names: set[str] = set()
    nets: list[IPNetwork] = []
    for entry in allow_hosts:
        entry = entry.strip()
        if not entry:
            continue
        try:
            nets.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(_normalise_host(entry))
    return names, nets


def _in_nets(ip: IPAddress, nets: Sequence[IPNetwork]) -> bool:
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and (embedded := _embedded_v4(ip)) is not None:
        candidates.append(embedded)
    return any(c.version == net.version and c in net for c in candidates for net in nets)


def _normalise_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id (fe80::1%eth0)


def resolve_checked(
    url: str, allow_hosts: Sequence[str], resolver: Resolver = socket.getaddrinfo
) -> CheckedTarget:
    """Resolve the URL's host once, check every address, and say which one to connect to.

    Raises MediaError(FORBIDDEN_URI) for a blocked address, INVALID_EVENT for a URL without a usable host,
    FETCH_FAILED when the name does not resolve.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise MediaError(ErrorCode.INVALID_EVENT, f"malformed URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if not host:
        raise MediaError(ErrorCode.INVALID_EVENT, "URL has no host")
    host = _normalise_host(host)
    if port is None:
        port = _DEFAULT_PORTS.get(scheme, 0)

    try:
        infos = resolver(host, port, 0, socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise MediaError(ErrorCode.FETCH_FAILED, f"cannot resolve host {host!r}: {exc}") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        try:
            ip = _ip(str(info[4][0]))
        except ValueError:
            continue
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise MediaError(ErrorCode.FETCH_FAILED, f"host {host!r} resolved to no IP address")

    names, nets = _parse_allow_list(allow_hosts)
    host_allowed = host in names
    for ip in addresses:
        if host_allowed or not is_blocked(ip):
            continue
        if _in_nets(ip, nets):
            continue
        # One blocked answer taints the name: a mix of public and private addresses is a rebinding trick.
        raise MediaError(ErrorCode.FORBIDDEN_URI, f"host {host!r} resolves to blocked address {ip}")
    return CheckedTarget(scheme=scheme, host=host, port=port, addresses=tuple(str(ip) for ip in addresses))

