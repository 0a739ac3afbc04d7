"""Host names and IP literals as a client writes them, in one canonical form.

Both the allowlist and every request go through `parse_host`, so "API.Example.com.", "bücher.de"
and "xn--bcher-kva.de" compare equal, and every spelling of an IPv4 address that Node's URL parser,
curl or `inet_aton` accept ("2130706433", "0177.0.0.1", "0x7f.1", "127.1") becomes the address it
means. Such spellings are never sent to DNS: they are addresses, checked as addresses.
"""

from __future__ import annotations

import ipaddress
import re

import idna

from sandboxd.egress.addresses import IPAddress

Host = str | IPAddress  # a canonical lowercase ASCII name, or an address

MAX_NAME_LENGTH = 253
# Letters, digits, hyphens, and the underscore that real service names (_dmarc, SRV-style) carry.
_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_IPV4_PART = re.compile(r"^(0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*)$")
_NUMBER = re.compile(r"^([0-9]+|0[xX][0-9a-fA-F]*)$")


class HostError(ValueError):
    """Text that is neither a valid host name nor an IP address."""


def parse_host(text: str) -> Host:
    """The canonical form of a host, without brackets around IPv6 addresses."""
    if text.startswith("[") and text.endswith("]"):
        return _parse_ipv6(text[1:-1])
    if ":" in text:
        return _parse_ipv6(text)
    address = parse_ipv4(text)
    if address is not None:
        return address
    return _parse_name(text)


def format_host(host: Host) -> str:
    """The host as it goes into an authority (`host:port`): IPv6 addresses in brackets."""
    if isinstance(host, ipaddress.IPv6Address):
        return f"[{host}]"
    return str(host)


def parse_ipv4(text: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address `text` means (the WHATWG URL rules), None when it is a name.

    A host whose last label is a number is an IPv4 address or invalid, never a name: that is how
    browsers and Node decide, so "1.2.3.256" and "example.0x10" are refused rather than looked up.
    """
    parts = text.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not _NUMBER.match(parts[-1]):
        return None
    if len(parts) > 4 or not all(_IPV4_PART.match(part) for part in parts):
        raise HostError(f"host {text!r} ends in a number but is not an IPv4 address")
    numbers = [_ipv4_number(part) for part in parts]
    last_limit = 256 ** (5 - len(numbers))
    if any(number > 255 for number in numbers[:-1]) or numbers[-1] >= last_limit:
        raise HostError(f"host {text!r} is an IPv4 address out of range")
    value = numbers[-1]
    for index, number in enumerate(numbers[:-1]):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _ipv4_number(part: str) -> int:
    if part[:2] in ("0x", "0X"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part[1:], 8)
    return int(part)


def _parse_ipv6(text: str) -> ipaddress.IPv6Address:
    if "%" in text:
        raise HostError(f"IPv6 address {text!r} has a zone index")
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        raise HostError(f"{text!r} is not an IPv6 address") from None


def _parse_name(text: str) -> str:
    name = text[:-1] if text.endswith(".") else text
    if not name.isascii():
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as error:
            raise HostError(f"host {text!r} is not a valid name: {error}") from None
    name = name.lower()
    if len(name) > MAX_NAME_LENGTH or not all(_LABEL.match(label) for label in name.split(".")):
        raise HostError(f"host {text!r} is not a valid name")
    return name
