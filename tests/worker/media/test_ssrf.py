"""The SSRF guard, with a fake resolver: which answers are blocked, and what the allow-list lets through."""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from worker.core.errors import ErrorCode, MediaError
from worker.media.ssrf import resolve_checked


def resolver_for(*addresses: str) -> Callable[..., Sequence[tuple[Any, ...]]]:
    """A getaddrinfo stand-in that answers every name with `addresses`."""

    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        out = []
        for address in addresses:
            family = socket.AF_INET6 if ":" in address else socket.AF_INET
            sockaddr = (address, port, 0, 0) if family == socket.AF_INET6 else (address, port)
            out.append((family, socket.SOCK_STREAM, 6, "", sockaddr))
        return out

    return resolve


BLOCKED = [
    "127.0.0.1", "127.8.9.10", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1",
    "169.254.169.254",          # cloud metadata
    "169.254.0.1", "100.64.0.1", "0.0.0.0", "224.0.0.1", "239.255.255.250", "240.0.0.1",
    "255.255.255.255", "198.18.0.1", "192.0.0.170",
    "::1", "::", "fe80::1", "fc00::1", "fd12:3456::1", "ff02::1",
    "::ffff:127.0.0.1", "::ffff:169.254.169.254", "::ffff:10.0.0.1",   # IPv4-mapped
    "::127.0.0.1",                                                     # IPv4-compatible
    "64:ff9b::a9fe:a9fe",                                              # NAT64 of 169.254.169.254
    "2002:7f00:1::1",                                                  # 6to4 of 127.0.0.1
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",                            # Teredo
]
PUBLIC = ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8", "2002:808:808::1"]


@pytest.mark.parametrize("address", BLOCKED)
def test_blocked_addresses_are_forbidden(address: str) -> None:
    with pytest.raises(MediaError) as err:
        resolve_checked("https://media.example/v.mp4", [], resolver=resolver_for(address))
    assert err.value.code is ErrorCode.FORBIDDEN_URI


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    resolve_checked("https://media.example/v.mp4", [], resolver=resolver_for(address))


def test_one_private_answer_taints_the_name() -> None:
    with pytest.raises(MediaError) as err:
        resolve_checked("http://media.example/", [], resolver=resolver_for("93.184.216.34", "10.0.0.5"))
    assert err.value.code is ErrorCode.FORBIDDEN_URI


def test_ip_literals_are_checked_with_the_real_resolver() -> None:
    for url in ("http://127.0.0.1:8080/x", "http://[::1]/x", "http://169.254.169.254/latest/meta-data/",
                "http://[::ffff:127.0.0.1]/x", "http://2130706433/x"):
        with pytest.raises(MediaError) as err:
            resolve_checked(url, [])
        assert err.value.code is ErrorCode.FORBIDDEN_URI, url


def test_allow_list_by_cidr() -> None:
    resolve = resolver_for("10.20.30.40")
    resolve_checked("http://minio.internal:9000/b/k", ["10.0.0.0/8"], resolver=resolve)
    resolve_checked("http://minio.internal:9000/b/k", ["10.20.30.40"], resolver=resolve)   # a bare IP is a /32
    with pytest.raises(MediaError):
        resolve_checked("http://minio.internal:9000/b/k", ["192.168.0.0/16"], resolver=resolve)
    # a mapped IPv6 answer matches an IPv4 CIDR
    resolve_checked("http://minio.internal/", ["10.0.0.0/8"], resolver=resolver_for("::ffff:10.1.1.1"))


def test_allow_list_by_hostname() -> None:
    resolve = resolver_for("192.168.7.7")
    resolve_checked("http://MinIO.Local./b/k", ["minio.local"], resolver=resolve)
    with pytest.raises(MediaError) as err:
        resolve_checked("http://other.local/b/k", ["minio.local"], resolver=resolve)
    assert err.value.code is ErrorCode.FORBIDDEN_URI


def test_resolve_checked_pins_the_checked_address() -> None:
    target = resolve_checked("https://cdn.example:8443/v.mp4", [], resolver=resolver_for("93.184.216.34"))
    assert (target.scheme, target.host, target.port, target.address) == (
        "https", "cdn.example", 8443, "93.184.216.34"
    )
    both = resolve_checked("http://cdn.example/", [], resolver=resolver_for("2606:4700::1", "93.184.216.34"))
    assert both.addresses == ("2606:4700::1", "93.184.216.34") and both.port == 80


def test_resolver_is_asked_once() -> None:
    calls: list[str] = []
    inner = resolver_for("93.184.216.34")

    def counting(host: str, port: int, *args: Any, **kwargs: Any) -> Sequence[tuple[Any, ...]]:
        calls.append(host)
        return inner(host, port)

    resolve_checked("http://cdn.example/a", [], resolver=counting)
    assert calls == ["cdn.example"]


def test_unresolvable_and_malformed() -> None:
    def fail(*args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(MediaError) as err:
        resolve_checked("http://nope.invalid/", [], resolver=fail)
    assert err.value.code is ErrorCode.FETCH_FAILED
    with pytest.raises(MediaError) as err:
        resolve_checked("http:///no-host", [])
    assert err.value.code is ErrorCode.INVALID_EVENT
    with pytest.raises(MediaError) as err:
        resolve_checked("http://cdn.example:99999/", [], resolver=resolver_for("8.8.8.8"))
    assert err.value.code is ErrorCode.INVALID_EVENT
