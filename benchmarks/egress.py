"""python -m benchmarks.egress [--gets N] [--bytes B]: HTTPS GETs through the egress proxy.

Compares, in one run, the same `fetch` loop in a bare `node` and in a sandboxd step: N sequential
HTTPS GETs of B bytes from a partner server, each timed inside the process (performance.now()
around fetch and arrayBuffer), so neither Node's start nor the jail's lease is in the figure; the
jail's path is CONNECT through the daemon's proxy, bare node connects directly.

Everything runs in a network namespace the benchmark makes (tests/egress/netns.py): the partner
listens on a documentation address there, and nothing can leave it. The first GET of a process
pays for loading fetch (undici) and a TLS handshake; it is reported apart from the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import trustme

from sandbox_client import SandboxClient, Step
from tests.egress.netns import Netns, NetnsLoop
from tests.egress.servers import Partner

PARTNER = "203.0.113.10"
TENANT = "bench"

# The same loop in both: `url` and `gets` are filled in.
LOOP = """
const times = [];
for (let i = 0; i < %(gets)d; i++) {
  const began = performance.now();
  const body = await (await fetch('%(url)s')).arrayBuffer();
  if (body.byteLength !== %(size)d) throw new Error('short body: ' + body.byteLength);
  times.push(performance.now() - began);
}
"""
BARE = "(async () => {" + LOOP + "process.stdout.write(JSON.stringify(times)); })();"
STEP = "module.exports = async () => {" + LOOP + "return times; };"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.egress")
    parser.add_argument("--gets", type=int, default=20, help="GETs per process (first one cold)")
    parser.add_argument("--bytes", type=int, default=1024 * 1024, help="size of each GET")
    parser.add_argument("--rounds", type=int, default=5, help="processes of each kind")
    args = parser.parse_args(argv)
    figures = measure(args.gets, args.bytes, args.rounds)
    print(json.dumps(figures, indent=2))
    return 0


def measure(gets: int, size: int, rounds: int) -> dict[str, float]:
    """Median ms of the first GET and of the later ones, bare node vs sandboxd, and ratios."""
    netns = Netns([PARTNER])
    try:
        ns = NetnsLoop(netns)
        try:
            return ns.run(_measure(gets, size, rounds), timeout=600)
        finally:
            ns.stop()
    finally:
        netns.remove()


async def _measure(gets: int, size: int, rounds: int) -> dict[str, float]:
    folder = Path(tempfile.mkdtemp(prefix="sandboxd-egress-bench-"))
    ca = trustme.CA()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(PARTNER).configure_cert(tls)
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = await asyncio.start_server(Partner().serve, PARTNER, 443, ssl=tls, backlog=256)
    url = f"https://{PARTNER}/bytes/{size}"
    daemon = _start_daemon(folder, ca_file)
    try:
        bare: list[list[float]] = []
        jailed: list[list[float]] = []
        async with SandboxClient(f"unix:{folder / 'sandboxd.sock'}") as client:
            for _ in range(rounds):  # interleaved, so drift hits both alike
                bare.append(await _bare(url, gets, size, ca_file))
                jailed.append(await _jailed(client, url, gets, size))
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        server.close()
    return _summary(bare, jailed)


def _start_daemon(folder: Path, ca_file: Path) -> subprocess.Popen[str]:
    config = folder / "sandboxd.toml"
    config.write_text(
        f'egress_public_cidrs = ["{PARTNER}/32"]\n'
        f'egress_ca_file = "{ca_file}"\n'
        f'[egress_allow]\n{TENANT} = ["{PARTNER}:443"]\n'
    )
    argv = [sys.executable, "-m", "sandboxd.cli", "serve", "--config", str(config)]
    argv += ["--listen", f"unix:{folder / 'sandboxd.sock'}", "--pool-size", "2"]
    daemon = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert daemon.stdout is not None
    if not daemon.stdout.readline().startswith("sandboxd: serving on "):
        daemon.kill()
        raise RuntimeError(f"the daemon did not start (exit {daemon.wait()})")
    return daemon


async def _bare(url: str, gets: int, size: int, ca_file: Path) -> list[float]:
    script = BARE % {"url": url, "gets": gets, "size": size}
    # The partner's CA the only way bare fetch takes one; it costs start time, not GET time.
    env = {"PATH": os.environ["PATH"], "NODE_EXTRA_CA_CERTS": str(ca_file)}
    process = await asyncio.create_subprocess_exec(
        "node", "-e", script, env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"bare node failed with {process.returncode}")
    times: list[float] = json.loads(out)
    return times


async def _jailed(client: SandboxClient, url: str, gets: int, size: int) -> list[float]:
    step = Step("get", STEP % {"url": url, "gets": gets, "size": size})
    times: list[float] = await client.run(
        tenant_id=TENANT, steps=[step], egress=[f"{PARTNER}:443"], timeout=300
    )
    return times


def _summary(bare: list[list[float]], jailed: list[list[float]]) -> dict[str, float]:
    def first(runs: list[list[float]]) -> float:
        return statistics.median(run[0] for run in runs)

    def warm(runs: list[list[float]]) -> float:
        return statistics.median(t for run in runs for t in run[1:])

    figures = {
        "bare_first_get_ms": first(bare),
        "sandboxd_first_get_ms": first(jailed),
        "bare_get_ms_p50": warm(bare),
        "sandboxd_get_ms_p50": warm(jailed),
    }
    figures["first_get_ratio"] = figures["sandboxd_first_get_ms"] / figures["bare_first_get_ms"]
    figures["get_ratio"] = figures["sandboxd_get_ms_p50"] / figures["bare_get_ms_p50"]
    return {name: round(value, 3) for name, value in figures.items()}


if __name__ == "__main__":
    sys.exit(main())
