/** A real sandboxd for the tests: `sandboxd serve` on a free loopback port, in its own process. */
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";

/** A tenant allowed one execution at a time and none waiting: a second one is refused. */
export const NARROW_TENANT = "narrow";

const REPO = resolve(import.meta.dirname, "..", "..", "..", "..");

export interface Daemon {
  target: string;
  stop(): Promise<number | null>;
}

/** Starts the daemon (SANDBOX_DAEMON_PROGRAM, else the project's .venv/bin/sandboxd). */
export async function startDaemon(): Promise<Daemon> {
  const program = process.env.SANDBOX_DAEMON_PROGRAM ?? join(REPO, ".venv", "bin", "sandboxd");
  const settings = join(mkdtempSync(join(tmpdir(), "sandboxd-node-")), "sandboxd.toml");
  writeFileSync(settings, `[tenants.${NARROW_TENANT}]\nmax_concurrent = 1\nmax_queued = 0\n`);
  const child = spawn(
    program,
    ["serve", "--listen", "127.0.0.1:0", "--pool-size", "2", "--config", settings],
    {
      stdio: ["ignore", "pipe", "inherit"],
      // Jails of this daemon run as host uids from here on (other test daemons use other ranges).
      env: { ...process.env, SANDBOXD_UID_BASE: "530000", SANDBOXD_POOL_MAX: "8" },
    },
  );
  const lines = createInterface({ input: child.stdout! });
  const [first] = await Promise.race([
    lines[Symbol.asyncIterator]().next().then((item) => [item.value as string | undefined]),
    new Promise<[undefined]>((done) => child.once("exit", () => done([undefined]))),
  ]);
  if (first === undefined || !first.startsWith("sandboxd: serving on ")) {
    child.kill();
    throw new Error(`the daemon did not start: ${JSON.stringify(first)}`);
  }
  return { target: first.split(" ").at(-1)!, stop: () => stopped(child) };
}

function stopped(child: ChildProcess): Promise<number | null> {
  return new Promise((done) => {
    child.once("exit", (code) => done(code));
    child.kill("SIGTERM");
  });
}
