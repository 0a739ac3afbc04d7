/** From a stream of ExecutionEvents to its outcome: the last step's result, or a SandboxError. */
import {
  type ExecutionEvent,
  type ExecutionFinished,
  ExecutionStatus,
  type StepFailed,
  type StepFinished,
} from "./gen/sandboxd/v1/sandbox_pb.js";
import { kindName, SandboxError } from "./errors.js";

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * A step's result: the decoded JSON value, a Uint8Array for a binary result, undefined when it
 * was kept in the jail (not selected to return).
 */
export function decodeResult(finished: StepFinished): unknown {
  const { result } = finished;
  switch (result.case) {
    case "json":
      try {
        return JSON.parse(utf8.decode(result.value));
      } catch (error) {
        // Only a step that forged its own result frame gets here.
        throw new SandboxError("USER_ERROR", `the result of step "${finished.step}" is not JSON`, {
          step: finished.step,
          cause: error,
        });
      }
    case "binary":
      return result.value;
    default:
      return undefined;
  }
}

/** The error of a failed step. */
export function stepError(failed: StepFailed, executionId?: string): SandboxError {
  return new SandboxError(kindName(failed.kind), failed.message, {
    step: failed.step || undefined,
    stepStack: failed.stack || undefined,
    executionId,
  });
}

/** Consumes an execution's events; returns its last step's result or throws SandboxError. */
export async function resultOf(events: AsyncIterable<ExecutionEvent>): Promise<unknown> {
  let executionId: string | undefined;
  let lastStep: StepFinished | undefined;
  let failedStep: StepFailed | undefined;
  let finished: ExecutionFinished | undefined;
  for await (const { executionId: id, event } of events) {
    executionId = id || executionId;
    if (event.case === "stepFinished") lastStep = event.value;
    if (event.case === "stepFailed") failedStep = event.value;
    if (event.case === "executionFinished") finished = event.value;
  }
  if (finished === undefined) {
    if (failedStep !== undefined) throw stepError(failedStep, executionId);
    throw new SandboxError("INTERNAL", "the event stream ended before ExecutionFinished", {
      executionId,
    });
  }
  if (finished.status !== ExecutionStatus.SUCCEEDED) {
    throw executionError(finished, failedStep, executionId);
  }
  return lastStep === undefined ? undefined : decodeResult(lastStep);
}

/** The error of a failed execution; the StepFailed (if any) fills in what it leaves out. */
export function executionError(
  finished: ExecutionFinished,
  failed: StepFailed | undefined,
  executionId: string | undefined,
): SandboxError {
  return new SandboxError(
    kindName(finished.errorKind || failed?.kind || 0),
    finished.errorMessage || failed?.message || "the execution failed",
    {
      step: finished.failedStep || failed?.step || undefined,
      stepStack: failed?.stack || undefined,
      executionId,
    },
  );
}
