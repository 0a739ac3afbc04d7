/**
 * SandboxError and the translation of failures into it.
 *
 * A failure reaches a caller in one of two ways, and both end as a SandboxError:
 * - after ExecutionStarted, as StepFailed / ExecutionFinished(FAILED) events;
 * - before it (or when the connection or deadline fails), as a gRPC status whose google.rpc.Status
 *   details name the kind (ErrorInfo.reason), when to retry (RetryInfo) and the field at fault
 *   (BadRequest).
 */
import { Code, ConnectError } from "@connectrpc/connect";

import {
  BadRequestSchema,
  ErrorInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";
import { ErrorKind } from "./gen/sandboxd/v1/sandbox_pb.js";

/** The domain of the daemon's google.rpc.ErrorInfo; its reason is the kind's name. */
export const ERROR_DOMAIN = "sandboxd";

/** The kind of a failure: the proto enum ErrorKind's names without their prefix. */
export type ErrorKindName = Exclude<keyof typeof ErrorKind, "UNSPECIFIED">;

/** The name of a proto ErrorKind value; INTERNAL for unspecified or unknown values. */
export function kindName(kind: ErrorKind): ErrorKindName {
  const name = ErrorKind[kind] as keyof typeof ErrorKind | undefined;
  return name === undefined || name === "UNSPECIFIED" ? "INTERNAL" : name;
}

/** What a SandboxError carries besides its kind and message. */
export interface SandboxErrorDetails {
  /** The step that failed, when one was running. */
  step?: string;
  /** The JavaScript stack of a USER_ERROR, as the step threw it. */
  stepStack?: string;
  /** The execution's id, when known. */
  executionId?: string;
  /** Milliseconds the daemon asks to wait before retrying (QUOTA_EXCEEDED, UNAVAILABLE). */
  retryAfterMs?: number;
  /** The request field at fault of an INVALID_REQUEST ("steps[0].name"). */
  field?: string;
  /** The error that caused this one (a ConnectError for a failed RPC). */
  cause?: unknown;
}

/** A failed execution or RPC: the only error the client throws on purpose. */
export class SandboxError extends Error {
  override readonly name = "SandboxError";
  readonly step?: string;
  /** The step's own stack of a USER_ERROR (`stack` stays this error's stack). */
  readonly stepStack?: string;
  readonly executionId?: string;
  readonly retryAfterMs?: number;
  readonly field?: string;

  constructor(
    readonly kind: ErrorKindName,
    message: string,
    details: SandboxErrorDetails = {},
  ) {
    super(message, { cause: details.cause });
    this.step = details.step;
    this.stepStack = details.stepStack;
    this.executionId = details.executionId;
    this.retryAfterMs = details.retryAfterMs;
    this.field = details.field;
  }
}

const KIND_BY_CODE: Partial<Record<Code, ErrorKindName>> = {
  [Code.InvalidArgument]: "INVALID_REQUEST",
  // The daemon names its own quota refusals (ErrorInfo); a bare RESOURCE_EXHAUSTED is gRPC's
  // message size limit, on either side of the call: the request is too large to be read.
  [Code.ResourceExhausted]: "INVALID_REQUEST",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.Canceled]: "CANCELLED",
};

function isKindName(reason: string): reason is ErrorKindName {
  return reason !== "UNSPECIFIED" && reason in ErrorKind && Number.isNaN(Number(reason));
}

/** A failed RPC as a SandboxError: kind and hints from its details, else from its code alone. */
export function errorFromRpc(error: unknown, executionId?: string): SandboxError {
  if (error instanceof SandboxError) {
    return error;
  }
  const connect = ConnectError.from(error);
  const info = connect.findDetails(ErrorInfoSchema).find((i) => i.domain === ERROR_DOMAIN);
  const named = info !== undefined && isKindName(info.reason) ? info.reason : undefined;
  const kind = named ?? KIND_BY_CODE[connect.code] ?? "INTERNAL";
  const retry = connect.findDetails(RetryInfoSchema)[0]?.retryDelay;
  const violation = connect.findDetails(BadRequestSchema)[0]?.fieldViolations[0];
  return new SandboxError(kind, connect.rawMessage || `gRPC status ${Code[connect.code]}`, {
    executionId,
    retryAfterMs:
      retry === undefined ? undefined : Number(retry.seconds) * 1000 + retry.nanos / 1e6,
    field: violation?.field,
    cause: error,
  });
}
