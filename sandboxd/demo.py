"""The demo integration: the article's six steps, shaped like a customer's.

An ERP exports orders as XML to a partner's file store; the integration downloads the export
(``fetch``), parses it with the customer's own parser (``parse``), normalises amounts, currencies
and dates (``transform``), reports invalid orders (``validate``), posts the valid ones to the
partner's bulk order API with a stored token (``send_orders``) and summarises the run
(``summarise``). The steps are the JavaScript files in ``demo_steps/``; they pass data through
``context.steps`` inside one jail, so nothing is copied between steps (the article's Lambda + SQS
version took a minute for the same shape of work).

``run_demo`` runs it once against a daemon, with the partner's servers of ``demo_partner`` and an
egress allowlist naming them, and prints the events, timings and the partner's answer.
``demo_request`` gives tests and benchmarks the same integration without network: the export
arrives in the input and the request is only prepared.
"""

from __future__ import annotations

import json
import random
import sys
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, replace
from importlib import resources
from typing import Any, NamedTuple, TextIO
from xml.sax.saxutils import escape, quoteattr

from sandbox_client import SandboxClient, SandboxError, Step, format_event, result_of
from sandbox_client.v1 import sandbox_pb2
from sandboxd.config import Settings
from sandboxd.demo_partner import PARTNER_NETWORK, Partners

TENANT_ID = "demo"
STEP_NAMES = ("fetch", "parse", "transform", "validate", "send_orders", "summarise")
ORDER_COUNT = 200

# Units of the base currency (USD) per unit of each currency.
EXCHANGE_RATES = {"USD": 1.0, "EUR": 1.0842, "GBP": 1.2671, "CHF": 1.1034, "JPY": 0.006412}
CONFIG_VARS = {
    "baseCurrency": "USD",
    "exchangeRates": json.dumps(EXCHANGE_RATES),
    "endpoint": "https://api.partner.example/v2/orders:batchImport",
}
CREDENTIALS = {"apiToken": "demo-secret-token"}
# The ERP also bills in ZAR, for which the integration has no rate (validate reports those orders).
_ERP_RATES = {**EXCHANGE_RATES, "ZAR": 0.0546}

_TIMEOUT_S = 60.0
_RESULT_LINES = 40

# (id, name, email, country, currency)
_CUSTOMERS = (
    ("C-1001", "Müller & Söhne GmbH", "Einkauf@Mueller-Soehne.example", "DE", "EUR"),
    ("C-1002", "Northwind Traders", "orders@northwind.example", "US", "USD"),
    ("C-1003", "Brightwell & Co. Ltd", "purchasing@brightwell.example", "GB", "GBP"),
    ("C-1004", "Société Générale de Fournitures", "achats@sgf.example", "FR", "EUR"),
    ("C-1005", "山田商事株式会社", "order@yamada-shoji.example", "JP", "JPY"),
    ("C-1006", "Alpenglanz AG", "bestellung@alpenglanz.example", "CH", "CHF"),
    ("C-1007", "Contoso Hardware Inc.", "ap@contoso.example", "US", "USD"),
    ("C-1008", "Van der Berg Logistiek B.V.", "inkoop@vdberg.example", "NL", "EUR"),
    ("C-1009", "O'Brien Building Supplies", "accounts@obrien.example", "IE", "EUR"),
    ("C-1010", "Fabrikam <Europe> S.r.l.", "ordini@fabrikam.example", "IT", "EUR"),
    ("C-1011", "Tailspin Toys Ltd", "buying@tailspin.example", "GB", "GBP"),
    ("C-1012", "Kowalski i Synowie Sp. z o.o.", "zamowienia@kowalski.example", "PL", "EUR"),
    ("C-1013", "Wide World Importers", "po@wideworld.example", "US", "USD"),
)
# A new customer, billed in ZAR before anyone added a ZAR rate to the integration's config.
_NEW_CUSTOMER = ("C-1014", "Ubuntu Trading (Pty) Ltd", "orders@ubuntu-trading.example", "ZA", "ZAR")

# (sku, description, price in USD); descriptions with "<" are written as CDATA.
_PRODUCTS = (
    ("WID-0001", "Widget, standard", 4.20),
    ("WID-0002", "Widget, large <heavy duty>", 9.75),
    ("BLT-0610", "Bolts M6 x 40 & nuts (100 pcs)", 12.40),
    ("CBL-0002", "Cable 2 m <USB-C to USB-C>", 7.99),
    ("GLV-0100", "Work gloves, size L", 3.15),
    ("DRL-2000", "Cordless drill 18 V", 129.00),
    ("SAW-0450", "Hand saw 450 mm", 18.50),
    ("TPE-0050", "Duct tape 50 m", 6.80),
    ("LMP-0900", "LED work lamp 900 lm", 34.90),
    ("HLM-0001", 'Safety helmet "Pro"', 21.00),
    ("BOX-4030", "Storage box 40 x 30 cm", 11.25),
    ("PNT-0750", "Primer 0.75 l", 14.60),
)


