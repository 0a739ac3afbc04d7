"""Catalogue: Privilege. No capabilities, no_new_privs, seccomp, an unprivileged host uid.

System calls that Node cannot make (unshare, setns, ptrace, process_vm_readv, bpf, keyctl,
perf_event_open, userfaultfd, kexec, modules, 32-bit and x32 entry, other socket families,
TIOCSTI, personality) are proven refused by the same compiled policy in tests/jail/test_seccomp.py;
here, what a step can reach through Node.
"""

from __future__ import annotations

from typing import Any

import pytest

from sandbox_client import SandboxClient
from tests.security.conftest import POOL_MAX, SECURITY_UID_BASE, execute, js, probe

STATUS = js(r"""
function status(pid) {
  const fields = {};
  for (const line of fs.readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const at = line.indexOf(':');
    if (at > 0) fields[line.slice(0, at)] = line.slice(at + 1).trim();
  }
  return fields;
}
module.exports = async () => {
  const child = spawnMarked('status', 'setInterval(() => {}, 1000)');
  await new Promise((resolve) => child.on('spawn', resolve));
  const out = { runner: status('self'), child: status(child.pid) };
  child.kill('SIGKILL');
  return out;
};
""")

ZERO_CAPS = "0000000000000000"


@pytest.mark.parametrize("process", ["runner", "child"])
@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("CapInh", ZERO_CAPS),
        ("CapPrm", ZERO_CAPS),
        ("CapEff", ZERO_CAPS),
        ("CapBnd", ZERO_CAPS),
        ("CapAmb", ZERO_CAPS),
        ("NoNewPrivs", "1"),
        ("Seccomp", "2"),  # SECCOMP_MODE_FILTER
        ("Seccomp_filters", "1"),
    ],
)
async def test_no_capabilities_no_new_privs_and_seccomp_filter(
    client: SandboxClient, process: str, field: str, expected: str
) -> None:
    status = await probe(client, "status", STATUS)
    assert status[process][field] == expected


IDS = js(r"""
const map = (name) => fs.readFileSync('/proc/self/' + name, 'utf8').trim().split(/\s+/).map(Number);
module.exports = async () => {
  const stat = fs.readFileSync('/proc/self/stat', 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return {
    uidMap: map('uid_map'),
    gidMap: map('gid_map'),
    ids: [process.getuid(), process.geteuid(), process.getgid(), process.getegid()],
    groups: process.getgroups(),
    imageOwner: [fs.statSync('/usr/local/bin/node').uid, fs.statSync('/etc/passwd').gid],
    tmpOwner: [fs.statSync('/tmp').uid, fs.statSync('/tmp').gid],
    session: { pid: process.pid, sid: Number(fields[3]), ttyNr: Number(fields[4]) },
  };
};
""")


async def test_jail_user_maps_to_one_unprivileged_host_uid_of_the_daemons_range(
    client: SandboxClient,
) -> None:
    seen = await probe(client, "ids", IDS)
    inside, outside, count = seen["uidMap"]
    assert (inside, count) == (1000, 1)
    assert SECURITY_UID_BASE <= outside < SECURITY_UID_BASE + POOL_MAX
    assert seen["gidMap"] == [1000, outside, 1]


async def test_runner_runs_as_the_jail_user_without_host_groups(client: SandboxClient) -> None:
    seen = await probe(client, "ids", IDS)
    assert seen["ids"] == [1000, 1000, 1000, 1000]
    assert seen["groups"] == [1000]


async def test_host_root_is_not_mapped_so_its_files_belong_to_nobody(
    client: SandboxClient,
) -> None:
    seen = await probe(client, "ids", IDS)
    assert seen["imageOwner"] == [65534, 65534]  # the overflow ids: root is not in the map
    assert seen["tmpOwner"] == [1000, 1000]


async def test_runner_leads_its_own_session_without_a_controlling_terminal(
    client: SandboxClient,
) -> None:
    seen = await probe(client, "ids", IDS)
    assert seen["session"] == {"pid": 1, "sid": 1, "ttyNr": 0}


