'use strict';
// The baselines' runner: what sandboxd's runner does for one execution, minus the jail and the
// hardening. It reads one request from stdin (JSON: steps, input, configVars, credentials), runs
// the steps in order in this process with the same `context` shape, and writes to stdout one JSON
// line per log entry and, last, the final step's result as one line of JSON. On failure the last
// line is {"error": message} and the exit code is 1.
//
// It stays tiny on purpose: bare `node harness.js` is the floor of the fresh-process model, so it
// must cost no more than what any runner needs (read the request, compile, call, write).

const fs = require('fs');
const util = require('util');
const Module = require('module');

const out = (value) => process.stdout.write(JSON.stringify(value) + '\n');

function log(level) {
  return (...args) => out({ log: level, text: util.format(...args) });
}

// console.* becomes log lines, as in sandboxd, so stdout stays parseable.
console.log = console.info = log('info');
console.debug = log('debug');
console.warn = log('warn');
console.error = log('error');
const logger = { debug: log('debug'), info: log('info'), warn: log('warn'), error: log('error') };

function compile(name, code) {
  const filename = `/steps/${name}.js`;
  const mod = new Module(filename, null);
  mod.filename = filename;
  mod.paths = [];
  mod._compile(code, filename);
  return typeof mod.exports === 'function' ? mod.exports : mod.exports.default;
}

async function main() {
  const request = JSON.parse(fs.readFileSync(0, 'utf8'));
  const steps = {};
  let result = null;
  for (const step of request.steps) {
    const fn = compile(step.name, step.code);
    result = await fn({
      input: request.input,
      steps,
      configVars: request.configVars,
      credentials: request.credentials,
      logger,
      execution: { id: 'baseline', tenantId: 'bench', stepName: step.name, attempt: 1 },
    });
    steps[step.name] = result;
  }
  process.stdout.write((JSON.stringify(result) ?? 'null') + '\n');
}

main().catch((err) => {
  out({ error: String((err && err.message) || err) });
  process.exitCode = 1;
});