class DemoRequest(NamedTuple):
    """What ``client.execute`` needs to run the demo integration."""

    steps: list[Step]
    input: dict[str, str]
    config_vars: dict[str, str]
    credentials: dict[str, str]


def demo_request(order_count: int = ORDER_COUNT) -> DemoRequest:
    """The demo integration without network: its six steps, the XML export as input, the
    request to the partner prepared but not sent, config vars, credentials."""
    return DemoRequest(
        steps=demo_steps(),
        input={"document": order_export(order_count)},
        config_vars={**CONFIG_VARS, "delivery": "prepare"},
        credentials=dict(CREDENTIALS),
    )


def demo_settings(settings: Settings, partners: Partners) -> Settings:
    """`settings` with what an operator would configure for the demo tenant to reach the
    partner: its allowlist, the partner names' addresses, those addresses treated as public
    (they are on loopback), and the partner's CA."""
    return replace(
        settings,
        egress_allow={**settings.egress_allow, TENANT_ID: list(partners.allowlist)},
        egress_static_hosts={**settings.egress_static_hosts, **partners.static_hosts},
        egress_public_cidrs=(*settings.egress_public_cidrs, PARTNER_NETWORK),
        egress_ca_file=partners.ca_file,
    ).validate()


def demo_steps() -> list[Step]:
    """The six steps, in order, read from the package's ``demo_steps/*.js``."""
    folder = resources.files("sandboxd") / "demo_steps"
    return [Step(name, (folder / f"{name}.js").read_text(encoding="utf-8")) for name in STEP_NAMES]


def order_export(order_count: int = ORDER_COUNT, seed: int = 2024) -> str:
    """A realistic ERP order export (the same for the same arguments).

    About one order in ten has a defect for the validate step to report: a missing email, a
    zero quantity, a currency without a rate, a day that does not exist, or no lines.
    """
    rng = random.Random(seed)
    orders = "".join(_order_xml(rng, number) for number in range(order_count))
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        "<!-- Exported by Acme ERP 7.2.1; do not edit by hand -->\n"
        f'<orderExport xmlns="urn:acme:erp:orders:2" generated="2024-05-31T23:59:59Z" '
        f'count="{order_count}">\n{orders}</orderExport>\n'
    )


def _order_xml(rng: random.Random, number: int) -> str:
    customer = _NEW_CUSTOMER if number % 53 == 11 else rng.choice(_CUSTOMERS)
    customer_id, name, email, country, currency = customer
    if number % 37 == 5:
        email = ""
    lines = "".join(_line_xml(rng, currency, number) for _ in range(rng.randint(1, 5)))
    notes = (
        "<notes>Deliver to dock 3 &#8211; call ahead</notes>" if rng.random() < 0.2 else "<notes/>"
    )
    return (
        f'  <order id="SO-{100_001 + number}" status="{rng.choice(("confirmed", "shipped"))}">\n'
        f"    <placedAt>{_order_date(rng, number)}</placedAt>\n"
        f"    <currency>{currency}</currency>\n"
        f"    <customer id={quoteattr(customer_id)}>\n"
        f"      <name>{escape(name)}</name>\n"
        f"      <email>{escape(email)}</email>\n"
        f"      <country>{country}</country>\n"
        "    </customer>\n"
        + ("    <lines/>\n" if number % 59 == 17 else f"    <lines>\n{lines}    </lines>\n")
        + f"    <shipping>{_price(rng.choice((0.0, 4.95, 9.90, 19.90)), currency)}</shipping>\n"
        f"    {notes}\n"
        "  </order>\n"
    )


def _line_xml(rng: random.Random, currency: str, number: int) -> str:
    sku, description, usd = rng.choice(_PRODUCTS)
    quantity = 0 if number % 41 == 7 else rng.randint(1, 24)
    text = f"<![CDATA[{description}]]>" if "<" in description else escape(description)
    return (
        f"      <line sku={quoteattr(sku)} quantity='{quantity}'>\n"
        f"        <description>{text}</description>\n"
        f"        <unitPrice>{_price(usd, currency)}</unitPrice>\n"
        "      </line>\n"
    )


def _price(usd: float, currency: str) -> str:
    """A USD price in ``currency`` as the ERP writes it (JPY without decimals)."""
    amount = usd / _ERP_RATES[currency]
    return f"{amount:.0f}" if currency == "JPY" else f"{amount:.2f}"


def _order_date(rng: random.Random, number: int) -> str:
    """The order date in one of the ERP's three formats; 31.02. for the defective ones."""
    if number % 47 == 13:
        return "31.02.2024"
    day, hour, minute = rng.randint(1, 31), rng.randint(6, 20), rng.randint(0, 59)
    match number % 3:
        case 0:
            offset = rng.choice(("Z", "+02:00", "-04:00", "+09:00"))
            return f"2024-05-{day:02d}T{hour:02d}:{minute:02d}:{rng.randint(0, 59):02d}{offset}"
        case 1:
            return f"2024-05-{day:02d}"
        case _:
            return f"{day:02d}.05.2024"


