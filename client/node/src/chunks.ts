/**
 * Large payloads on the stream: inputs sent in pieces, results put back together.
 *
 * No gRPC message carries more than about 1 MiB of payload: the daemon sends a large result as
 * ResultChunk events before its StepFinished, and the client sends a large input as InputChunk
 * parts, exactly as the Python client does.
 */
import { createHash } from "node:crypto";

import { create } from "@bufbuild/protobuf";

import {
  type ExecuteChunkedRequest,
  ExecuteChunkedRequestSchema,
  type ExecuteRequest,
  ExecuteRequestSchema,
  type ExecutionEvent,
  type InputChunk,
  InputChunkSchema,
} from "./gen/sandboxd/v1/sandbox_pb.js";

export const CHUNK_BYTES = 1024 * 1024;
/** The daemon's response header once it has accepted an upload's declared length. */
export const UPLOAD_ACCEPTED = ["sandboxd-upload", "accepted"] as const;

/**
 * `data` as chunks with their offsets, the first declaring the total length and the SHA-256 of
 * the whole, the last one marked (an empty input is one empty chunk).
 */
export function* pieces(data: Uint8Array): Generator<InputChunk> {
  const last = Math.max(0, Math.ceil(data.length / CHUNK_BYTES) - 1) * CHUNK_BYTES;
  for (let offset = 0; offset <= last; offset += CHUNK_BYTES) {
    const chunk = create(InputChunkSchema, {
      offset: BigInt(offset),
      data: data.subarray(offset, offset + CHUNK_BYTES),
      last: offset === last,
    });
    if (offset === 0) {
      chunk.totalBytes = BigInt(data.length);
      chunk.sha256 = createHash("sha256").update(data).digest();
    }
    yield chunk;
  }
}

/** The messages of an ExecuteChunked call: the request without its input, then the input. */
export function* upload(request: ExecuteRequest): Generator<ExecuteChunkedRequest> {
  const head = create(ExecuteRequestSchema, { ...request, input: new Uint8Array() });
  yield create(ExecuteChunkedRequestSchema, { part: { case: "request", value: head } });
  for (const chunk of pieces(request.input)) {
    yield create(ExecuteChunkedRequestSchema, { part: { case: "inputChunk", value: chunk } });
  }
}

/** Folds ResultChunk events into the StepFinished that follows them. */
export class Reassembler {
  private parts: Uint8Array[] = [];
  private binary = false;

  /** The event to hand to the caller, or undefined for a chunk held back. */
  feed(event: ExecutionEvent): ExecutionEvent | undefined {
    const { event: which } = event;
    if (which.case === "resultChunk") {
      this.parts.push(which.value.data);
      this.binary = which.value.binary;
      return undefined;
    }
    if (which.case === "stepFinished" && which.value.resultChunks > 0) {
      const data = Buffer.concat(this.parts);
      this.parts = [];
      which.value.result = { case: this.binary ? "binary" : "json", value: data };
    }
    return event;
  }
}