ESCALATIONS = js(r"""
module.exports = async () => {
  const out = {};
  out.setuid = attempt(() => process.setuid(0));
  out.seteuid = attempt(() => process.seteuid(0));
  out.setgid = attempt(() => process.setgid(0));
  out.setegid = attempt(() => process.setegid(0));
  out.setgroups = attempt(() => process.setgroups([0]));
  out.initgroups = attempt(() => process.initgroups('root', 0));
  out.spawnAsRoot = codeOf(cp.spawnSync(process.execPath, ['-e', '0'], { uid: 0 }).error);
  out.spawnAsRootGroup = codeOf(cp.spawnSync(process.execPath, ['-e', '0'], { gid: 0 }).error);
  out.raisePriority = attempt(() => os.setPriority(0, -10));
  out.lowerPriority = attempt(() => os.setPriority(0, 10));
  out.oomImmunity = attempt(() => fs.writeFileSync('/proc/self/oom_score_adj', '-1000'));
  out.oomVolunteer = attempt(() => fs.writeFileSync('/proc/self/oom_score_adj', '500'));
  fs.writeFileSync('/tmp/mine', '');
  out.chownToRoot = attempt(() => fs.chownSync('/tmp/mine', 0, 0));
  out.chownToSelf = attempt(() => fs.chownSync('/tmp/mine', 1000, 1000));
  out.setuidBit = attempt(() => fs.chmodSync('/tmp/mine', 0o4755));
  out.setuidBitKept = (fs.statSync('/tmp/mine').mode & 0o4000) !== 0;
  out.privilegedPort = await attemptAsync(() => new Promise((resolve, reject) => {
    const server = net.createServer().on('error', reject);
    server.listen(80, '127.0.0.1', () => server.close(resolve));
  }));
  out.unprivilegedPort = await attemptAsync(() => new Promise((resolve, reject) => {
    const server = net.createServer().on('error', reject);
    server.listen(8080, '127.0.0.1', () => server.close(resolve));
  }));
  out.stillRunning = true;
  return out;
};
""")


@pytest.mark.parametrize(
    ("attack", "expected"),
    [
        ("setuid", "EPERM"),
        ("seteuid", "EPERM"),
        ("setgid", "EPERM"),
        ("setegid", "EPERM"),
        ("setgroups", "EPERM"),
        ("initgroups", "EPERM"),
        ("spawnAsRoot", "EPERM"),
        ("spawnAsRootGroup", "EPERM"),
        ("raisePriority", "EACCES"),
        ("lowerPriority", "OK"),
        ("oomImmunity", "EACCES"),
        ("oomVolunteer", "OK"),
        ("chownToRoot", "EINVAL"),  # uid 0 has no mapping in the jail's namespace
        ("chownToSelf", "OK"),
        # chmod succeeds, but nosuid on /tmp makes the bit meaningless at exec (and noexec too).
        ("setuidBit", "OK"),
        ("setuidBitKept", True),
        ("privilegedPort", "EACCES"),
        ("unprivilegedPort", "OK"),
        ("stillRunning", True),  # every refusal was an errno, none killed the runner
    ],
)
async def test_privilege_escalations_are_refused(
    client: SandboxClient, attack: str, expected: Any
) -> None:
    outcomes = await probe(client, "escalations", ESCALATIONS)
    assert outcomes[attack] == expected


async def test_only_the_jails_own_processes_are_visible_to_ptrace_like_access(
    client: SandboxClient,
) -> None:
    # ptrace and process_vm_readv are refused by seccomp (tests/jail/test_seccomp.py); what a
    # step can still name through /proc is its own pid namespace: the runner and its children.
    code = js(r"""
    module.exports = async () => {
      const child = spawnMarked('ptrace', 'setInterval(() => {}, 1000)');
      await new Promise((resolve) => child.on('spawn', resolve));
      const pids = fs.readdirSync('/proc').filter((name) => /^\d+$/.test(name)).map(Number);
      child.kill('SIGKILL');
      return { pids: pids.sort((a, b) => a - b), child: child.pid };
    };
    """)
    seen = (await execute(client, code)).value
    assert seen["pids"] == [1, seen["child"]]