@dataclass(frozen=True, slots=True)
class _StepTime:
    step: str
    jail_ms: float  # the daemon's measure (StepFinished.usage)
    client_ms: float  # StepStarted to StepFinished, as the events arrived here
    result_bytes: int


class _Watch:
    """Prints each event as it arrives and times every step on the client's clock."""

    def __init__(self, out: TextIO) -> None:
        self._out = out
        self._started: dict[str, float] = {}
        self.steps: list[_StepTime] = []

    async def shown(
        self, events: AsyncIterable[sandbox_pb2.ExecutionEvent]
    ) -> AsyncIterator[sandbox_pb2.ExecutionEvent]:
        """``events``, each printed (with the client's step time) when it arrives."""
        async for event in events:
            note = self._observe(event, time.perf_counter())
            print(format_event(event) + note, file=self._out, flush=True)
            yield event

    def _observe(self, event: sandbox_pb2.ExecutionEvent, now: float) -> str:
        """Record step start and end times; return a note for the event's line."""
        match event.WhichOneof("event"):
            case "step_started":
                self._started[event.step_started.step] = now
            case "step_finished":
                done = event.step_finished
                client_ms = (now - self._started.get(done.step, now)) * 1000
                jail_ms = done.usage.duration_us / 1000
                self.steps.append(_StepTime(done.step, jail_ms, client_ms, done.result_bytes))
                return f"; client {client_ms:.1f} ms"
        return ""


async def run_demo(target: str, partners: Partners, *, out: TextIO = sys.stdout) -> int:
    """Run the demo integration once on the daemon at ``target`` (started with
    ``demo_settings``), against ``partners``; 0 on success, 1 on failure."""
    steps = demo_steps()
    print(_banner(target, partners), file=out)
    watch = _Watch(out)
    try:
        async with SandboxClient(target) as client:
            started = time.perf_counter()
            events = client.execute(
                tenant_id=TENANT_ID,
                steps=steps,
                config_vars={
                    **CONFIG_VARS,
                    "exportUrl": partners.export_url,
                    "endpoint": partners.import_url,
                },
                credentials=dict(CREDENTIALS),
                egress=partners.allowlist,
                timeout=_TIMEOUT_S,
            )
            result = await result_of(watch.shown(events))
            wall_s = time.perf_counter() - started
    except SandboxError as error:
        where = f" in step {error.step}" if error.step else ""
        print(f"demo failed: {error.kind.name}{where}: {error.message}", file=out)
        return 1
    print(f"\n{_report(watch.steps, wall_s, result)}", file=out)
    answer = result.get("partnerResponse") if isinstance(result, dict) else None
    print(f"\nthe partner API answered: {json.dumps(answer)}", file=out)
    for received in partners.received.requests:
        print(f"the partner API received: {json.dumps(received)}", file=out)
    return 0


def _banner(target: str, partners: Partners) -> str:
    return (
        f"sandboxd demo: {len(STEP_NAMES)} steps as tenant {TENANT_ID!r} on {target}\n"
        f"partner: {partners.export_url} ({ORDER_COUNT} orders as XML) and {partners.import_url}; "
        f"egress allowlist: {', '.join(partners.allowlist)}\n"
    )


def _report(steps: list[_StepTime], wall_s: float, result: Any) -> str:
    """The wall time, a table of the steps' times, and the final result (trimmed)."""
    total = _StepTime(
        "all steps",
        sum(step.jail_ms for step in steps),
        sum(step.client_ms for step in steps),
        sum(step.result_bytes for step in steps),
    )
    return "\n".join(
        [
            f"execution wall time (client): {wall_s * 1000:.1f} ms",
            "",
            f"{'step':<15}{'in jail':>10}{'client':>11}{'result':>12}",
            *(_row(step) for step in [*steps, total]),
            "",
            f"result of {STEP_NAMES[-1]}:",
            _trimmed(result),
        ]
    )


def _row(step: _StepTime) -> str:
    return (
        f"{step.step:<15}{step.jail_ms:>7.1f} ms{step.client_ms:>8.1f} ms"
        f"{step.result_bytes / 1024:>8.1f} KiB"
    )


def _trimmed(result: Any) -> str:
    """``result`` as indented JSON, cut after a screenful (the text is ASCII-escaped)."""
    if isinstance(result, bytes):
        return f"<{len(result)} bytes of binary>"
    lines = json.dumps(result, indent=2).splitlines()
    if len(lines) <= _RESULT_LINES:
        return "\n".join(lines)
    return "\n".join([*lines[:_RESULT_LINES], f"... ({len(lines) - _RESULT_LINES} more lines)"])
