/**
 * The TypeScript client of sandboxd: run tenants' JavaScript steps in fresh jails.
 *
 *     const client = new SandboxClient("127.0.0.1:50051");
 *     for await (const event of client.execute({ tenantId: "acme", steps, input })) { ... }
 *     const result = await client.run({ tenantId: "acme", steps, input }, { timeoutMs: 30_000 });
 *
 * Events are the generated `ExecutionEvent` messages (`pb`), a typed union on `event.case`.
 */
export { SandboxClient, type RpcOptions, type SandboxClientOptions } from "./client.js";
export {
  ERROR_DOMAIN,
  type ErrorKindName,
  kindName,
  SandboxError,
  type SandboxErrorDetails,
} from "./errors.js";
export type {
  Egress,
  ExecuteRequestInit,
  ExecutionContext,
  Input,
  Limits,
  ReturnResults,
  SessionInit,
  Step,
} from "./request.js";
export { decodeResult, resultOf } from "./results.js";
export { Session, type SessionStepOptions } from "./session.js";
export * as pb from "./gen/sandboxd/v1/sandbox_pb.js";
