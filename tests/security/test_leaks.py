"""Catalogue: Information leaks. Nothing of the host, the daemon or another tenant is visible."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from sandbox_client import ErrorKind, SandboxClient, Step
from tests.conftest import ROOTFS
from tests.security.conftest import CANARY_SECRET, DAEMON_SECRETS, MARKER, execute, js, probe

RUNNER_ENV = {
    "PATH": "/usr/local/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "NODE_ENV": "production",
}

SURROUNDINGS = js(r"""
module.exports = async () => {
  const child = cp.spawnSync(process.execPath,
    ['-e', 'process.stdout.write(require("fs").readFileSync("/proc/self/environ", "utf8"))']);
  const mountinfo = fs.readFileSync('/proc/self/mountinfo', 'utf8').trim().split('\n')
    .map((line) => { const f = line.split(' '); return { root: f[3], point: f[4] }; });
  return {
    env: { ...process.env },
    initEnviron: fs.readFileSync('/proc/1/environ', 'utf8'),
    childEnviron: child.stdout.toString(),
    initCmdline: fs.readFileSync('/proc/1/cmdline', 'utf8'),
    argv: process.argv,
    execArgv: process.execArgv,
    title: process.title,
    hostname: os.hostname(),
    etcHostname: fs.readFileSync('/etc/hostname', 'utf8'),
    hosts: fs.readFileSync('/etc/hosts', 'utf8'),
    passwd: fs.readFileSync('/etc/passwd', 'utf8'),
    user: os.userInfo().username,
    homedir: os.homedir(),
    mountinfo,
    cgroup: fs.readFileSync('/proc/self/cgroup', 'utf8').trim().split('\n')
      .map((line) => line.split(':').slice(2).join(':')),
  };
};
""")


def _environ(variables: dict[str, str]) -> str:
    return "".join(f"{key}={value}\0" for key, value in variables.items())


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("env", RUNNER_ENV),
        ("initEnviron", _environ(RUNNER_ENV)),
        ("childEnviron", _environ(RUNNER_ENV)),
        ("initCmdline", "/usr/local/bin/node\0/sandboxd/runner.js\0"),
        ("argv", ["/usr/local/bin/node", "/sandboxd/runner.js"]),
        ("execArgv", []),
        ("title", "/usr/local/bin/node"),  # the daemon's NODE_OPTIONS=--title=... did not reach it
    ],
)
async def test_environment_is_only_what_the_runner_sets(
    client: SandboxClient, key: str, expected: Any
) -> None:
    seen = await probe(client, "surroundings", SURROUNDINGS)
    assert seen[key] == expected


async def test_no_daemon_secret_or_setting_appears_anywhere_the_step_looked(
    client: SandboxClient,
) -> None:
    seen = json.dumps(await probe(client, "surroundings", SURROUNDINGS))
    for name, value in DAEMON_SECRETS.items():
        assert name not in seen
        assert value not in seen
    for setting in ("SANDBOXD_", "AWS_", "ECS_", "500000", "uid_base"):
        assert setting not in seen
    assert CANARY_SECRET not in seen


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("hostname", "sandbox"),
        ("etcHostname", Path(f"{ROOTFS}/etc/hostname").read_text()),
        ("hosts", Path(f"{ROOTFS}/etc/hosts").read_text()),
        ("passwd", Path(f"{ROOTFS}/etc/passwd").read_text()),
        ("user", "sandbox"),
        ("homedir", "/tmp"),
    ],
)
async def test_host_identity_is_generic(client: SandboxClient, key: str, expected: Any) -> None:
    seen = await probe(client, "surroundings", SURROUNDINGS)
    assert seen[key] == expected


async def test_mountinfo_shows_only_the_jails_own_mounts(client: SandboxClient) -> None:
    seen = await probe(client, "surroundings", SURROUNDINGS)
    points = sorted(mount["point"] for mount in seen["mountinfo"])
    assert points == [
        "/",
        "/dev/null",
        "/dev/random",
        "/dev/urandom",
        "/dev/zero",
        "/proc",
        "/tmp",
    ]
    # The image's own path is the one host path a jail learns; it holds nothing secret.
    roots = {mount["root"] for mount in seen["mountinfo"]}
    assert roots <= {"/", ROOTFS, "/null", "/zero", "/random", "/urandom"}


async def test_cgroup_paths_reveal_nothing_of_the_host(client: SandboxClient) -> None:
    seen = await probe(client, "surroundings", SURROUNDINGS)
    # The jail is the root of its own cgroup namespace: no daemon pid, task id or host path.
    assert set(seen["cgroup"]) == {"/"}


# --- another tenant, at the same time ------------------------------------------------------------

SECRET_A = f"tenant-a-secret-{MARKER}"

HOLDER = js(r"""
module.exports = async (ctx) => {
  fs.writeFileSync('/tmp/secret-of-a', ctx.credentials.apiKey);
  fs.writeFileSync('/tmp/input-of-a', JSON.stringify(ctx.input));
  const abstract = net.createServer((s) => s.end(ctx.credentials.apiKey));
  await new Promise((resolve) => abstract.listen('\0' + MARKER + '-tenant-a', resolve));
  const tcp = net.createServer((s) => s.end(ctx.credentials.apiKey));
  await new Promise((resolve) => tcp.listen(47123, '127.0.0.1', resolve));
  spawnMarked('tenant-a', 'setInterval(() => {}, 1000)');
  const uid = fs.readFileSync('/proc/self/uid_map', 'utf8').trim().split(/\s+/)[1];
  console.log('ready ' + uid);
  await new Promise(() => {});  // holds all of it until the test cancels the execution
};
""")

SNOOPER = js(r"""
module.exports = async (ctx) => {
  const out = {};
  out.pids = fs.readdirSync('/proc').filter((name) => /^\d+$/.test(name));
  out.tmp = fs.readdirSync('/tmp');
  out.readSecret = attempt(() => fs.readFileSync('/tmp/secret-of-a'));
  out.abstract = await connectOutcome({ path: '\0' + MARKER + '-tenant-a' });
  out.tcp = await connectOutcome({ host: '127.0.0.1', port: 47123 });
  out.context = JSON.stringify(ctx);
  out.environ = fs.readFileSync('/proc/1/environ', 'utf8');
  out.uid = fs.readFileSync('/proc/self/uid_map', 'utf8').trim().split(/\s+/)[1];
  return out;
};
""")


async def _snoop_while_a_holds_its_secrets(client: SandboxClient) -> tuple[dict[str, Any], str]:
    execution_id = f"{MARKER}-tenant-a"
    holder = client.execute(
        tenant_id="sec-tenant-a",
        steps=[Step("hold", HOLDER)],
        input={"secret": SECRET_A},
        credentials={"apiKey": SECRET_A},
        execution_id=execution_id,
    )
    a_uid = ""
    async for event in holder:
        if event.HasField("log") and event.log.text.startswith("ready "):
            a_uid = event.log.text.split()[1]
            break
    snooped = await execute(client, SNOOPER, tenant="sec-tenant-b", input={"mine": "b"})
    assert await client.cancel("sec-tenant-a", execution_id)
    kinds = [
        ErrorKind.from_proto(event.execution_finished.error_kind)
        async for event in holder
        if event.HasField("execution_finished")
    ]
    assert kinds == [ErrorKind.CANCELLED]
    return snooped.value, a_uid


_SNOOPED: dict[str, Any] = {}


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("pids", ["1"]),
        ("tmp", []),
        ("readSecret", "ENOENT"),
        ("abstract", "ECONNREFUSED"),
        ("tcp", "ECONNREFUSED"),
    ],
)
async def test_a_concurrent_tenants_files_sockets_and_processes_are_unreachable(
    client: SandboxClient, key: str, expected: Any
) -> None:
    if not _SNOOPED:
        _SNOOPED["seen"], _SNOOPED["a_uid"] = await asyncio.wait_for(
            _snoop_while_a_holds_its_secrets(client), 60
        )
    assert _SNOOPED["seen"][key] == expected


async def test_a_concurrent_tenants_input_and_credentials_are_nowhere(
    client: SandboxClient,
) -> None:
    if not _SNOOPED:
        _SNOOPED["seen"], _SNOOPED["a_uid"] = await _snoop_while_a_holds_its_secrets(client)
    seen = _SNOOPED["seen"]
    assert SECRET_A not in json.dumps(seen)
    assert json.loads(seen["context"])["input"] == {"mine": "b"}
    assert json.loads(seen["context"])["credentials"] == {}
    # Two jails alive at once never share a host uid.
    assert _SNOOPED["a_uid"] not in ("", seen["uid"])


async def test_own_credentials_are_redacted_from_logs_and_errors(client: SandboxClient) -> None:
    secret = f"s3cr3t-{MARKER}"
    code = """
    module.exports = async (ctx) => {
      console.log('key is ' + ctx.credentials.apiKey);
      console.log(JSON.stringify(ctx.credentials));
      console.log(Buffer.from(ctx.credentials.apiKey).toString('base64'));
      throw new Error('failed with ' + ctx.credentials.apiKey);
    };
    """
    outcome = await execute(client, code, credentials={"apiKey": secret})
    texts = [log.text for log in outcome.logs] + [outcome.message]
    assert all(secret not in text for text in texts)
    assert texts[0] == "key is [REDACTED]"
    assert outcome.message == "Error: failed with [REDACTED]"
