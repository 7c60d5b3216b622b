"""Where the workers may send a business's events: public addresses only, checked on the address
actually connected to, at every delivery (a name can resolve elsewhere the next time)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# IPv6 prefixes that carry an IPv4 address in their low 32 bits: NAT64 (RFC 6052, RFC 8215).
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
# Refused whatever this Python's `is_global` says of them: IPv4-compatible (::/96), SIIT
# (::ffff:0:0:0/96), site-local (fec0::/10), local-use NAT64 (64:ff9b:1::/48), and prefixes newer
# than some Pythons know (5f00::/8 SRv6 SIDs, 3fff::/20 documentation).
_NEVER = tuple(
    ipaddress.ip_network(n)
    for n in ("::/96", "::ffff:0:0:0/96", "fec0::/10", "64:ff9b:1::/48", "5f00::/8", "3fff::/20")
)


# Webhooks' names are looked up in threads of their own: a name whose DNS never answers holds a
# thread until the system's resolver gives up, and lookups tried pass after pass would otherwise
# take every thread of the loop's default pool, which the worker's lookups of Twilio's API need.
# A name already being looked up is not looked up again meanwhile (its askers share the answer),
# and one that did not resolve is not looked up again for a minute: one name holds one thread
# however often it is tried.
_LOOKUPS = ThreadPoolExecutor(max_workers=16, thread_name_prefix="webhook-dns")
_PENDING: dict[str, Future[list[Any]]] = {}
_FAILED: dict[str, float] = {}
FAILURE_KEPT_SECONDS = 60.0


def _lookup(name: str) -> Future[list[Any]]:
    """The lookup of `name` under way, or a new one."""
    pending = _PENDING.get(name)
    if pending is None:
        pending = _LOOKUPS.submit(socket.getaddrinfo, name, None, type=socket.SOCK_STREAM)
        _PENDING[name] = pending
        pending.add_done_callback(lambda done: _looked_up(name, done))
    return pending


def _looked_up(name: str, done: Future[list[Any]]) -> None:
    """In the lookup's thread: forget the lookup, and keep a failure for a while."""
    _PENDING.pop(name, None)
    if not done.cancelled() and done.exception() is not None:
        _FAILED[name] = time.monotonic() + FAILURE_KEPT_SECONDS


def _failed_lately(name: str) -> bool:
    """On the event loop: whether `name` failed to resolve in the last minute (failures older
    than that are dropped here, one thread at a time)."""
    now = time.monotonic()
    for stale in [n for n, until in list(_FAILED.items()) if until < now]:
        _FAILED.pop(stale, None)
    return _FAILED.get(name, 0.0) > now


class EgressRefused(Exception):
    """A webhook's host is not one the workers may send to; the message names the host only."""


@dataclass(frozen=True)
class Egress:
    """The rule: an address must be globally reachable (not loopback, private, link-local, CGNAT,
    multicast, reserved or unspecified, nor an IPv6 form of one: IPv4-mapped, NAT64, 6to4,
    Teredo), unless it is in `allowed` (EVENT_WEBHOOK_ALLOWED_NETWORKS, for development)."""

    allowed: tuple[IPNetwork, ...] = ()

    @classmethod
    def allowing(cls, networks: Iterable[str]) -> Egress:
        return cls(tuple(ipaddress.ip_network(n, strict=False) for n in networks))

    def permits(self, address: IPAddress) -> bool:
        if any(address in network for network in self.allowed if network.version == address.version):
            return True
        if isinstance(address, ipaddress.IPv6Address) and any(address in n for n in _NEVER):
            return False
        return all(candidate.is_global and not candidate.is_multicast for candidate in _forms(address))

    async def resolve(self, host: str, port: int) -> IPAddress:
        """The address to connect to for `host`: its first address, if every address it resolves
        to is permitted (a name with one private address among public ones is refused whole)."""
        try:
            literal = ipaddress.ip_address(host.strip("[]"))
        except ValueError:
            literal = None
        if literal is not None:
            addresses = [literal]
        else:
            name = host.lower().rstrip(".")
            if _failed_lately(name):
                raise EgressRefused(f"{host} does not resolve (tried less than a minute ago)")
            try:
                # Shielded: a delivery that runs out of time stops waiting, and leaves the lookup to
                # whoever else waits for it.
                found = await asyncio.shield(asyncio.wrap_future(_lookup(name)))
            except (socket.gaierror, UnicodeError):
                raise EgressRefused(f"{host} does not resolve") from None
            addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found]
        refused = [a for a in addresses if not self.permits(a)]
        if refused or not addresses:
            raise EgressRefused(f"{host} is not a public address")
        return addresses[0]


def _forms(address: IPAddress) -> list[IPAddress]:
    """The address, and the IPv4 address an IPv6 one stands for, if any."""
    forms: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        embedded = [address.ipv4_mapped, address.sixtofour, address.teredo[1] if address.teredo else None]
        if any(address in prefix for prefix in _NAT64):
            embedded.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
        forms.extend(e for e in embedded if e is not None)
    return forms
