"""The jail's seccomp policy, loaded for real into forked children.

Each test forks, installs the compiled program in the child, makes the calls there through
libc's syscall(), and sends the outcome back through a pipe as JSON. The child goes on running
after every refused call; a test that expects death checks the wait status instead.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import platform
import shutil
import signal
import socket
import struct
import termios
from collections.abc import Callable
from typing import Any

import pyseccomp
import pytest

from sandboxd.jail import seccomp
from sandboxd.jail.net import bring_up_loopback
from sandboxd.jail.seccomp import SeccompError

PROGRAM = seccomp.compile_policy()
NODE = shutil.which("node")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.syscall.argtypes = [ctypes.c_long] + [ctypes.c_ulong] * 6

CLONE_SIGHAND = 0x00000800  # without CLONE_VM the kernel answers EINVAL: a harmless probe
HIGH_BITS = 0xDEAD_BEEF_0000_0000

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a network namespace)")
needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")


def nr(name: str) -> int:
    number = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
    assert number >= 0, f"{name} does not exist on {platform.machine()}"
    return int(number)


def call(name: str, *args: int) -> int:
    """The raw syscall (missing arguments are zero): its result, or -errno."""
    result = int(_libc.syscall(nr(name), *args, *[0] * (6 - len(args))))
    return -ctypes.get_errno() if result == -1 else result


def run_filtered(check: Callable[[], Any]) -> tuple[int, Any]:
    """Run `check` in a forked child under the policy: (wait status, its JSON-able result)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            seccomp.install(PROGRAM)
            os.write(write_end, json.dumps({"result": check()}).encode())
        except BaseException as exc:
            os.write(write_end, json.dumps({"exception": repr(exc)}).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    data = _read_all(read_end)
    _, status = os.waitpid(pid, 0)
    reply = json.loads(data) if data else {}
    assert "exception" not in reply, reply["exception"]
    return status, reply.get("result")


def run_node(script: str, env: dict[str, str]) -> tuple[int, str]:
    """Exec node under the policy in a fresh network namespace with only `lo` up.

    The namespace keeps every packet on this machine even if a lookup went past /etc/hosts.
    """
    assert NODE is not None
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(write_end, 1)
            os.dup2(write_end, 2)
            if _libc.unshare(0x40000000) != 0:  # CLONE_NEWNET
                os._exit(90)
            bring_up_loopback()
            seccomp.install(PROGRAM)
            os.execve(NODE, [NODE, "-e", script], env)
        finally:
            os._exit(91)
    os.close(write_end)
    output = _read_all(read_end).decode()
    _, status = os.waitpid(pid, 0)
    return status, output


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def exited_cleanly(status: int) -> bool:
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


# --- compiling --------------------------------------------------------------------------------


def test_program_is_whole_bpf_instructions_within_kernel_limit() -> None:
    assert len(PROGRAM) % 8 == 0
    assert 0 < len(PROGRAM) // 8 <= 4096


def test_program_checks_the_architecture_first() -> None:
    # struct sock_filter: u16 code, u8 jt, u8 jf, u32 k. Load seccomp_data.arch (offset 4), then
    # compare it with AUDIT_ARCH_X86_64 / AUDIT_ARCH_AARCH64.
    load = struct.unpack_from("=HBBI", PROGRAM, 0)
    compare = struct.unpack_from("=HBBI", PROGRAM, 8)
    assert load == (0x20, 0, 0, 4)  # BPF_LD|BPF_W|BPF_ABS, k = offsetof(arch)
    assert compare[0] == 0x15  # BPF_JMP|BPF_JEQ|BPF_K
    assert compare[3] == {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[platform.machine()]


def test_compiles_for_aarch64_too() -> None:
    program = seccomp.compile_policy("aarch64")
    assert struct.unpack_from("=HBBI", program, 8)[3] == 0xC00000B7


def test_unsupported_architecture_is_refused() -> None:
    with pytest.raises(SeccompError, match=r"^compile policy: unsupported architecture 'ppc64le'"):
        seccomp.compile_policy("ppc64le")


def test_denied_list_and_policy_are_disjoint() -> None:
    allowed = {rule.syscall for rule in seccomp.POLICY}
    assert not allowed & {name for name, _ in seccomp.DENIED}


def test_every_rule_has_a_reason() -> None:
    assert all(rule.why for rule in seccomp.POLICY)
    assert all(why for _, why in seccomp.DENIED)


# --- installing -------------------------------------------------------------------------------


@pytest.mark.parametrize("program", [b"", b"\0" * 7, b"\0" * 8 * 4097])
def test_install_refuses_what_is_not_a_program(program: bytes) -> None:
    # Checked before any prctl, so this is safe in the test process itself.
    with pytest.raises(SeccompError, match=r"^load filter: not a BPF program"):
        seccomp.install(program)


def test_install_reports_the_kernel_refusal() -> None:
    def check() -> str:
        try:
            seccomp.install(b"\xff" * 8)  # an invalid opcode: the kernel refuses it
        except SeccompError as exc:
            return str(exc)
        return "installed"

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_end, check().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    message = _read_all(read_end).decode()
    os.waitpid(pid, 0)
    assert message == "load filter: [Errno 22] Invalid argument"


def test_status_shows_the_filter_and_no_new_privs() -> None:
    def check() -> list[str]:
        with open("/proc/self/status") as status:
            return [line.strip() for line in status if line.startswith(("Seccomp:", "NoNewPrivs"))]

    status, lines = run_filtered(check)
    assert exited_cleanly(status)
    assert sorted(lines) == ["NoNewPrivs:\t1", "Seccomp:\t2"]


# --- refused calls: EPERM, and the process goes on ----------------------------------------------


def test_every_denied_call_is_eperm_and_the_process_survives() -> None:
    native = pyseccomp.Arch.NATIVE
    names = [name for name, _ in seccomp.DENIED if pyseccomp.resolve_syscall(native, name) >= 0]
    # All arguments zero: a harmless (EFAULT/EINVAL or no-op) call even if it were let through.

    def check() -> dict[str, int]:
        return {name: call(name, 0, 0, 0, 0, 0, 0) for name in names}

    status, results = run_filtered(check)
    assert exited_cleanly(status)
    assert results == {name: -errno.EPERM for name in names}


def test_probed_calls_answer_enosys() -> None:
    names = ["clone3", "io_uring_setup", "io_uring_enter", "io_uring_register"]

    def check() -> dict[str, int]:
        return {name: call(name, 0, 0, 0, 0, 0, 0) for name in names}

    status, results = run_filtered(check)
    assert exited_cleanly(status)
    assert results == {name: -errno.ENOSYS for name in names}


@pytest.mark.parametrize(
    "flag",
    [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000],
    ids=["NEWNS", "NEWCGROUP", "NEWUTS", "NEWIPC", "NEWUSER", "NEWPID", "NEWNET"],
)
def test_clone_with_a_namespace_flag_is_eperm(flag: int) -> None:
    # CLONE_SIGHAND without CLONE_VM: were the call let through, the kernel would say EINVAL.
    def check() -> list[int]:
        return [
            call("clone", flag | CLONE_SIGHAND, 0, 0, 0, 0),
            call("clone", HIGH_BITS | flag | CLONE_SIGHAND, 0, 0, 0, 0),
        ]

    status, results = run_filtered(check)
    assert exited_cleanly(status)
    assert results == [-errno.EPERM, -errno.EPERM]


def test_clone_without_namespace_flags_reaches_the_kernel() -> None:
    def check() -> dict[str, int]:
        einval = call("clone", HIGH_BITS | CLONE_SIGHAND, 0, 0, 0, 0)
        child = os.fork()
        if child == 0:
            os._exit(7)
        return {"einval": einval, "child_exit": os.waitstatus_to_exitcode(os.waitpid(child, 0)[1])}

    status, results = run_filtered(check)
    assert exited_cleanly(status)
    assert results == {"einval": -errno.EINVAL, "child_exit": 7}


@pytest.mark.parametrize(
    ("request_", "high_bits"),
    [
        (termios.TIOCSTI, 0),
        (termios.TIOCSTI, HIGH_BITS),
        (termios.TIOCSTI, 0x1_0000_0000),
        (termios.TIOCLINUX, 0),
        (termios.TIOCLINUX, HIGH_BITS),
    ],
)
def test_terminal_injection_ioctls_are_eperm(request_: int, high_bits: int) -> None:
    def check() -> int:
        fd = os.open("/dev/null", os.O_RDWR)
        char = ctypes.c_char(b"x")
        return call("ioctl", fd, high_bits | request_, ctypes.addressof(char))

    status, result = run_filtered(check)
    assert exited_cleanly(status)
    assert result == -errno.EPERM


def test_ioctls_node_uses_still_work() -> None:
    def check() -> dict[str, int]:
        read_end, _ = os.pipe()
        value = ctypes.c_int(1)
        return {
            "FIONBIO": call("ioctl", read_end, termios.FIONBIO, ctypes.addressof(value)),
            "FIOCLEX": call("ioctl", read_end, termios.FIOCLEX, 0),
            "FIONREAD": call("ioctl", read_end, termios.FIONREAD, ctypes.addressof(value)),
            "TCGETS": call("ioctl", read_end, termios.TCGETS, ctypes.addressof(value)),
        }

    status, results = run_filtered(check)
    assert exited_cleanly(status)
    # TCGETS on a pipe reaches the kernel, which says "not a terminal".
    assert results == {"FIONBIO": 0, "FIOCLEX": 0, "FIONREAD": 0, "TCGETS": -errno.ENOTTY}


@pytest.mark.parametrize(
    ("family", "type_", "protocol"),
    [
        (socket.AF_PACKET, socket.SOCK_RAW, 0),
        (socket.AF_PACKET, socket.SOCK_DGRAM, 0),
        (socket.AF_VSOCK, socket.SOCK_STREAM, 0),
        (socket.AF_ALG, socket.SOCK_SEQPACKET, 0),
        (socket.AF_NETLINK, socket.SOCK_RAW, 9),  # NETLINK_AUDIT
        (socket.AF_NETLINK, socket.SOCK_RAW, 15),  # NETLINK_KOBJECT_UEVENT
        (socket.AF_NETLINK, socket.SOCK_RAW, 4),  # NETLINK_SOCK_DIAG
        (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
        (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6),
        (socket.AF_INET, 10, 0),  # SOCK_PACKET
        (15, socket.SOCK_RAW, 2),  # AF_KEY, PF_KEY_V2
        (30, socket.SOCK_RDM, 0),  # AF_TIPC
        (31, socket.SOCK_RAW, 0),  # AF_BLUETOOTH
        (44, socket.SOCK_RAW, 0),  # AF_XDP
        (HIGH_BITS | socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP),
    ],
)
def test_socket_families_outside_the_allowlist_are_eperm(
    family: int, type_: int, protocol: int
) -> None:
    def check() -> list[int]:
        return [
            call("socket", family, type_ | socket.SOCK_CLOEXEC, protocol),
            call("socketpair", family, type_, protocol, 0),
        ]

    status, results = run_filtered(check)
    assert exited_cleanly(status)
    assert results == [-errno.EPERM, -errno.EPERM]


@pytest.mark.parametrize(
    ("family", "type_", "protocol"),
    [
        (socket.AF_UNIX, socket.SOCK_STREAM, 0),
        (socket.AF_UNIX, socket.SOCK_DGRAM, 0),
        (socket.AF_UNIX, socket.SOCK_SEQPACKET, 0),
        (socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK, 0),
        (socket.AF_INET, socket.SOCK_DGRAM, 0),
        (socket.AF_INET6, socket.SOCK_STREAM, 0),
        (socket.AF_INET6, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK, 0),
        (socket.AF_NETLINK, socket.SOCK_RAW, 0),  # NETLINK_ROUTE, read by getifaddrs()
        # The kernel reads the family as an int, and so does the filter: still AF_INET.
        (HIGH_BITS | socket.AF_INET, socket.SOCK_STREAM, 0),
    ],
)
def test_allowed_socket_kinds_open(family: int, type_: int, protocol: int) -> None:
    def check() -> int:
        return call("socket", family, type_ | socket.SOCK_CLOEXEC, protocol)

    status, result = run_filtered(check)
    assert exited_cleanly(status)
    assert result >= 0


def test_socketpair_is_only_af_unix() -> None:
    def check() -> list[int]:
        pair = (ctypes.c_int * 2)()
        return [
            call("socketpair", socket.AF_UNIX, socket.SOCK_STREAM, 0, ctypes.addressof(pair)),
            call("socketpair", socket.AF_INET, socket.SOCK_STREAM, 0, ctypes.addressof(pair)),
        ]

    status, results = run_filtered(check)
    assert exited_cleanly(status)
    assert results == [0, -errno.EPERM]


def test_personality_allows_only_the_safe_values() -> None:
    addr_no_randomize, read_implies_exec = 0x0040000, 0x0400000

    def check() -> list[int]:
        return [
            call("personality", 0xFFFFFFFF),  # query: returns the current persona, PER_LINUX
            call("personality", addr_no_randomize),
            call("personality", read_implies_exec),
            call("personality", HIGH_BITS | addr_no_randomize),
        ]

    status, results = run_filtered(check)
    assert exited_cleanly(status)
    assert results == [0, -errno.EPERM, -errno.EPERM, -errno.EPERM]


def test_file_locks_are_eperm_other_fcntl_works() -> None:
    def check() -> dict[str, int]:
        fd = os.open("/dev/null", os.O_RDWR)
        lock = ctypes.create_string_buffer(32)  # struct flock, all zero: F_RDLCK of everything
        return {
            "F_GETFL": call("fcntl", fd, fcntl.F_GETFL) & os.O_ACCMODE,
            "F_SETLK": call("fcntl", fd, fcntl.F_SETLK, ctypes.addressof(lock)),
            "F_OFD_SETLK": call("fcntl", fd, fcntl.F_OFD_SETLK, ctypes.addressof(lock)),
            "F_SETLEASE": call("fcntl", fd, fcntl.F_SETLEASE, 0),
        }

    status, results = run_filtered(check)
    assert exited_cleanly(status)
    assert results == {
        "F_GETFL": os.O_RDWR,
        "F_SETLK": -errno.EPERM,
        "F_OFD_SETLK": -errno.EPERM,
        "F_SETLEASE": -errno.EPERM,
    }


def test_prctl_allows_thread_names_only_among_settings() -> None:
    pr_set_name, pr_set_dumpable, pr_set_seccomp, pr_set_mm = 15, 4, 22, 35

    def check() -> list[int]:
        name = ctypes.create_string_buffer(b"runner")
        return [
            call("prctl", pr_set_name, ctypes.addressof(name), 0, 0, 0),
            call("prctl", pr_set_dumpable, 1, 0, 0, 0),
            call("prctl", pr_set_seccomp, 1, 0, 0, 0),  # strict mode, were it let through
            call("prctl", pr_set_mm, 0, 0, 0, 0),
        ]

    status, results = run_filtered(check)
    assert exited_cleanly(status)
    assert results == [0, -errno.EPERM, -errno.EPERM, -errno.EPERM]


# --- killed: the foreign ABI --------------------------------------------------------------------


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the x32 ABI exists on x86_64 only")
def test_x32_syscall_kills_the_process_with_sigsys() -> None:
    x32_getpid = 0x40000000 | nr("getpid")

    def check() -> str:
        _libc.syscall(x32_getpid, 0, 0, 0, 0, 0, 0)
        return "survived"

    status, result = run_filtered(check)
    assert result is None
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGSYS
    assert seccomp.killed_by_policy(status)


def test_killed_by_policy_is_only_sigsys() -> None:
    sigkill = run_filtered(lambda: os.kill(os.getpid(), signal.SIGKILL))[0]
    assert not seccomp.killed_by_policy(sigkill)
    assert not seccomp.killed_by_policy(run_filtered(lambda: 1)[0])


# --- node runs under the policy --------------------------------------------------------------

NODE_PROGRAM = r"""
const fs = require('fs'), crypto = require('crypto'), zlib = require('zlib');
const cp = require('child_process'), net = require('net'), dns = require('dns'), os = require('os');
const { Worker } = require('worker_threads');
const out = {};
const dir = fs.mkdtempSync(require('path').join(os.tmpdir(), 'seccomp-'));
fs.writeFileSync(dir + '/f', 'hello');
out.fs = fs.readFileSync(dir + '/f', 'utf8');
fs.rmSync(dir, { recursive: true });
out.sha256 = crypto.createHash('sha256').update('a').digest('hex').slice(0, 8);
out.random = crypto.randomBytes(16).length;
out.zlib = zlib.gunzipSync(zlib.gzipSync('zz')).toString();
const child = cp.spawnSync(process.execPath, ['-e', 'process.stdout.write(String(6 * 7))'],
  { env: {} });
out.spawn = child.stdout.toString();
out.interfaces = Object.keys(os.networkInterfaces());
try { process.setuid(0); out.setuid = 'allowed'; } catch (e) { out.setuid = e.code; }
(async () => {
  out.worker = await new Promise((resolve, reject) => {
    const w = new Worker('require("worker_threads").parentPort.postMessage(2 + 3)', { eval: true });
    w.on('message', resolve); w.on('error', reject);
  });
  out.timer = await new Promise((resolve) => setTimeout(() => resolve('fired'), 5));
  out.dns = await new Promise((resolve) =>
    dns.lookup('localhost', { family: 4 }, (e, a) => resolve(e ? e.code : a)));
  out.net = await new Promise((resolve, reject) => {
    const server = net.createServer((s) => s.end('pong')).listen(0, '127.0.0.1', () => {
      const c = net.connect(server.address().port, '127.0.0.1');
      let data = '';
      c.on('data', (b) => { data += b; });
      c.on('end', () => { server.close(); resolve(data); });
      c.on('error', reject);
    });
  });
  console.log(JSON.stringify(out));
})().catch((e) => { console.log(String(e && e.stack)); process.exit(3); });
"""


@needs_root
@needs_node
def test_node_runs_its_usual_work_under_the_policy() -> None:
    status, output = run_node(NODE_PROGRAM, {})
    assert exited_cleanly(status), output
    assert json.loads(output) == {
        "fs": "hello",
        "sha256": "ca978112",
        "random": 16,
        "zlib": "zz",
        "spawn": "42",
        "interfaces": ["lo"],
        "setuid": "EPERM",  # refused, and node carries on
        "worker": 5,
        "timer": "fired",
        "dns": "127.0.0.1",
        "net": "pong",
    }


@needs_root
@needs_node
def test_node_falls_back_when_libuv_probes_io_uring() -> None:
    # libuv only probes io_uring when asked; ENOSYS must make it fall back, not crash.
    script = "require('fs').readFile(process.execPath, (e, d) => console.log(e ? e.code : 'read'))"
    status, output = run_node(script, {"UV_USE_IO_URING": "1"})
    assert exited_cleanly(status), output
    assert output == "read\n"
