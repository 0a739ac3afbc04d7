"""How long the daemon's event loop stalls while it takes the largest request it allows.

A daemon runs in this process with a probe on its event loop (a task that asks to wake every
millisecond and records how late it wakes); a client in another process (so that its own work
does not share this process's GIL), at nice 19 (a client on another host does not take the
daemon's cores), sends, one after the other (after `idle`, a baseline with
nothing sent: what the machine's scheduling alone costs):

- `largest`: the largest allowed request: a 64 MiB input in chunks, valid JSON nested to the
  depth limit, the most and largest credentials and config vars allowed, the largest code;
- `unary`: the largest allowed single message: an Execute whose input takes all but 1 KiB of
  max_request_bytes;
- `over`: a request message just over max_request_bytes: read, refused unparsed (INVALID_ARGUMENT
  naming the limit);
- `refused`: a 60 MB request message, refused by gRPC before it is read (RESOURCE_EXHAUSTED);
- `printed`: the most credentials allowed (64 of 1,000 characters, mostly punctuation: the most
  distinct forms to find, 66 automata), and a step that prints a line of nearly 1 MiB (the
  default log limit) with one of them in it: the line is scrubbed;
- `secret`: one credential of 64 KiB, the most allowed, whose URL-encoded form is 192 KiB, and a
  step that prints it URL-encoded in a line of nearly 1 MiB.

As under `sandboxd serve`, malloc is tuned (huge pages: `sandboxd.memory`; this benchmark starts
itself again with the tunables) and the daemon's heap is settled after its start
(`memory.settle`).

Each phase also runs a control: a process of its own that wakes every millisecond too. A stall
the control saw at the same time is the machine's (on this Firecracker VM the host sometimes
stops both vCPUs for up to 100 ms: steal), counted in `machine_stalls_over_10ms`;
`max_own_stall_ms` is the longest stall the control did not share.

Target: no single stall over 10 ms of the daemon's own. Run as root:
`python -m benchmarks.event_loop`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from dataclasses import replace

from sandboxd import config, memory
from sandboxd.daemon import Daemon

_PROBE_S = 0.001
# The client yields the CPU to the daemon and its jail, as a client on another host would: on 2
# cores, a client at full priority (uploading 64 MiB, hashing it) took the loop's core from it.
_CLIENT_NICENESS = 19
_IDLE_S = 3.0  # the baseline: the machine's own scheduling noise, nothing sent
_CLIENT = r"""
import asyncio, json, sys, time
import grpc
from sandbox_client import SandboxClient, Step
from sandbox_client.v1 import sandbox_pb2 as pb

target, which, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])

def largest_input():
    nested = "[" * 254 + "1" + "]" * 254  # 256 deep inside {"items": [...]}
    body = "[" + ",".join([json.dumps(["x" * 1000] * 64)] * 900 + [nested]) + "]"
    pad = 64 * 1024 * 1024 - len(body) - 64
    return ('{"pad":"' + "p" * pad + '","items":' + body + "}").encode()

async def main():
    if which == "largest":
        credentials = {f"k{i:02}": f"{i:02}" + "s" * 1000 for i in range(64)}
        config_vars = {f"v{i:03}": "c" * 400 for i in range(256)}
        code = "module.exports = async (ctx) => ctx.input.items.length //" + "x" * 1000000
        async with SandboxClient(target) as client:
            result = await client.run(tenant_id="bench", steps=[Step("count", code)],
                                      input_json=largest_input(), credentials=credentials,
                                      config_vars=config_vars)
        assert result == 901, result
    elif which in PRINTED:
        credentials, shown = PRINTED[which]
        code = ("module.exports = async (ctx) => { console.log('y'.repeat(%d) + %s); return 1 }"
                % (800_000, shown))
        async with SandboxClient(target) as client:
            events = [event async for event in client.execute(
                tenant_id="bench", steps=[Step("print", code)], credentials=credentials)]
        logs = [event.log.text for event in events if event.HasField("log")]
        assert [log[800_000:] for log in logs] == ["[REDACTED]"], [log[800_000:] for log in logs]
    else:
        size = SIZES[which]
        request = pb.ExecuteRequest(
            tenant_id="bench", input=b'"' + b"z" * size + b'"',
            steps=[pb.Step(name="s", code="module.exports = async (ctx) => ctx.input.length")])
        options = [("grpc.max_send_message_length", 80 << 20)]
        async with grpc.aio.insecure_channel(target, options=options) as channel:
            call = channel.unary_stream("/sandboxd.v1.SandboxService/Execute",
                                        request_serializer=lambda m: m.SerializeToString(),
                                        response_deserializer=pb.ExecuteResponse.FromString)
            try:
                events = [response.event async for response in call(request)]
                status = "OK"
            except grpc.aio.AioRpcError as error:
                status = error.code().name
        assert status == EXPECTED[which], status
        if which == "unary":
            assert json.loads(events[-2].step_finished.json) == size, events[-2]

