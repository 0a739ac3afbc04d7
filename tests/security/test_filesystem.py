"""Catalogue: Filesystem. The jail sees its read-only image, a noexec /tmp and its own /proc."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from sandbox_client import SandboxClient
from tests.conftest import ROOTFS
from tests.security.conftest import Canary, execute, js, probe

# Every path of the jail's tree but /proc's contents, as `ls -R` would name them.
WALK = js(r"""
function walk(top) {
  const seen = [];
  const visit = (rel) => {
    const dir = top === '/' ? rel || '/' : top + rel;
    for (const entry of fs.readdirSync(dir, { withFileTypes: true })) {
      const path = rel + '/' + entry.name;
      seen.push(path);
      if (entry.isDirectory() && path !== '/proc') visit(path);
    }
  };
  visit('');
  return seen.sort();
}
module.exports = async () => ({
  root: walk('/'),
  initRoot: walk('/proc/1/root'),
  selfRoot: fs.readlinkSync('/proc/self/root'),
  initCwd: fs.readlinkSync('/proc/1/cwd'),
  cwd: process.cwd(),
  dotdot: fs.realpathSync('/proc/self/root/../../../..'),
});
""")


def image_paths() -> list[str]:
    paths = []
    for directory, dirs, files in os.walk(ROOTFS):
        for name in dirs + files:
            paths.append("/" + os.path.relpath(os.path.join(directory, name), ROOTFS))
    return sorted(p for p in paths if not p.startswith("/proc/"))


async def test_walking_the_root_finds_exactly_the_jail_image(client: SandboxClient) -> None:
    seen = await probe(client, "walk", WALK)
    assert seen["root"] == image_paths()


@pytest.mark.parametrize(
    ("key", "expected"),
    [("selfRoot", "/"), ("initCwd", "/"), ("cwd", "/"), ("dotdot", "/")],
)
async def test_proc_links_and_dotdot_lead_to_the_jail_root(
    client: SandboxClient, key: str, expected: str
) -> None:
    seen = await probe(client, "walk", WALK)
    assert seen[key] == expected


async def test_proc_1_root_is_the_same_tree_not_the_hosts(client: SandboxClient) -> None:
    seen = await probe(client, "walk", WALK)
    assert seen["initRoot"] == image_paths()


WRITES = js(r"""
module.exports = async () => {
  const out = {};
  for (const path of ['/escape', '/usr/escape', '/etc/passwd', '/etc/hosts', '/sandboxd/runner.js',
                      '/usr/local/bin/node', '/dev/escape', '/proc/sys/kernel/hostname',
                      '/proc/sys/vm/drop_caches', '/proc/sys/kernel/core_pattern',
                      '/proc/sysrq-trigger', '/sys/kernel/uevent_helper']) {
    out['write ' + path] = attempt(() => fs.writeFileSync(path, 'x'));
  }
  out['chmod node'] = attempt(() => fs.chmodSync('/usr/local/bin/node', 0o6777));
  out['truncate node'] = attempt(() => fs.truncateSync('/usr/local/bin/node', 0));
  out['utimes runner'] = attempt(() => fs.utimesSync('/sandboxd/runner.js', 0, 0));
  out['unlink runner'] = attempt(() => fs.unlinkSync('/sandboxd/runner.js'));
  out['rename runner'] = attempt(() => fs.renameSync('/sandboxd/runner.js', '/tmp/runner.js'));
  out['mkdir /etc/cron.d'] = attempt(() => fs.mkdirSync('/etc/cron.d'));
  out['symlink in /usr'] = attempt(() => fs.symlinkSync('/tmp', '/usr/tmp'));
  out['rmdir /tmp'] = attempt(() => fs.rmdirSync('/tmp'));
  return out;
};
""")


def _proc_refusal(path: str) -> str:
    # This host's kernel may be built without the file; where it exists, host root owns it.
    return "EACCES" if os.path.exists(path) else "ENOENT"


@pytest.mark.parametrize(
    ("attack", "expected"),
    [
        ("write /escape", "EROFS"),
        ("write /usr/escape", "EROFS"),
        ("write /etc/passwd", "EROFS"),
        ("write /etc/hosts", "EROFS"),
        ("write /sandboxd/runner.js", "EROFS"),
        ("write /usr/local/bin/node", "EROFS"),
        ("write /dev/escape", "EROFS"),
        ("write /proc/sys/kernel/hostname", "EACCES"),
        ("write /proc/sys/vm/drop_caches", "EACCES"),
        ("write /proc/sys/kernel/core_pattern", "EACCES"),
        ("write /proc/sysrq-trigger", _proc_refusal("/proc/sysrq-trigger")),
        ("write /sys/kernel/uevent_helper", "ENOENT"),
        ("chmod node", "EROFS"),
        ("truncate node", "EACCES"),
        ("utimes runner", "EROFS"),
        ("unlink runner", "EROFS"),
        ("rename runner", "EXDEV"),
        ("mkdir /etc/cron.d", "EROFS"),
        ("symlink in /usr", "EROFS"),
        ("rmdir /tmp", "EROFS"),
    ],
)
async def test_image_proc_sys_and_sys_cannot_be_changed(
    client: SandboxClient, attack: str, expected: str
) -> None:
    outcomes = await probe(client, "writes", WRITES)
    assert outcomes[attack] == expected


KERNEL_FILES = js(r"""
module.exports = async () => {
  const out = {};
  for (const path of ['/dev/mem', '/dev/kmem', '/dev/port', '/dev/kmsg', '/proc/kmsg',
                      '/proc/kcore', '/dev/sda', '/dev/vda', '/dev/tty', '/dev/console',
                      '/dev/shm', '/dev/mqueue', '/dev/fuse', '/sys/fs/cgroup',
                      '/proc/1/mem', '/proc/self/pagemap']) {
    out[path] = attempt(() => fs.closeSync(fs.openSync(path, 'r')));
  }
  out['/dev'] = fs.readdirSync('/dev').sort();
  return out;
};
""")


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/dev/mem", "ENOENT"),
        ("/dev/kmem", "ENOENT"),
        ("/dev/port", "ENOENT"),
        ("/dev/kmsg", "ENOENT"),
        ("/proc/kmsg", _proc_refusal("/proc/kmsg")),
        ("/proc/kcore", _proc_refusal("/proc/kcore")),
        ("/dev/sda", "ENOENT"),
        ("/dev/vda", "ENOENT"),
        ("/dev/tty", "ENOENT"),
        ("/dev/console", "ENOENT"),
        ("/dev/shm", "ENOENT"),
        ("/dev/mqueue", "ENOENT"),
        ("/dev/fuse", "ENOENT"),
        ("/sys/fs/cgroup", "ENOENT"),
        # The runner's own memory is its own business; nothing else is in the pid namespace.
        ("/proc/1/mem", "OK"),
        ("/proc/self/pagemap", "OK"),
    ],
)
async def test_kernel_and_device_files_are_absent_or_refused(
    client: SandboxClient, path: str, expected: str
) -> None:
    outcomes = await probe(client, "kernel files", KERNEL_FILES)
    assert outcomes[path] == expected


async def test_dev_holds_only_the_four_harmless_devices(client: SandboxClient) -> None:
    outcomes = await probe(client, "kernel files", KERNEL_FILES)
    assert outcomes["/dev"] == ["null", "random", "urandom", "zero"]


NOEXEC = js(r"""
const LOADER = {
  x64: '/lib64/ld-linux-x86-64.so.2', arm64: '/lib/ld-linux-aarch64.so.1',
}[process.arch];
const LIBDIR = { x64: '/lib/x86_64-linux-gnu', arm64: '/lib/aarch64-linux-gnu' }[process.arch];
module.exports = async () => {
  const out = {};
  // libc.so.6 is an executable ELF (it prints its version): the smallest program in the image.
  fs.copyFileSync(LIBDIR + '/libc.so.6', '/tmp/elf');
  fs.chmodSync('/tmp/elf', 0o755);
  out.mode = (fs.statSync('/tmp/elf').mode & 0o777).toString(8);
  out.access = attempt(() => fs.accessSync('/tmp/elf', fs.constants.X_OK));
  out.execFile = attempt(() => cp.execFileSync('/tmp/elf', [], { stdio: 'pipe' }));
  const spawned = cp.spawnSync('/tmp/elf', [], { stdio: 'pipe' });
  out.spawn = spawned.error ? codeOf(spawned.error) : 'ran';
  // The loader itself is on the read-only image; it must still not map code from /tmp.
  const loaded = cp.spawnSync(LOADER, ['/tmp/elf'], { stdio: 'pipe' });
  out.loaderStatus = loaded.status;
  out.loaderMapRefused = loaded.stderr.toString().includes('failed to map segment');
  fs.copyFileSync(LIBDIR + '/libm.so.6', '/tmp/addon.node');
  try {
    process.dlopen({ exports: {} }, '/tmp/addon.node');
    out.dlopen = 'loaded';
  } catch (e) {
    out.dlopen = codeOf(e);
    out.dlopenMapRefused = String(e.message).includes('failed to map segment');
  }
  try { require('/tmp/addon.node'); out.require = 'loaded'; } catch (e) { out.require = codeOf(e); }
  // A shell or any other program: the image has node and nothing else.
  out.shell = attempt(() => cp.execSync('id', { stdio: 'pipe' }));
  return out;
};
""")


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("mode", "755"),
        ("access", "EACCES"),
        ("execFile", "EACCES"),
        ("spawn", "EACCES"),
        ("loaderStatus", 127),
        ("loaderMapRefused", True),
        ("dlopen", "ERR_DLOPEN_FAILED"),
        ("dlopenMapRefused", True),
        ("require", "ERR_DLOPEN_FAILED"),
        ("shell", "ENOENT"),
    ],
)
async def test_code_dropped_in_tmp_cannot_be_executed_or_loaded(
    client: SandboxClient, key: str, expected: Any
) -> None:
    outcomes = await probe(client, "noexec", NOEXEC)
    assert outcomes[key] == expected


async def test_tmp_is_a_small_noexec_nosuid_nodev_tmpfs(client: SandboxClient) -> None:
    code = js(r"""
    module.exports = async () => {
      const line = fs.readFileSync('/proc/self/mountinfo', 'utf8').split('\n')
        .find((l) => l.split(' ')[4] === '/tmp');
      const [fields, tail] = line.split(' - ');
      return { options: fields.split(' ')[5].split(',').sort(), fstype: tail.split(' ')[0],
               size: tail.split(' ')[2].split(',').find((o) => o.startsWith('size=')),
               statfsBytes: fs.statfsSync('/tmp').blocks * fs.statfsSync('/tmp').bsize };
    };
    """)
    seen = (await execute(client, code)).value
    assert seen["fstype"] == "tmpfs"
    assert {"noexec", "nosuid", "nodev"} <= set(seen["options"])
    assert seen["size"] == "size=65536k"  # the default tmpfs_bytes, 64 MiB
    assert seen["statfsBytes"] == 64 * 1024 * 1024


FDS = js(r"""
module.exports = async () => {
  const links = {};
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    try { links[fd] = fs.readlinkSync('/proc/self/fd/' + fd); } catch (e) { /* the listing's fd */ }
  }
  return links;
};
""")


async def test_descriptors_hold_the_channel_and_nothing_of_the_daemon(
    client: SandboxClient,
) -> None:
    links: dict[str, str] = (await execute(client, FDS)).value
    assert links["0"] == "/dev/null"
    assert all(links[fd].startswith("pipe:[") for fd in ("1", "2", "3", "4"))
    assert links["1"] == links["2"]  # stdout and stderr share the output pipe
    assert len({links["1"], links["3"], links["4"]}) == 3
    # Node's own: its event loop (epoll, eventfd), signal pipes, /dev/null for spare stdio.
    others = {fd: target for fd, target in links.items() if int(fd) > 4}
    foreign = {
        fd: target
        for fd, target in others.items()
        if not target.startswith(("pipe:[", "anon_inode:[")) and target != "/dev/null"
    }
    assert foreign == {}  # no socket (gRPC), no log file, no file of the host


LINKS = js(r"""
module.exports = async (ctx) => {
  const out = {};
  fs.symlinkSync('/proc/1/root/etc/passwd', '/tmp/passwd');
  out.passwdViaProc = fs.readFileSync('/tmp/passwd', 'utf8');
  fs.symlinkSync('/../../../../../../etc/hostname', '/tmp/hostname');
  out.hostnameViaDotdot = fs.readFileSync('/tmp/hostname', 'utf8');
  // The host's canary file has this very path on the host; here it is the jail's own /tmp.
  out.canaryExists = fs.existsSync(ctx.input.canary);
  fs.symlinkSync(ctx.input.canary, '/tmp/to-canary');
  out.writeThroughLink = attempt(() => fs.writeFileSync('/tmp/to-canary', 'owned by a jail'));
  out.writeCanaryPath = attempt(() => fs.appendFileSync(ctx.input.canary, 'again'));
  out.canaryInJail = fs.readFileSync(ctx.input.canary, 'utf8');
  out.hardlinkNode = attempt(() => fs.linkSync('/usr/local/bin/node', '/tmp/node'));
  out.hardlinkRunner = attempt(() => fs.linkSync('/sandboxd/runner.js', '/tmp/runner.js'));
  out.hardlinkPasswd = attempt(() => fs.linkSync('/etc/passwd', '/tmp/passwd-hard'));
  out.symlinkToProcRoot = attempt(() => fs.symlinkSync('/proc/1/root', '/tmp/root'));
  out.readThroughRootLink = fs.readdirSync('/tmp/root/').sort();
  return out;
};
""")


@pytest.fixture
def link_input(canary: Canary) -> dict[str, str]:
    return {"canary": canary.path}


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("passwdViaProc", Path(f"{ROOTFS}/etc/passwd").read_text()),
        ("hostnameViaDotdot", Path(f"{ROOTFS}/etc/hostname").read_text()),
        ("canaryExists", False),
        ("writeThroughLink", "OK"),
        ("writeCanaryPath", "OK"),
        ("canaryInJail", "owned by a jailagain"),
        ("hardlinkNode", "EXDEV"),
        ("hardlinkRunner", "EXDEV"),
        ("hardlinkPasswd", "EXDEV"),
        ("symlinkToProcRoot", "OK"),
        ("readThroughRootLink", ["dev", "etc", "lib", "lib64", "proc", "sandboxd", "tmp", "usr"]),
    ],
)
async def test_links_planted_in_tmp_resolve_inside_the_jail_only(
    client: SandboxClient, link_input: dict[str, str], key: str, expected: Any
) -> None:
    # The host canary's content and mode are checked, unchanged, after this module.
    outcomes = await probe(client, "links", LINKS, input=link_input)
    assert outcomes[key] == expected
