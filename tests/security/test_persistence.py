"""Catalogue: Persistence across executions. Every execution starts in a jail nobody used."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox_client import SandboxClient
from tests.security.conftest import MARKER, execute, js, marked_processes

POLLUTER = js(r"""
const http = require('http');
const Module = require('module');
module.exports = async () => {
  const evil = () => { throw new Error('nefarious ' + MARKER); };
  global.console.log = evil;
  console.error = evil;
  Object.prototype.polluted = 'yes';
  Array.prototype.map = evil;
  JSON.parse = evil;
  Math.random = () => 4;
  Promise.prototype.finally = evil;
  http.request = evil;
  http.get = evil;
  fs.readFileSync.evil = true;
  require.cache['/steps/evil.js'] = { id: '/steps/evil.js', loaded: true, exports: { evil: true } };
  Module.prototype.require = evil;
  Module._load = evil;
  globalThis.left = MARKER;
  process.env.EVIL = MARKER;
  process.umask(0);
  process.chdir('/tmp');
  fs.writeFileSync('/tmp/left-behind', MARKER);
  fs.mkdirSync('/tmp/.hidden');
  fs.writeFileSync('/tmp/.hidden/deep', MARKER);
  fs.writeFileSync(os.homedir() + '/.npmrc', 'registry=http://127.0.0.1:9/' + MARKER);
  fs.symlinkSync('/proc/1/root/etc/passwd', '/tmp/link');
  spawnMarked('persist-daemon', 'require("net").createServer().listen("\\0' + MARKER +
              '-persist"); require("net").createServer().listen(46123, "127.0.0.1"); ' +
              'setInterval(() => {}, 1000)', { detached: true }).unref();
  setInterval(() => { try { fs.writeFileSync('/tmp/timer', MARKER); } catch (e) {} }, 5);
  const started = fs.readFileSync('/proc/1/stat', 'utf8').split(') ')[1].split(' ')[19];
  let reachable = [];
  for (let i = 0; i < 100 && reachable.join() !== 'CONNECTED,CONNECTED'; i++) {
    await sleep(20);
    reachable = [await connectOutcome({ path: '\0' + MARKER + '-persist' }),
                 await connectOutcome({ host: '127.0.0.1', port: 46123 })];
  }
  const tmp = fs.readdirSync('/tmp').sort();
  return { started, reachable, timer: fs.existsSync('/tmp/timer'), tmp };
};
""")

INSPECTOR = js(r"""
const http = require('http');
const Module = require('module');
module.exports = async () => {
  const native = (f) => typeof f === 'function' && !String(f).includes('nefarious');
  const out = {};
  out.consoleLog = native(console.log);
  out.consoleError = native(console.error);
  out.objectPrototype = ({}).polluted === undefined && !('polluted' in Object.prototype);
  out.arrayMap = [1, 2].map((x) => x * 2).join(',');
  out.jsonParse = JSON.parse('{"a":1}').a;
  out.mathRandom = Math.random() < 1;
  out.promiseFinally = native(Promise.prototype.finally);
  out.httpRequest = native(http.request) && native(http.get);
  out.fsTagged = fs.readFileSync.evil === undefined;
  out.requireCache = Object.keys(require.cache).filter((k) => k.includes('evil'));
  out.moduleRequire = native(Module.prototype.require) && native(Module._load);
  out.global = globalThis.left === undefined;
  out.env = process.env.EVIL === undefined;
  out.umask = process.umask().toString(8);
  out.cwd = process.cwd();
  out.tmp = fs.readdirSync('/tmp');
  out.home = fs.readdirSync(os.homedir());
  out.devShm = attempt(() => fs.readdirSync('/dev/shm'));
  out.pids = fs.readdirSync('/proc').filter((name) => /^\d+$/.test(name));
  out.abstract = await connectOutcome({ path: '\0' + MARKER + '-persist' });
  out.tcp = await connectOutcome({ host: '127.0.0.1', port: 46123 });
  await sleep(50);
  out.timerFile = fs.existsSync('/tmp/timer');
  out.started = fs.readFileSync('/proc/1/stat', 'utf8').split(') ')[1].split(' ')[19];
  console.log('still works');
  return out;
};
""")

PRISTINE = {
    "consoleLog": True,
    "consoleError": True,
    "objectPrototype": True,
    "arrayMap": "2,4",
    "jsonParse": 1,
    "mathRandom": True,
    "promiseFinally": True,
    "httpRequest": True,
    "fsTagged": True,
    "requireCache": [],
    "moduleRequire": True,
    "global": True,
    "env": True,
    "umask": "22",
    "cwd": "/",
    "tmp": [],
    "home": [],  # HOME is /tmp: the same fresh tmpfs
    "devShm": "ENOENT",
    "pids": ["1"],
    "abstract": "ECONNREFUSED",
    "tcp": "ECONNREFUSED",
    "timerFile": False,
}

_SEEN: dict[str, Any] = {}


async def _pollute_then_inspect(client: SandboxClient) -> dict[str, Any]:
    polluted = (await execute(client, POLLUTER, tenant="sec-tenant-a")).value
    seen: dict[str, Any] = {"polluter": polluted}
    for tenant in ("sec-tenant-a", "sec-tenant-b"):
        outcome = await execute(client, INSPECTOR, tenant=tenant)
        seen[tenant] = outcome.value
        seen[f"{tenant} logs"] = [log.text for log in outcome.logs]
    seen["strays"] = [p.pid for p in marked_processes(f"{MARKER}-persist")]
    return seen


@pytest.mark.parametrize("tenant", ["sec-tenant-a", "sec-tenant-b"])
@pytest.mark.parametrize("key", list(PRISTINE))
async def test_next_execution_sees_pristine_node_and_an_empty_jail(
    client: SandboxClient, tenant: str, key: str
) -> None:
    if not _SEEN:
        _SEEN.update(await _pollute_then_inspect(client))
    assert _SEEN[tenant][key] == PRISTINE[key]


@pytest.mark.parametrize("tenant", ["sec-tenant-a", "sec-tenant-b"])
async def test_next_execution_runs_in_a_new_runner_and_its_console_works(
    client: SandboxClient, tenant: str
) -> None:
    if not _SEEN:
        _SEEN.update(await _pollute_then_inspect(client))
    # /proc/1/stat's start time (clock ticks since boot): another process, not a reused one.
    assert _SEEN[tenant]["started"] != _SEEN["polluter"]["started"]
    assert _SEEN[f"{tenant} logs"] == ["still works"]


async def test_the_polluter_really_left_servers_timers_and_files_behind(
    client: SandboxClient,
) -> None:
    if not _SEEN:
        _SEEN.update(await _pollute_then_inspect(client))
    polluter = _SEEN["polluter"]
    assert polluter["reachable"] == ["CONNECTED", "CONNECTED"]
    assert polluter["timer"] is True
    assert polluter["tmp"] == [".hidden", ".npmrc", "left-behind", "link", "timer"]


async def test_background_processes_of_an_execution_are_gone_after_it(
    client: SandboxClient,
) -> None:
    if not _SEEN:
        _SEEN.update(await _pollute_then_inspect(client))
    assert _SEEN["strays"] == []
