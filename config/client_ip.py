"""Who sent a request: the client's IP address, behind trusted proxies or not.

With `TRUSTED_PROXY_COUNT = 0` (the default) it is REMOTE_ADDR and X-Forwarded-For is
ignored: anyone can write that header. With n proxies in front (a load balancer, a CDN and
a load balancer...), each appends the address it received the request from, so the client
is the n-th address from the right: what the outermost trusted proxy saw. Whatever a client
puts in the header itself stays to the left of it. The proxies must not be reachable around
each other, or a client could skip one and choose its own address.
"""

from __future__ import annotations

import ipaddress

from django.conf import settings
from django.http import HttpRequest

UNKNOWN = "unknown"


def _address(value: str) -> str | None:
    try:
        parsed = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    # An IPv4 client of a dual-stack socket arrives as ::ffff:a.b.c.d.
    if isinstance(parsed, ipaddress.IPv6Address) and parsed.ipv4_mapped is not None:
        return str(parsed.ipv4_mapped)
    return str(parsed)


def client_ip(request: HttpRequest) -> str:
    """The client's address (also django-axes' AXES_CLIENT_IP_CALLABLE)."""
    remote = _address(str(request.META.get("REMOTE_ADDR") or ""))
    hops = int(settings.TRUSTED_PROXY_COUNT)
    if hops > 0:
        header = str(request.META.get("HTTP_X_FORWARDED_FOR") or "")
        forwarded = [part.strip() for part in header.split(",") if part.strip()]
        if forwarded:
            # Fewer entries than proxies: the request skipped the outer ones; the leftmost
            # is then the address of whoever reached the first proxy that wrote the header.
            seen = forwarded[-hops] if len(forwarded) >= hops else forwarded[0]
            address = _address(seen)
            if address is not None:
                return address
    return remote or UNKNOWN


def client_network(request: HttpRequest) -> str:
    """What one client is counted as: its IPv4 address, or its IPv6 /64 (one subscriber's
    network: a client can pick any address inside it)."""
    address = client_ip(request)
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:  # UNKNOWN
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{parsed}/64", strict=False))
    return address
