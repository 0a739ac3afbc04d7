/** The TypeScript client against a real daemon (node --test, from scripts/test). */
import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { pb, resultOf, SandboxClient, SandboxError, type Step } from "../src/index.js";
import { type Daemon, NARROW_TENANT, startDaemon } from "./daemon.js";

const DOUBLE: Step = { name: "double", code: "module.exports = async (c) => c.input.n * 2" };
const SLEEP: Step = {
  name: "wait",
  code: "module.exports = () => new Promise((resolve) => setTimeout(resolve, 20000))",
};

/** The SandboxError `promise` rejects with. */
async function failure(promise: Promise<unknown>): Promise<SandboxError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof SandboxError, `not a SandboxError: ${String(error)}`);
    return error;
  }
  assert.fail("expected a SandboxError");
}

describe("SandboxClient against a real daemon", () => {
  let daemon: Daemon;
  let client: SandboxClient;

  before(async () => {
    daemon = await startDaemon();
    client = new SandboxClient(daemon.target);
  });

  after(async () => {
    client.close();
    assert.equal(await daemon.stop(), 0);
  });

  test("run resolves the decoded JSON result", async () => {
    assert.equal(await client.run({ tenantId: "acme", steps: [DOUBLE], input: { n: 21 } }), 42);
  });

  test("execute yields typed events in order", async () => {
    const code = "module.exports = async (c) => { console.log('hi'); return [c.input] }";
    const events: pb.ExecutionEvent[] = [];
    for await (const event of client.execute({
      tenantId: "acme",
      steps: [{ name: "echo", code }],
      input: { a: "é" },
    })) {
      events.push(event);
    }
    assert.deepEqual(
      events.map((e) => e.event.case),
      ["executionStarted", "stepStarted", "log", "stepFinished", "executionFinished"],
    );
    assert.deepEqual(events.map((e) => e.seq), [0n, 1n, 2n, 3n, 4n]);
    const log = events[2]!.event;
    assert.ok(log.case === "log");
    assert.equal(log.value.text, "hi");
    assert.equal(log.value.level, pb.LogLevel.INFO);
    const finished = events[4]!.event;
    assert.ok(finished.case === "executionFinished");
    assert.equal(finished.value.status, pb.ExecutionStatus.SUCCEEDED);
  });

  test("a throwing step rejects with USER_ERROR, its step and its stack", async () => {
    const code = "module.exports = () => { throw new TypeError('no orders') }";
    const error = await failure(client.run({ tenantId: "acme", steps: [{ name: "parse", code }] }));
    assert.equal(error.kind, "USER_ERROR");
    assert.equal(error.step, "parse");
    assert.equal(error.message, "TypeError: no orders");
    assert.match(error.stepStack ?? "", /TypeError: no orders/);
  });

  test("a refusal carries the field at fault from BadRequest", async () => {
    const steps = [{ ...DOUBLE, name: "bad name" }];
    const error = await failure(client.run({ tenantId: "acme", steps }));
    assert.equal(error.kind, "INVALID_REQUEST");
    assert.equal(error.field, "steps[0].name");
    assert.match(error.message, /^step 0: name 'bad name' must match/);
    assert.equal(error.retryAfterMs, undefined);
  });

  test("over quota carries RetryInfo; cancel(tenantId, executionId) ends the first", async () => {
    const executionId = randomUUID();
    const events = client.execute({ tenantId: NARROW_TENANT, steps: [SLEEP], executionId });
    let started = await events.next();
    while (!started.done && started.value.event.case !== "stepStarted") {
      started = await events.next();
    }
    const refused = await failure(client.run({ tenantId: NARROW_TENANT, steps: [DOUBLE] }));
    assert.equal(refused.kind, "QUOTA_EXCEEDED");
    assert.ok((refused.retryAfterMs ?? 0) > 0, `retryAfterMs ${refused.retryAfterMs}`);
    assert.equal(await client.cancel(NARROW_TENANT, executionId), true);
    const cancelled = await failure(resultOf({ [Symbol.asyncIterator]: () => events }));
    assert.equal(cancelled.kind, "CANCELLED");
    assert.equal(cancelled.executionId, executionId);
  });

  test("cancel of an unknown execution resolves false", async () => {
    assert.equal(await client.cancel("acme", randomUUID()), false);
  });

  test("a passed deadline is DEADLINE_EXCEEDED", async () => {
    const run = client.run({ tenantId: "acme", steps: [SLEEP] }, { timeoutMs: 1000 });
    assert.equal((await failure(run)).kind, "DEADLINE_EXCEEDED");
  });

  test("an aborted signal is CANCELLED", async () => {
    const abort = new AbortController();
    const run = client.run({ tenantId: "acme", steps: [SLEEP] }, { signal: abort.signal });
    setTimeout(() => abort.abort(), 500);
    assert.equal((await failure(run)).kind, "CANCELLED");
  });

  test("a large input travels in chunks and a large result comes back whole", async () => {
    const text = "x".repeat(3 * 1024 * 1024 + 17);
    const code = "module.exports = async (c) => c.input.text + '!'";
    const result = await client.run({
      tenantId: "acme",
      steps: [{ name: "echo", code }],
      input: { text },
    });
    assert.equal(result, `${text}!`);
  });

  test("an upload over the daemon's limit is refused before its megabytes are sent", async () => {
    const inputJson = new Uint8Array(65 * 1024 * 1024).fill(0x20);
    inputJson[0] = 0x31; // "1" and spaces: valid JSON, 65 MiB
    const error = await failure(client.run({ tenantId: "acme", steps: [DOUBLE], inputJson }));
    assert.equal(error.kind, "INVALID_REQUEST");
    assert.match(error.message, /over the limit of 67108864 bytes/);
    assert.equal(await client.run({ tenantId: "acme", steps: [DOUBLE], input: { n: 2 } }), 4);
  });

  test("a request message far over the daemon's limit is INVALID_REQUEST, refused unread", async () => {
    const steps = [{ name: "huge", code: `module.exports = () => 1 // ${"x".repeat(6 << 20)}` }];
    const error = await failure(client.run({ tenantId: "acme", steps }));
    assert.equal(error.kind, "INVALID_REQUEST");
    assert.match(error.message, /larger than max \(\d+ vs\. 3145728\)/);
  });

  test("a Buffer result is a Uint8Array", async () => {
    const code = "module.exports = () => Buffer.from([1, 2, 3])";
    const result = await client.run({ tenantId: "acme", steps: [{ name: "bytes", code }] });
    assert.deepEqual(result, new Uint8Array([1, 2, 3]));
  });

  test("a session runs steps as the caller decides", async () => {
    const session = await client.session({ tenantId: "acme" });
    const classify = "module.exports = (c) => (c.input.size > 100 ? 'large' : 'small')";
    assert.equal(await session.step("classify", classify, { input: { size: 512 } }), "large");
    const thrown = "module.exports = () => { throw new Error('once') }";
    assert.equal((await failure(session.step("oops", thrown))).kind, "USER_ERROR");
    const use = "module.exports = (c) => c.steps.classify + '!'";
    assert.equal(await session.step("use", use), "large!");
    const finished = await session.close();
    assert.equal(finished?.stepsCompleted, 2);
    assert.equal(session.history.at(-1)?.event.case, "executionFinished");
  });

  test("status names outcomes without the enum prefix", async () => {
    await client.run({ tenantId: "acme", steps: [DOUBLE], input: { n: 1 } });
    const status = await client.status();
    assert.equal(status.serving, true);
    assert.ok((status.executionsByOutcome.SUCCEEDED ?? 0n) >= 1n);
    assert.ok(Object.keys(status.executionsByOutcome).every((k) => !k.startsWith("ERROR_KIND_")));
  });
});