SIZES = {"unary": limit - 1024, "over": limit + (512 << 10), "refused": 60_000_000}
PUNCTUATION = "!#$%&()*+,-./:;<=>?@[]^_{|}~" * 36
PRINTED = {
    "printed": ({f"k{i:02}": f"{i:02}" + PUNCTUATION[i : i + 998] for i in range(64)},
                "ctx.credentials.k40"),
    "secret": ({"k": "€/" * 13_107}, "encodeURIComponent(ctx.credentials.k)"),
}
EXPECTED = {"unary": "OK", "over": "INVALID_ARGUMENT", "refused": "RESOURCE_EXHAUSTED"}
asyncio.run(main())
"""


# The control: a process of its own that asks to wake every millisecond, as the probe does. A
# stall both saw at once is the machine's (the hypervisor took the vCPUs, the scheduler ran
# something else), not the daemon's: on this VM whole-machine gaps of 20-25 ms with no CPU
# sample at all (`perf`) come now and then, with or without a daemon.
_CONTROL = r"""
import json, signal, time
# Python leaves SIGINT ignored when it starts with it ignored (a background job of a shell
# without job control): the phase's end would never reach the control.
signal.signal(signal.SIGINT, signal.default_int_handler)
stalls = []
try:
    while True:
        began = time.monotonic()
        time.sleep(0.001)
        if time.monotonic() - began > 0.006:
            stalls.append((began, time.monotonic()))
except KeyboardInterrupt:  # the phase is over: SIGINT
    pass
print(json.dumps(stalls))
"""
_OVER_S = 0.010  # the target: no stall over 10 ms


async def _probe(stalls: list[tuple[float, float]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        began = time.monotonic()
        await asyncio.sleep(_PROBE_S)
        stalls.append((began, time.monotonic()))


def _shared(stall: tuple[float, float], control: list[tuple[float, float]]) -> bool:
    """Whether the control was stalled for at least half of `stall` too."""
    began, ended = stall
    overlap = sum(max(0.0, min(ended, e) - max(began, b)) for b, e in control)
    return overlap >= (ended - began) / 2


async def _control() -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CONTROL, stdout=asyncio.subprocess.PIPE
    )


async def _measure(target: str, which: str, limit: int) -> dict[str, float]:
    stalls: list[tuple[float, float]] = []
    stop = asyncio.Event()
    control = await _control()
    await asyncio.sleep(0.1)  # the control's interpreter is up
    probe = asyncio.create_task(_probe(stalls, stop))
    began = time.perf_counter()
    status = 0
    if which == "idle":
        await asyncio.sleep(_IDLE_S)
    else:
        client = await asyncio.create_subprocess_exec(
            "nice", "-n", str(_CLIENT_NICENESS), sys.executable, "-c", _CLIENT, target, which,
            str(limit),
        )  # fmt: skip
        status = await client.wait()
    elapsed = time.perf_counter() - began
    stop.set()
    await probe
    control.send_signal(signal.SIGINT)
    control_stalls = json.loads((await control.communicate())[0] or b"[]")
    if status != 0:
        raise SystemExit(f"the {which} client failed (exit {status})")
    lateness = sorted(((e - b - _PROBE_S), (b, e)) for b, e in stalls)[::-1]
    over = [stall for late, stall in lateness if late > _OVER_S]
    own = [late for late, stall in lateness if not _shared(stall, control_stalls)]
    return {
        "seconds": round(elapsed, 2),
        "max_stall_ms": round(lateness[0][0] * 1000, 2),
        "p99_stall_ms": round(lateness[len(lateness) // 100][0] * 1000, 2),
        "stalls_over_10ms": len(over),
        "machine_stalls_over_10ms": sum(_shared(stall, control_stalls) for stall in over),
        "max_own_stall_ms": round(max(own, default=0.0) * 1000, 2),
    }


async def _run(uid_base: int) -> dict[str, dict[str, float]]:
    settings = replace(config.load(None), listen="127.0.0.1:0", pool_size=1, uid_base=uid_base)
    daemon = Daemon(settings)
    await daemon.start()
    memory.settle()
    try:
        target = f"127.0.0.1:{daemon.port}"
        phases = ("idle", "largest", "unary", "over", "refused", "printed", "secret")
        limit = settings.max_request_bytes
        return {which: await _measure(target, which, limit) for which in phases}
    finally:
        await daemon.stop(grace=1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uid-base", type=int, default=630_000, help="host uids of the jails")
    args = parser.parse_args()
    memory.restart_with_malloc_tunables()
    print(json.dumps(asyncio.run(_run(args.uid_base)), indent=2))


if __name__ == "__main__":
    main()
