/**
 * Sessions: one jail, steps sent one at a time as the orchestrator decides.
 *
 *     const session = await client.session({ tenantId: "acme" });
 *     const kind = await session.step("classify", classifyCode, { input: { size: 512 } });
 *     await session.step("handle", kind === "large" ? largeCode : smallCode);
 *     await session.close();
 *
 * A step that throws rejects `step()` with SandboxError(USER_ERROR) and the session goes on; a
 * failure that kills the jail (TIMEOUT, MEMORY_LIMIT, ...) ends it, and later steps reject.
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import type { WritableIterable } from "@connectrpc/connect/protocol";

import { CHUNK_BYTES, pieces } from "./chunks.js";
import { errorFromRpc, kindName, SandboxError } from "./errors.js";
import {
  type ExecutionEvent,
  type ExecutionFinished,
  type SessionRequest,
  SessionRequestSchema,
  type SessionOpen,
} from "./gen/sandboxd/v1/sandbox_pb.js";
import { type Input, inputBytes, type Limits } from "./request.js";
import { decodeResult, stepError } from "./results.js";

type SessionPart = NonNullable<MessageInitShape<typeof SessionRequestSchema>["part"]>;

/** How one session step runs. */
export interface SessionStepOptions extends Input {
  /** Leave the result in the jail (later steps read it); step() then resolves undefined. */
  keepResult?: boolean;
  /** The step's timeout, log and result limits. */
  limits?: Limits;
}

/** An open session; made by SandboxClient.session(). */
export class Session {
  /** Every event so far, in order. */
  readonly history: ExecutionEvent[] = [];
  /** The session's ExecutionFinished, once it has ended. */
  finished?: ExecutionFinished;
  executionId?: string;

  private readonly events: AsyncIterator<ExecutionEvent>;

  /** @internal Use SandboxClient.session(). */
  constructor(
    private readonly requests: WritableIterable<SessionRequest>,
    events: AsyncIterable<ExecutionEvent>,
  ) {
    this.events = events[Symbol.asyncIterator]();
  }

  /** @internal Sends the open message. */
  async open(open: SessionOpen): Promise<this> {
    this.executionId = open.executionId || undefined;
    await this.write({ case: "open", value: open });
    return this;
  }

  /** Runs one step in the session's jail; resolves its result, or rejects with SandboxError. */
  async step(name: string, code: string, options: SessionStepOptions = {}): Promise<unknown> {
    if (this.finished !== undefined) throw this.ended();
    const raw = inputBytes(options);
    const chunked = raw.length > CHUNK_BYTES;
    await this.write({
      case: "step",
      value: {
        name,
        code,
        input: chunked ? new Uint8Array() : raw,
        inputChunked: chunked,
        keepResult: options.keepResult ?? false,
        limits: options.limits,
      },
    });
    if (chunked) {
      for (const chunk of pieces(raw)) await this.write({ case: "inputChunk", value: chunk });
    }
    return this.outcome(name);
  }

  /** Ends the session (half-close) and resolves its ExecutionFinished. */
  async close(): Promise<ExecutionFinished | undefined> {
    if (this.finished === undefined) {
      this.requests.close();
      while (!(await this.next()).done);
    }
    return this.finished;
  }

  private async outcome(name: string): Promise<unknown> {
    for (let item = await this.next(); !item.done; item = await this.next()) {
      const { event } = item.value;
      if (event.case === "stepFinished" && event.value.step === name) {
        return decodeResult(event.value);
      }
      if (event.case === "stepFailed" && event.value.step === name) {
        throw stepError(event.value, this.executionId);
      }
    }
    throw this.ended();
  }

  private async next(): Promise<IteratorResult<ExecutionEvent>> {
    let item: IteratorResult<ExecutionEvent>;
    try {
      item = await this.events.next();
    } catch (error) {
      throw errorFromRpc(error, this.executionId);
    }
    if (!item.done) {
      const event = item.value;
      this.executionId = event.executionId || this.executionId;
      this.history.push(event);
      if (event.event.case === "executionFinished") this.finished = event.event.value;
    }
    return item;
  }

  private async write(part: SessionPart): Promise<void> {
    try {
      await this.requests.write(create(SessionRequestSchema, { part }));
    } catch (error) {
      // The daemon already ended the session (idle, a fatal step, a refusal): say why.
      while (!(await this.next()).done);
      if (this.finished !== undefined) throw this.ended();
      throw errorFromRpc(error, this.executionId);
    }
  }

  private ended(): SandboxError {
    const finished = this.finished;
    if (finished === undefined) {
      return new SandboxError("INTERNAL", "the session ended without ExecutionFinished");
    }
    return new SandboxError(
      kindName(finished.errorKind),
      finished.errorMessage || "the session has ended",
      { step: finished.failedStep || undefined, executionId: this.executionId },
    );
  }
}
