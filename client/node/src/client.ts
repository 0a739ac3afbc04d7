/** SandboxClient: the client of one sandboxd daemon, over gRPC (HTTP/2) with Connect. */
import { create } from "@bufbuild/protobuf";
import { type CallOptions, type Client, createClient, type Transport } from "@connectrpc/connect";
import { createWritableIterable } from "@connectrpc/connect/protocol";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";

import { CHUNK_BYTES, Reassembler, UPLOAD_ACCEPTED, upload } from "./chunks.js";
import { errorFromRpc } from "./errors.js";
import {
  CancelRequestSchema,
  type ExecuteRequest,
  type ExecutionEvent,
  GetStatusRequestSchema,
  type GetStatusResponse,
  SandboxService,
  type SessionRequest,
} from "./gen/sandboxd/v1/sandbox_pb.js";
import { type ExecuteRequestInit, executeRequest, type SessionInit, sessionOpen } from "./request.js";
import { resultOf } from "./results.js";
import { Session } from "./session.js";

/** Deadline and cancellation of one call. */
export interface RpcOptions {
  /** Aborting cancels the RPC; the daemon kills the execution's jail. The kind is CANCELLED. */
  signal?: AbortSignal;
  /** The gRPC deadline; past it the execution is cancelled and the kind is DEADLINE_EXCEEDED. */
  timeoutMs?: number;
  /** Extra request metadata (for example a W3C traceparent). */
  headers?: HeadersInit;
}

/** How the client connects. */
export interface SandboxClientOptions {
  /** A transport of your own (TLS, interceptors); the default is plaintext HTTP/2 gRPC. */
  transport?: Transport;
}

// Keepalive pings find a dead daemon or a dropped connection during a long, silent step. Not more
// often than every 5 minutes: a gRPC server with default settings answers more frequent pings
// on a stream without data with GOAWAY "too_many_pings", which would fail the call.
const PING_INTERVAL_MS = 300_000;
const PING_TIMEOUT_MS = 10_000;

/**
 * The client of one daemon: `new SandboxClient("127.0.0.1:50051")`, `close()` when done.
 *
 * Failures are thrown as SandboxError, with the kind read from the daemon's google.rpc.Status
 * details (ErrorInfo, RetryInfo, BadRequest) or from the failed execution's events.
 */
export class SandboxClient {
  private readonly rpc: Client<typeof SandboxService>;
  private readonly connections?: Http2SessionManager;

  /** `target` is "host:port" (plaintext) or a URL ("https://host:port"). */
  constructor(target: string, options: SandboxClientOptions = {}) {
    let transport = options.transport;
    if (transport === undefined) {
      const baseUrl = target.includes("://") ? target : `http://${target}`;
      this.connections = new Http2SessionManager(baseUrl, {
        pingIntervalMs: PING_INTERVAL_MS,
        pingTimeoutMs: PING_TIMEOUT_MS,
      });
      transport = createGrpcTransport({ baseUrl, sessionManager: this.connections });
    }
    this.rpc = createClient(SandboxService, transport);
  }

  /** Closes the connection; calls still running fail. */
  close(): void {
    this.connections?.abort();
  }

  /**
   * Runs the steps in one fresh jail and yields the execution's events as they arrive.
   *
   * A failure after ExecutionStarted arrives as events (StepFailed, then ExecutionFinished with
   * status FAILED), not as an exception. A refused request, a lost connection, a passed deadline
   * or an abort throws SandboxError. Leaving the loop early cancels the RPC (and the jail).
   * Inputs over 1 MiB travel in chunks; results over 1 MiB come back whole.
   */
  async *execute(
    request: ExecuteRequestInit,
    options: RpcOptions = {},
  ): AsyncGenerator<ExecutionEvent, void, undefined> {
    const message = executeRequest(request);
    const responses =
      message.input.length > CHUNK_BYTES
        ? this.executeChunked(message, options)
        : this.rpc.execute(message, options);
    const results = new Reassembler();
    let executionId = request.executionId;
    try {
      for await (const { event } of responses) {
        if (event === undefined) continue;
        executionId = event.executionId || executionId;
        const whole = results.feed(event);
        if (whole !== undefined) yield whole;
      }
    } catch (error) {
      throw errorFromRpc(error, executionId);
    }
  }

  /**
   * Runs the steps and resolves the last step's result: the decoded JSON value, or a Uint8Array
   * when the step returned a Buffer. Rejects with SandboxError when the execution or RPC fails.
   */
  async run(request: ExecuteRequestInit, options: RpcOptions = {}): Promise<unknown> {
    return resultOf(this.execute(request, options));
  }

  /** Opens a session: one jail, steps sent one at a time (see Session). */
  async session(init: SessionInit, options: RpcOptions = {}): Promise<Session> {
    const requests = createWritableIterable<SessionRequest>();
    const results = new Reassembler();
    const responses = this.rpc.session(requests, options);
    async function* events(): AsyncGenerator<ExecutionEvent> {
      for await (const { event } of responses) {
        const whole = event && results.feed(event);
        if (whole !== undefined) yield whole;
      }
    }
    return new Session(requests, events()).open(sessionOpen(init));
  }

  /** Kills a running execution's jail (it ends CANCELLED); false when the tenant has none with
   * that id. Works from any client of the daemon that runs the execution. */
  async cancel(tenantId: string, executionId: string, options: RpcOptions = {}): Promise<boolean> {
    try {
      const request = create(CancelRequestSchema, { tenantId, executionId });
      return (await this.rpc.cancel(request, options)).found;
    } catch (error) {
      throw errorFromRpc(error, executionId);
    }
  }

  /** The daemon's pool, executions by outcome, tenants and host figures. */
  async status(options: RpcOptions = {}): Promise<GetStatusResponse> {
    try {
      return await this.rpc.getStatus(create(GetStatusRequestSchema), options);
    } catch (error) {
      throw errorFromRpc(error);
    }
  }

  /**
   * An ExecuteChunked call: the request and the first chunk, then, once the daemon has accepted
   * the declared length (its response headers carry `sandboxd-upload: accepted`), the rest. A
   * daemon that refuses the upload ends the call before the megabytes are sent, and its status
   * reaches the reader.
   */
  private async *executeChunked(message: ExecuteRequest, options: RpcOptions) {
    let accept = (): void => undefined;
    const accepted = new Promise<void>((resolve) => (accept = resolve));
    let ended = false;
    async function* parts() {
      const messages = upload(message);
      yield messages.next().value!;
      yield messages.next().value!;
      await accepted;
      if (!ended) yield* messages;
    }
    // A refusal ends the call with headers too, without this entry: only the entry means go.
    const onHeader = (headers: Headers): void => {
      if (headers.get(UPLOAD_ACCEPTED[0]) !== UPLOAD_ACCEPTED[1]) ended = true;
      accept();
    };
    const call: CallOptions = { ...options, onHeader };
    try {
      yield* this.rpc.executeChunked(parts(), call);
    } finally {
      ended = true;
      accept();
    }
  }
}
