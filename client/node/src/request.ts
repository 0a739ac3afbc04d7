/** What a caller sends: steps, JSON input and options, turned into the proto requests. */
import { create, type MessageInitShape } from "@bufbuild/protobuf";

import {
  type EgressPolicySchema,
  type ExecuteRequest,
  ExecuteRequestSchema,
  type LimitsSchema,
  ResultSelection,
  type SessionOpen,
  SessionOpenSchema,
} from "./gen/sandboxd/v1/sandbox_pb.js";

/** Limits of an execution or a step; unset fields take the daemon's defaults. */
export type Limits = MessageInitShape<typeof LimitsSchema>;

/** The network the steps may reach (through the daemon's egress proxy); unset means none. */
export type Egress = MessageInitShape<typeof EgressPolicySchema>;

/** One step: a name unique in the execution and its JavaScript source (CommonJS or ESM). */
export interface Step {
  name: string;
  code: string;
  /** Overrides the execution's timeout, log and result limits for this step. */
  limits?: Limits;
}

/** The input of an execution or a session step: a JSON value, or JSON text already encoded. */
export interface Input {
  /** Any JSON-serializable value (context.input); undefined is null. */
  input?: unknown;
  /** The input as UTF-8 JSON, for callers that already hold JSON; exclusive with `input`. */
  inputJson?: Uint8Array | string;
}

/** The context an execution or a session runs with. */
export interface ExecutionContext {
  /** The tenant the execution is accounted to. */
  tenantId: string;
  /** Chosen by the caller (for cancel); the daemon makes one when unset. */
  executionId?: string;
  /** context.configVars. */
  configVars?: Record<string, string>;
  /** context.credentials; never logged by the daemon. */
  credentials?: Record<string, string>;
  limits?: Limits;
  egress?: Egress;
}

/** Whose results come back: "all", "last", "none", or step names; the others stay in the jail. */
export type ReturnResults = "all" | "last" | "none" | readonly string[];

/** An execution: its context, steps and input. */
export interface ExecuteRequestInit extends ExecutionContext, Input {
  steps: readonly Step[];
  returnResults?: ReturnResults;
}

/** A session's context, without steps. */
export interface SessionInit extends ExecutionContext {
  /** The session ends TIMEOUT when no step comes for this long. */
  idleTimeoutMs?: number;
  /** The most steps the session may run. */
  maxSteps?: number;
}

const SELECTIONS = {
  all: ResultSelection.ALL,
  last: ResultSelection.LAST,
  none: ResultSelection.NONE,
} as const;

const utf8 = new TextEncoder();

/** The input as UTF-8 JSON bytes. */
export function inputBytes({ input, inputJson }: Input): Uint8Array {
  if (inputJson === undefined) {
    return utf8.encode(JSON.stringify(input ?? null));
  }
  if (input !== undefined) {
    throw new TypeError("pass either input or inputJson, not both");
  }
  return typeof inputJson === "string" ? utf8.encode(inputJson) : inputJson;
}

/** The ExecuteRequest of `init`. */
export function executeRequest(init: ExecuteRequestInit): ExecuteRequest {
  const selection = init.returnResults ?? "all";
  const named = typeof selection !== "string";
  return create(ExecuteRequestSchema, {
    ...context(init),
    steps: init.steps.map((step) => ({ ...step })),
    input: inputBytes(init),
    returnResults: named ? ResultSelection.NAMED : SELECTIONS[selection],
    returnSteps: named ? [...selection] : [],
  });
}

/** The SessionOpen message of `init`. */
export function sessionOpen(init: SessionInit): SessionOpen {
  return create(SessionOpenSchema, {
    ...context(init),
    idleTimeoutMs: init.idleTimeoutMs ?? 0,
    maxSteps: init.maxSteps ?? 0,
  });
}

/** The fields ExecuteRequest and SessionOpen share, with the daemon's "unset" values. */
function context(init: ExecutionContext): Required<Omit<ExecutionContext, "limits" | "egress">> &
  Pick<ExecutionContext, "limits" | "egress"> {
  return {
    tenantId: init.tenantId,
    executionId: init.executionId ?? "",
    configVars: init.configVars ?? {},
    credentials: init.credentials ?? {},
    limits: init.limits,
    egress: init.egress,
  };
}
