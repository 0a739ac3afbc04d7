'use strict';
// sandboxd runner: the only program in a jail. It reads work frames from fd 3, runs each step's
// JavaScript in this process, and writes event frames to fd 4. The protocol is docs/channel.md.
//
// Customer code shares this process, so it can replace any global, prototype or module export.
// The runner therefore captures everything it uses below, before any customer code runs, and
// calls it in forms that later changes cannot reach: uncurried functions bound at startup,
// getters read from their original descriptors, null-prototype objects for everything it
// serializes, and no array or string methods looked up at call time. This keeps the frames the
// runner sends well-formed and truthful; it is not a security boundary (customer code can write
// to fd 4 itself, or exit), which is why the daemon treats every byte from the jail as hostile.

const fs = require('fs');
const util = require('util');
const net = require('net');
const Module = require('module');

// ---------------------------------------------------------------------------------------------
// Captured builtins
// ---------------------------------------------------------------------------------------------

// uncurryThis(f)(self, ...args) calls f with this = self. Both halves are bound now, so a later
// replacement of Function.prototype.call or .bind changes nothing.
const uncurryThis = Function.prototype.bind.bind(Function.prototype.call);
const FunctionPrototypeBind = uncurryThis(Function.prototype.bind);

const ReflectApply = Reflect.apply;
const ReflectDefineProperty = Reflect.defineProperty;
const ReflectDeleteProperty = Reflect.deleteProperty;
const ReflectGetOwnPropertyDescriptor = Reflect.getOwnPropertyDescriptor;
const ReflectGetPrototypeOf = Reflect.getPrototypeOf;
const ReflectSetPrototypeOf = Reflect.setPrototypeOf;
const ObjectHasOwn = Object.hasOwn;
const ObjectPrototype = Object.prototype;
const ArrayPrototype = Array.prototype;

const JSONStringify = JSON.stringify;
const JSONParse = JSON.parse;
const DateNow = Date.now;
const StringCtor = String;
const NumberIsSafeInteger = Number.isSafeInteger;
const MathMax = Math.max;
const StringPrototypeSlice = uncurryThis(String.prototype.slice);
const StringPrototypeIncludes = uncurryThis(String.prototype.includes);
const StringPrototypeIndexOf = uncurryThis(String.prototype.indexOf);
const StringPrototypeLastIndexOf = uncurryThis(String.prototype.lastIndexOf);
const StringPrototypeStartsWith = uncurryThis(String.prototype.startsWith);
const StringPrototypeCharCodeAt = uncurryThis(String.prototype.charCodeAt);
const StringPrototypeToLowerCase = uncurryThis(String.prototype.toLowerCase);
const StringPrototypeTrim = uncurryThis(String.prototype.trim);
const StringPrototypeIsWellFormed = uncurryThis(String.prototype.isWellFormed);
const RegExpPrototypeExec = uncurryThis(RegExp.prototype.exec);
const StringFromCharCode = String.fromCharCode;
const ErrorCaptureStackTrace = Error.captureStackTrace;

const PromisePrototypeThen = uncurryThis(Promise.prototype.then);
const PromiseResolve = FunctionPrototypeBind(Promise.resolve, Promise);
const PromiseReject = FunctionPrototypeBind(Promise.reject, Promise);
const ErrorCtor = Error;
const NumberCtor = Number;

const U8 = Uint8Array;
const TypedArrayPrototype = ReflectGetPrototypeOf(Uint8Array.prototype);
const TypedArraySet = uncurryThis(TypedArrayPrototype.set);
const TypedArrayCopyWithin = uncurryThis(TypedArrayPrototype.copyWithin);
const typedArrayGetter = (name) =>
  uncurryThis(ReflectGetOwnPropertyDescriptor(TypedArrayPrototype, name).get);
const byteLengthOf = typedArrayGetter('byteLength');
const byteOffsetOf = typedArrayGetter('byteOffset');
const bufferOf = typedArrayGetter('buffer');

// TextEncoder/TextDecoder go straight to native code; Buffer.from(string) would call
// Buffer.prototype.utf8Write, which customer code can replace.
const textEncoder = new TextEncoder();
const TextEncoderEncode = uncurryThis(TextEncoder.prototype.encode);
const TextEncoderEncodeInto = uncurryThis(TextEncoder.prototype.encodeInto);
// The UTF-8 length of a string, counted without encoding it (native code, reached through
// Buffer's module-private binding, not through anything customer code can replace).
const BufferByteLength = Buffer.byteLength;
const textDecoder = new TextDecoder('utf-8');
const TextDecoderDecode = uncurryThis(TextDecoder.prototype.decode);
const BufferBase64Slice = uncurryThis(Buffer.prototype.base64Slice);
// Memory not zeroed first, for the frames' buffer: every byte of it is written before it is read.
const BufferAllocUnsafe = Buffer.allocUnsafe;

const fsWriteSync = fs.writeSync;
const utilFormat = util.format;
const utilInspect = util.inspect;
const isUint8Array = util.types.isUint8Array; // true for Buffers too
const isNativeError = util.types.isNativeError;
const isPromise = util.types.isPromise;

const ModuleCtor = Module;
const ModuleCompile = uncurryThis(Module.prototype._compile);
const ModuleNodeModulePaths = Module._nodeModulePaths;

const netConnect = net.connect;
const netIsIP = net.isIP;
// http, https and tls are loaded (about 5 ms) only after `ready`, by prepare(): see Start.
let tls = null;
let tlsConnect = null;
let tlsCreateSecureContext = null;
let HttpAgentPrototype = null;
let HttpsAgentPrototype = null;
let httpCreateConnection = null;
let httpsCreateConnection = null;
// fetch is Node's built-in (undici). Its dispatcher, which opens the connections, is an undici
// Agent that Node creates when the fetch module loads, at the first use of fetch (or Headers,
// Request, ...): loading it costs 20-50 ms, so only steps that use it pay. Even reading the
// descriptor of one of those globals loads it on Node 22.
const fetchBuiltin = globalThis.fetch;
const UNDICI_DISPATCHER = Symbol.for('undici.globalDispatcher.1');

const processNextTick = process.nextTick;
// reallyExit ends the process without running 'exit' listeners, which customer code could use
// to change the exit code.
const reallyExit = FunctionPrototypeBind(process.reallyExit, process);
const NODE_VERSION = process.version;
const RUNNER_FILE = __filename;

// ---------------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------------

const FD_WORK = 3; // daemon -> runner
const FD_EVENTS = 4; // runner -> daemon
const PREFIX_BYTES = 8; // u32 header_len | u32 body_len, big endian
const MAX_HEADER_BYTES = 256 * 1024; // the daemon's cap (sandboxd/channel.py)
// Bodies up to this size are copied into the same buffer as the header so that a frame is one
// write(2); larger ones (results) are written from where they are, without a copy.
const INLINE_BODY_BYTES = 64 * 1024;
// Messages and stacks come from customer code. Capped in UTF-16 units so that a header stays far
// below MAX_HEADER_BYTES even if every unit is escaped by JSON as \uXXXX (6 bytes).
const MAX_TEXT_UNITS = 16 * 1024;
const MAX_NAME_UNITS = 256;
const EXIT_FATAL = 70; // EX_SOFTWARE: the runner cannot go on (fd 4 broken, bad frame)

// ---------------------------------------------------------------------------------------------
// Small helpers that stay correct under prototype pollution
// ---------------------------------------------------------------------------------------------

const utf8Encode = (text) => TextEncoderEncode(textEncoder, text);

// A view of bytes[start, start + length) made with the captured constructor: subarray() would
// look up bytes.constructor[Symbol.species].
function view(bytes, start, length) {
  return new U8(bufferOf(bytes), byteOffsetOf(bytes) + start, length);
}

const utf8Decode = (bytes) => TextDecoderDecode(textDecoder, bytes);

// Define (not assign) an own property: assignment would run a setter that customer code put on
// Object.prototype under that name.
function defineOwn(object, key, value) {
  ReflectDefineProperty(object, key, {
    __proto__: null,
    value,
    writable: true,
    enumerable: true,
    configurable: true,
  });
}

// A field of an object parsed from a daemon frame, ignoring anything inherited from a polluted
// Object.prototype.
function own(object, key, fallback) {
  return ObjectHasOwn(object, key) ? object[key] : fallback;
}

function truncateText(text, maxUnits) {
  if (text.length <= maxUnits) return text;
  return StringPrototypeSlice(text, 0, maxUnits) + '... (truncated)';
}

function safeInspect(value) {
  try {
    return utilInspect(value);
  } catch {
    return '[a value that cannot be displayed]';
  }
}

// Every occurrence of search in text replaced. String.prototype.replaceAll would look up
// String.prototype[Symbol.replace], which customer code can define.
function replaceText(text, search, replacement) {
  let out = '';
  let from = 0;
  for (;;) {
    const at = StringPrototypeIndexOf(text, search, from);
    if (at === -1) return out + StringPrototypeSlice(text, from);
    out += StringPrototypeSlice(text, from, at) + replacement;
    from = at + search.length;
  }
}

// A stack without the runner's frames and what called them (the event loop): customers see their
// own code only.
function trimStack(stack) {
  const at = StringPrototypeIndexOf(stack, RUNNER_FILE);
  if (at === -1) return stack;
  const lineStart = StringPrototypeLastIndexOf(stack, '\n', at);
  return lineStart === -1 ? stack : StringPrototypeSlice(stack, 0, lineStart);
}

// A string for any value: String(value) runs customer toString/valueOf code, which may throw.
function safeString(value) {
  if (typeof value === 'string') return value;
  try {
    return StringCtor(value);
  } catch {
    return safeInspect(value);
  }
}

// Property reads on thrown values run customer getters, which may throw.
function safeGet(object, key) {
  try {
    return object[key];
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------------------------
// Writing frames to fd 4
// ---------------------------------------------------------------------------------------------

function fatal(message) {
  try {
    const bytes = utf8Encode('sandboxd runner: ' + message + '\n');
    fsWriteSync(2, bytes, 0, byteLengthOf(bytes));
  } catch {
    // stderr is gone too; the exit code says enough.
  }
  reallyExit(EXIT_FATAL);
}

function putU32(bytes, at, value) {
  bytes[at] = (value >>> 24) & 0xff;
  bytes[at + 1] = (value >>> 16) & 0xff;
  bytes[at + 2] = (value >>> 8) & 0xff;
  bytes[at + 3] = value & 0xff;
}

function getU32(bytes, at) {
  return ((bytes[at] << 24) >>> 0) + (bytes[at + 1] << 16) + (bytes[at + 2] << 8) + bytes[at + 3];
}

// fd 4 is a blocking pipe: writeSync waits while the daemon is behind, which is what holds back a
// step that logs in a loop. The explicit offset and length keep fs from reading .byteLength
// through a getter for the amount to write.
function writeAll(bytes) {
  const length = byteLengthOf(bytes);
  let offset = 0;
  try {
    while (offset < length) offset += fsWriteSync(FD_EVENTS, bytes, offset, length - offset);
  } catch (err) {
    fatal('cannot write to fd 4: ' + safeString(safeGet(err, 'message')));
  }
}

// header must be a null-prototype object of strings, numbers and booleans, so that JSON.stringify
// finds no toJSON anywhere.
function sendFrame(header, body) {
  const head = utf8Encode(JSONStringify(header));
  const headLength = byteLengthOf(head);
  const bodyLength = body === undefined ? 0 : byteLengthOf(body);
  const inline = bodyLength <= INLINE_BODY_BYTES;
  const frame = new U8(PREFIX_BYTES + headLength + (inline ? bodyLength : 0));
  putU32(frame, 0, headLength);
  putU32(frame, 4, bodyLength);
  TypedArraySet(frame, head, PREFIX_BYTES);
  if (inline && bodyLength > 0) TypedArraySet(frame, body, PREFIX_BYTES + headLength);
  writeAll(frame);
  if (!inline) writeAll(body);
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

// The execution, from the `exec` frame. Defaults keep a `step` without `exec` runnable.
let execution = {
  __proto__: null,
  id: '',
  tenantId: '',
  attempt: 0,
  configVars: {},
  credentials: {},
  input: null,
};

// Earlier steps' results by step name: the values themselves, shared with customer code.
const steps = {};

// The running step (see startStep), or null between steps.
let current = null;

// ---------------------------------------------------------------------------------------------
// Logs: console.*, context.logger.*, process.stdout/stderr.write
// ---------------------------------------------------------------------------------------------

const LEVEL_FD = { __proto__: null, debug: 1, info: 1, warn: 2, error: 2 };

// Output while no step runs (e.g. a timer of a finished step) belongs to no step, so it goes to
// the real stdout/stderr; the daemon treats those as best-effort log output.
let writeOutside = (level, text) => {
  try {
    const bytes = utf8Encode(text + '\n');
    fsWriteSync(LEVEL_FD[level], bytes, 0, byteLengthOf(bytes));
  } catch {
    // Best effort: a full or closed stdout must not break the runner.
  }
};

// Bytes [0, max) of UTF-8 text, cut back to a character boundary.
function cutUtf8(bytes, max) {
  let end = max;
  while (end > 0 && (bytes[end] & 0xc0) === 0x80) end -= 1;
  return view(bytes, 0, end);
}

// One log line of the running step. Per step, log bytes stop at logBytes (the line that crosses
// the limit is cut there) and lines at logLines; one `truncated` frame follows, and later lines of
// the step are dropped.
function emitLog(level, text) {
  const step = current;
  if (step === null) {
    writeOutside(level, text);
    return;
  }
  if (step.logDropped) {
    // Past its limit a step's lines are dropped; a step that keeps logging (an endless loop,
    // a gigantic line) is stopped once it has tried twice its limit: OUTPUT_LIMIT.
    step.logOverflow += text.length;
    if (step.logUsed + step.logOverflow > 2 * step.logBytes) stopFlooding(step);
    return;
  }
  if (step.logLines === step.linesSent) {
    step.logDropped = true;
    sendFrame({ __proto__: null, t: 'truncated', seq: step.seq });
    step.logOverflow = text.length;
    return;
  }
  let bytes = utf8Encode(text);
  const room = step.logBytes - step.logUsed;
  if (byteLengthOf(bytes) > room) {
    bytes = cutUtf8(bytes, room);
    step.logDropped = true;
  }
  const size = byteLengthOf(bytes);
  if (size > 0 || !step.logDropped) {
    sendFrame({ __proto__: null, t: 'log', seq: step.seq, level, ts: DateNow() }, bytes);
    step.logUsed += size;
    step.linesSent += 1;
  }
  if (step.logDropped) {
    sendFrame({ __proto__: null, t: 'truncated', seq: step.seq });
    step.logOverflow = text.length - size;
    if (step.logUsed + step.logOverflow > 2 * step.logBytes) stopFlooding(step);
  }
}

// The step cannot be trusted to stop logging (it may catch what we throw): report OUTPUT_LIMIT
// and end the runner; the jail is destroyed after this execution anyway.
function stopFlooding(step) {
  const message = 'the step kept logging past its limit of ' + step.logBytes + ' bytes';
  failStep(step, 'OUTPUT_LIMIT', { __proto__: null, name: '', message, stack: '', code: '' }, '');
  reallyExit(0);
}

// util.format runs customer inspect hooks and getters; a failure there still gives a line.
function formatArgs(args) {
  try {
    return ReflectApply(utilFormat, undefined, args);
  } catch (err) {
    return '[log message could not be formatted: ' + safeString(safeGet(err, 'message')) + ']';
  }
}

function logFunction(level) {
  return function log(...args) {
    emitLog(level, formatArgs(args));
  };
}

// console.trace prints "Trace: <message>" and the caller's stack, like Node's.
function trace(...args) {
  const holder = { __proto__: null, name: 'Trace', message: formatArgs(args) };
  ErrorCaptureStackTrace(holder, trace);
  emitLog('debug', trimStack(safeString(holder.stack)));
}

function makeLogger() {
  return {
    debug: logFunction('debug'),
    info: logFunction('info'),
    warn: logFunction('warn'),
    error: logFunction('error'),
  };
}

function installConsole() {
  const con = globalThis.console;
  con.log = logFunction('info');
  con.info = logFunction('info');
  con.debug = logFunction('debug');
  con.trace = trace;
  con.warn = logFunction('warn');
  con.error = logFunction('error');
  // Other console methods (dir, table, group, time, count, assert) end in the methods above or in
  // process.stdout.write, captured below.
}

// A chunk written to a stream becomes one log line: strings as they are, bytes as UTF-8, without
// one trailing newline (console.log's lines have none either). Empty writes log nothing.
function logChunk(level, chunk) {
  let text;
  if (typeof chunk === 'string') text = chunk;
  else if (isUint8Array(chunk)) text = utf8Decode(chunk);
  else text = safeString(chunk);
  const last = text.length - 1;
  if (last < 0) return;
  if (StringPrototypeCharCodeAt(text, last) === 10) text = StringPrototypeSlice(text, 0, last);
  emitLog(level, text);
}

// process.stdout / process.stderr: write() becomes a log line of the running step. Writes that
// go through the stream's machinery instead (end(chunk), pipe) reach _write, which does the same.
// Outside a step, both pass to the original stream.
function captureStream(stream, level) {
  const originalWrite = stream.write;
  const originalUnderscoreWrite = stream._write;
  stream.write = function write(chunk, encoding, callback) {
    if (current === null) return ReflectApply(originalWrite, stream, arguments);
    logChunk(level, chunk);
    const done = typeof encoding === 'function' ? encoding : callback;
    if (typeof done === 'function') processNextTick(done, null);
    return true;
  };
  stream._write = function _write(chunk, encoding, callback) {
    if (current === null) return ReflectApply(originalUnderscoreWrite, stream, arguments);
    logChunk(level, chunk);
    callback(null);
    return undefined;
  };
  // Without _writev, buffered chunks also go one by one through _write.
  stream._writev = null;
  return FunctionPrototypeBind(originalWrite, stream);
}

// When a step is an ES module, compiling it as CommonJS first makes Node warn "To load an ES
// module, set "type": "module" in the package.json ..." (Node 20) or "Failed to load the ES
// module: ..." (Node 22). That compile is how the runner detects ES modules, and a jail has no
// package.json to set, so the warning is only noise in the step's logs. Node's own warning
// listeners are wrapped to drop it; every other warning passes.
const ESM_HINTS = ['To load an ES module', 'Failed to load the ES module'];

function isEsmHint(message) {
  for (let i = 0; i < ESM_HINTS.length; i += 1) {
    if (StringPrototypeStartsWith(message, ESM_HINTS[i])) return true;
  }
  return false;
}

function filterWarnings() {
  const listeners = process.listeners('warning');
  process.removeAllListeners('warning');
  for (let i = 0; i < listeners.length; i += 1) {
    const listener = listeners[i];
    process.on('warning', function warning(value) {
      const message = safeGet(value, 'message');
      if (typeof message === 'string' && isEsmHint(message)) return;
      ReflectApply(listener, this, arguments);
    });
  }
}

function installStreams() {
  const stdoutWrite = captureStream(process.stdout, 'info');
  const stderrWrite = captureStream(process.stderr, 'error');
  // From now on output outside a step goes through the original streams, which queue when the
  // pipe is full instead of failing.
  writeOutside = (level, text) => {
    try {
      if (LEVEL_FD[level] === 1) stdoutWrite(text + '\n');
      else stderrWrite(text + '\n');
    } catch {
      // Best effort.
    }
  };
}

// ---------------------------------------------------------------------------------------------
// Outcomes of a step
// ---------------------------------------------------------------------------------------------

// An object with a string message, as some libraries throw instead of an Error.
function isErrorLike(value) {
  if (typeof value !== 'object' || value === null) return false;
  return typeof safeGet(value, 'message') === 'string';
}

// name, message and stack for any thrown value, without letting customer getters or toString
// methods throw past this point.
function describeThrown(value) {
  if (isNativeError(value) || isErrorLike(value)) {
    const name = safeGet(value, 'name');
    const stack = safeGet(value, 'stack');
    const code = safeGet(value, 'code');
    return {
      __proto__: null,
      name: name === undefined ? 'Error' : safeString(name),
      message: safeString(safeGet(value, 'message')),
      stack: typeof stack === 'string' ? trimStack(stack) : '',
      code: typeof code === 'string' ? truncateText(code, MAX_NAME_UNITS) : '',
    };
  }
  const message =
    typeof value === 'string' ? value : 'Step threw a non-Error value: ' + safeInspect(value);
  return { __proto__: null, name: 'Error', message, stack: '', code: '' };
}

function finish(step, header, body) {
  if (step.finished) return;
  step.finished = true;
  if (current === step) current = null;
  sendFrame(header, body);
  // Take the next frame on a fresh stack, not inside the customer's promise chain.
  busy = false;
  processNextTick(pump);
}

function failStep(step, kind, described, prefix) {
  let message = prefix + described.message;
  let stack = described.stack;
  if (step.moduleURL !== '') {
    // Import errors quote the module's data: URL, i.e. the whole code in base64.
    message = replaceText(message, step.moduleURL, step.filename);
    stack = replaceText(stack, step.moduleURL, step.filename);
  }
  const header = {
    __proto__: null,
    t: 'error',
    seq: step.seq,
    kind,
    name: truncateText(described.name, MAX_NAME_UNITS),
    message: truncateText(message, MAX_TEXT_UNITS),
    stack: truncateText(stack, MAX_TEXT_UNITS),
  };
  // The errno-style code of a system error (EMFILE, ENOSPC ...): the daemon tells limits by it.
  if (described.code) header.code = described.code;
  finish(step, header);
}

function userError(step, thrown) {
  if (step.finished) return;
  failStep(step, 'USER_ERROR', describeThrown(thrown), '');
}

// A toJSON that customer code put on Object.prototype or Array.prototype would change every
// result, so it is hidden while the runner serializes. toJSON of the result's own classes (Date,
// a customer class, BigInt.prototype.toJSON) still applies, as in any Node program.
function hideToJSON(proto) {
  const descriptor = ReflectGetOwnPropertyDescriptor(proto, 'toJSON');
  if (descriptor === undefined) return undefined;
  ReflectSetPrototypeOf(descriptor, null);
  return ReflectDeleteProperty(proto, 'toJSON') ? descriptor : undefined;
}

function restoreToJSON(proto, descriptor) {
  if (descriptor !== undefined) ReflectDefineProperty(proto, 'toJSON', descriptor);
}

function stringifyResult(value) {
  const objectToJSON = hideToJSON(ObjectPrototype);
  const arrayToJSON = hideToJSON(ArrayPrototype);
  try {
    return JSONStringify(value);
  } finally {
    restoreToJSON(ArrayPrototype, arrayToJSON);
    restoreToJSON(ObjectPrototype, objectToJSON);
  }
}

// A string with none of the characters JSON.stringify escapes (", \, U+0000..U+001F, lone
// surrogates) serializes to itself in quotes. Such results are measured and encoded straight from
// the string: JSON.stringify copies a string character by character (about 75 ms for 16 MiB
// here), one pass of this sticky expression costs a fifth to a third of that, and stops at the
// first character to escape. JSON.stringify looks up no toJSON for a primitive string, so nothing
// customer code defines can change its JSON.
const UNESCAPED_RUN = /[^"\\\u0000-\u001f]*/y;

function needsNoEscape(text) {
  if (!StringPrototypeIsWellFormed(text)) return false;
  UNESCAPED_RUN.lastIndex = 0;
  RegExpPrototypeExec(UNESCAPED_RUN, text);
  return UNESCAPED_RUN.lastIndex === text.length;
}

// {size, bytes} of a result's JSON: bytes only when the result is sent (`send`), so that a kept
// result is measured without an encoded copy. Throws what JSON.stringify throws.
function serializeResult(value, send) {
  if (typeof value === 'string' && needsNoEscape(value)) {
    const size = BufferByteLength(value) + 2;
    if (!send) return { __proto__: null, size, bytes: undefined };
    const bytes = new U8(size);
    bytes[0] = 0x22; // "
    TextEncoderEncodeInto(textEncoder, value, view(bytes, 1, size - 2));
    bytes[size - 1] = 0x22;
    return { __proto__: null, size, bytes };
  }
  // undefined (and a function or symbol, which JSON cannot hold either) becomes null.
  const text = stringifyResult(value === undefined ? null : value);
  const json = text === undefined ? 'null' : text;
  if (!send) return { __proto__: null, size: BufferByteLength(json), bytes: undefined };
  const bytes = utf8Encode(json);
  return { __proto__: null, size: byteLengthOf(bytes), bytes };
}

// The step returned: serialize, check the limit, keep the value, report.
function succeedStep(step, value) {
  if (step.finished) return;
  const kept = !step.returnResult;
  let encoding = 'binary';
  let bytes = value;
  let size;
  if (isUint8Array(value)) {
    size = byteLengthOf(value);
  } else {
    encoding = 'json';
    let json;
    try {
      json = serializeResult(value, !kept);
    } catch (err) {
      const prefix = 'Step result cannot be serialized to JSON: ';
      failStep(step, 'USER_ERROR', describeThrown(err), prefix);
      return;
    }
    size = json.size;
    bytes = json.bytes;
  }
  if (size > step.resultBytes) {
    const message = `Step result is ${size} bytes, over the limit of ${step.resultBytes} bytes`;
    const described = { __proto__: null, name: 'ResultTooLarge', message, stack: '' };
    failStep(step, 'RESULT_TOO_LARGE', described, '');
    return;
  }
  defineOwn(steps, step.name, value);
  finish(
    step,
    { __proto__: null, t: 'result', seq: step.seq, encoding, size, kept },
    kept ? undefined : bytes,
  );
}

// ---------------------------------------------------------------------------------------------
// Running a step
// ---------------------------------------------------------------------------------------------

// /steps/<name>.js with anything but [A-Za-z0-9._-] replaced, so that the name cannot break out
// of the sourceURL comment or look like a path.
function stepFilename(name) {
  let safe = '';
  for (let i = 0; i < name.length; i += 1) {
    const c = StringPrototypeCharCodeAt(name, i);
    const alphanumeric = (c >= 48 && c <= 57) || (c >= 65 && c <= 90) || (c >= 97 && c <= 122);
    safe += alphanumeric || c === 45 || c === 46 || c === 95 ? StringFromCharCode(c) : '_';
  }
  return '/steps/' + (safe === '' ? '_' : safe) + '.js';
}

function exportedFunction(exports) {
  if (typeof exports === 'function') return exports;
  // CommonJS compiled from ESM/TypeScript puts the function on exports.default.
  if (exports !== null && typeof exports === 'object') {
    const fallback = safeGet(exports, 'default');
    if (typeof fallback === 'function') return fallback;
  }
  const err = new TypeError(
    'Step code must export a function: module.exports = async (context) => { ... } ' +
      'or export default async (context) => { ... }',
  );
  err.stack = '';
  throw err;
}

// Compiling as CommonJS fails with one of these messages for code that is an ES module.
function looksLikeModuleSyntax(err) {
  if (!isNativeError(err) || safeGet(err, 'name') !== 'SyntaxError') return false;
  const message = safeString(safeGet(err, 'message'));
  return (
    StringPrototypeIncludes(message, 'import') ||
    StringPrototypeIncludes(message, 'export') ||
    StringPrototypeIncludes(message, 'top level bodies of modules')
  );
}

// CommonJS: compile into a fresh Module named /steps/<name>.js, whose require() loads Node's
// builtins. 'commonjs' turns off Node's own module-syntax detection (require(esm), which cannot
// run top-level await), so ES modules always take the import() path below.
function compileCommonJS(filename, code) {
  const mod = new ModuleCtor(filename, null);
  mod.filename = filename;
  mod.paths = ModuleNodeModulePaths('/steps');
  ModuleCompile(mod, code, filename, 'commonjs');
  return mod.exports;
}

// ES module: import() of a data: URL. The sourceURL comment names it /steps/<name>.js in stack
// traces; the seq comment makes each step's URL, and so its module instance, distinct.
function importModule(step, code) {
  const bytes = utf8Encode(
    code + '\n// sandboxd step ' + step.seq + '\n//# sourceURL=' + step.filename + '\n',
  );
  const base64 = BufferBase64Slice(bytes, 0, byteLengthOf(bytes));
  step.moduleURL = 'data:text/javascript;base64,' + base64;
  return import(step.moduleURL);
}

function makeContext(step) {
  return {
    input: step.hasInput ? step.input : execution.input,
    steps,
    configVars: execution.configVars,
    credentials: execution.credentials,
    logger: makeLogger(),
    execution: {
      id: execution.id,
      tenantId: execution.tenantId,
      stepName: step.name,
      attempt: execution.attempt,
    },
  };
}

function callStep(step, fn) {
  let returned;
  try {
    returned = ReflectApply(fn, undefined, [makeContext(step)]);
  } catch (err) {
    userError(step, err);
    return;
  }
  const onValue = (value) => succeedStep(step, value);
  const onError = (err) => userError(step, err);
  try {
    // A native promise is followed with the captured then; anything else (a value, a customer
    // thenable) is first resolved the way `await` would.
    const promise = isPromise(returned) ? returned : PromiseResolve(returned);
    PromisePrototypeThen(promise, onValue, onError);
  } catch (err) {
    userError(step, err);
  }
}

function startStep(step, code) {
  current = step;
  let exports;
  try {
    exports = compileCommonJS(step.filename, code);
  } catch (err) {
    if (!looksLikeModuleSyntax(err)) {
      userError(step, err);
      return;
    }
    const loaded = (namespace) => {
      if (step.finished) return;
      let fn;
      try {
        fn = exportedFunction(safeGet(namespace, 'default'));
      } catch (notFunction) {
        userError(step, notFunction);
        return;
      }
      callStep(step, fn);
    };
    const failed = (importErr) => userError(step, importErr);
    PromisePrototypeThen(importModule(step, code), loaded, failed);
    return;
  }
  let fn;
  try {
    fn = exportedFunction(exports);
  } catch (err) {
    userError(step, err);
    return;
  }
  callStep(step, fn);
}

// Errors that escape the step's promise chain: a throw in a timer, a rejection nobody handles.
// While a step runs they fail it; after it finished there is no step to blame, so they are only
// written to stderr.
function onStray(value, what) {
  const step = current;
  if (step !== null && !step.finished) {
    userError(step, value);
    return;
  }
  const described = describeThrown(value);
  const detail =
    described.stack !== '' ? described.stack : described.name + ': ' + described.message;
  writeOutside('error', 'sandboxd runner: ' + what + ' outside a step: ' + detail);
}

// ---------------------------------------------------------------------------------------------
// Egress: fetch, http and https through the daemon's egress proxy
// ---------------------------------------------------------------------------------------------

// A jail has no route out. Its one way to other hosts is the daemon's egress proxy, which listens
// on the jail's own loopback (EGRESS_PROXY_PORT in sandboxd/jail/spec.py) and applies the
// execution's egress policy. fetch and every http/https Agent reach other hosts through a CONNECT
// tunnel there (TLS stays end to end, certificates are verified in here); hosts on the jail's own
// loopback are reached directly, as before. This is how steps get their network, not a boundary:
// code that goes around it reaches nothing but the jail's own loopback.
//
// Unlike the frames above, the connector calls socket methods in the ordinary way: customer code
// that breaks them breaks only its own requests.
const EGRESS_PROXY_HOST = '127.0.0.1';
const EGRESS_PROXY_PORT = 3128;
const CONNECT_ANSWER_MAX_BYTES = 16 * 1024;
// A bound on waiting for the proxy's answer; the proxy bounds its own connects far below this.
const CONNECT_ANSWER_TIMEOUT_MS = 60 * 1000;
// The proxy's reason for a refusal: a denial by the policy, or a failure (DNS, connect, limits).
const DENIED_HEADER = 'x-sandboxd-egress-denied';
const ERROR_HEADER = 'x-sandboxd-egress-error';
const CRLFCRLF = [13, 10, 13, 10];

// The CA certificates of the exec frame's egress.caPem, added to Node's own, and the TLS context
// made of them, built at the first TLS connection that needs it (building a context from ~150
// certificates costs tens of milliseconds).
let egressCaList = null;
let egressSecureContext = null;

function egressError(code, target, detail) {
  const verb = code === 'EGRESS_DENIED' ? ' denied by the egress policy: ' : ' failed: ';
  const err = new ErrorCtor('egress to ' + target + verb + detail);
  defineOwn(err, 'code', code);
  return err;
}

// host:port as a CONNECT request names it: an IPv6 literal in brackets.
function authority(host, port) {
  return (netIsIP(host) === 6 ? '[' + host + ']' : host) + ':' + port;
}

// A host name or address without the brackets URLs put around IPv6 literals.
function bareHost(host) {
  const text = safeString(host);
  if (StringPrototypeStartsWith(text, '[') && text[text.length - 1] === ']') {
    return StringPrototypeSlice(text, 1, text.length - 1);
  }
  return text;
}

function isJailLocal(host) {
  const name = StringPrototypeToLowerCase(host);
  if (name === 'localhost' || name === '::1') return true;
  return netIsIP(name) === 4 && StringPrototypeStartsWith(name, '127.');
}

function portOf(port, fallback) {
  const number = NumberCtor(port);
  return port === undefined || port === null || port === '' || !(number > 0) ? fallback : number;
}

function findHeadEnd(bytes, length) {
  for (let i = 0; i + 4 <= length; i += 1) {
    if (
      bytes[i] === CRLFCRLF[0] &&
      bytes[i + 1] === CRLFCRLF[1] &&
      bytes[i + 2] === CRLFCRLF[2] &&
      bytes[i + 3] === CRLFCRLF[3]
    ) {
      return i;
    }
  }
  return -1;
}

// {status, reason, denied, error} of the proxy's answer head, or null when it is not HTTP/1.x.
function parseAnswer(text) {
  const lineEnd = StringPrototypeIndexOf(text, '\r\n');
  const statusLine = lineEnd === -1 ? text : StringPrototypeSlice(text, 0, lineEnd);
  const status = NumberCtor(StringPrototypeSlice(statusLine, 9, 12));
  if (!StringPrototypeStartsWith(statusLine, 'HTTP/1.') || statusLine[8] !== ' ') return null;
  if (!NumberIsSafeInteger(status) || status < 100) return null;
  const answer = {
    __proto__: null,
    status,
    reason: StringPrototypeTrim(StringPrototypeSlice(statusLine, 12)),
    denied: null,
    error: null,
  };
  let at = lineEnd;
  while (at !== -1) {
    const start = at + 2;
    at = StringPrototypeIndexOf(text, '\r\n', start);
    const line = StringPrototypeSlice(text, start, at === -1 ? text.length : at);
    const colon = StringPrototypeIndexOf(line, ':');
    if (colon <= 0) continue;
    const name = StringPrototypeToLowerCase(StringPrototypeSlice(line, 0, colon));
    const value = StringPrototypeTrim(StringPrototypeSlice(line, colon + 1));
    if (name === DENIED_HEADER) answer.denied = value;
    else if (name === ERROR_HEADER) answer.error = value;
  }
  return answer;
}

function answerError(target, answer) {
  if (answer === null) {
    return egressError('EGRESS_FAILED', target, 'the egress proxy sent a malformed answer');
  }
  if (answer.status === 403 && answer.denied !== null) {
    return egressError('EGRESS_DENIED', target, answer.denied || 'no reason given');
  }
  let detail = 'the egress proxy answered ' + answer.status;
  if (answer.reason !== '') detail += ' ' + answer.reason;
  if (answer.error) detail += ': ' + answer.error;
  return egressError('EGRESS_FAILED', target, detail);
}

// A TCP connection to host:port through the proxy: done(null, socket) once the proxy answered
// 200, else done(error) with code EGRESS_DENIED or EGRESS_FAILED. Never anything else: a refused
// connection to the proxy means the execution has no egress at all.
function openTunnel(host, port, done) {
  const target = authority(host, port);
  const socket = netConnect({ __proto__: null, host: EGRESS_PROXY_HOST, port: EGRESS_PROXY_PORT });
  let received = new U8(0);
  let settled = false;
  // Hand the socket on with the bytes that came after the answer's head back in front, or
  // destroy it and report err.
  function settle(err, after) {
    if (settled) return;
    settled = true;
    socket.removeListener('readable', onReadable);
    socket.removeListener('error', onError);
    socket.removeListener('end', onClosed);
    socket.removeListener('close', onClosed);
    socket.removeListener('timeout', onTimeout);
    socket.setTimeout(0);
    if (err !== null) {
      socket.destroy();
      done(err);
      return;
    }
    if (byteLengthOf(after) > 0) socket.unshift(after);
    done(null, socket);
  }
  function onError(err) {
    const code = safeString(safeGet(err, 'code'));
    if (code === 'ECONNREFUSED') {
      settle(egressError('EGRESS_DENIED', target, 'no egress is allowed for this execution'));
    } else {
      const detail = 'the connection to the egress proxy failed: ' + code;
      settle(egressError('EGRESS_FAILED', target, detail));
    }
  }
  function onClosed() {
    const detail = 'the egress proxy closed the connection before answering';
    settle(egressError('EGRESS_FAILED', target, detail));
  }
  function onTimeout() {
    const detail = `the egress proxy did not answer within ${CONNECT_ANSWER_TIMEOUT_MS / 1000} s`;
    settle(egressError('EGRESS_FAILED', target, detail));
  }
  function onReadable() {
    for (;;) {
      const chunk = socket.read();
      if (chunk === null) return;
      const grown = new U8(byteLengthOf(received) + byteLengthOf(chunk));
      TypedArraySet(grown, received, 0);
      TypedArraySet(grown, chunk, byteLengthOf(received));
      received = grown;
      const end = findHeadEnd(received, byteLengthOf(received));
      if (end !== -1) {
        onAnswer(end);
        return;
      }
      if (byteLengthOf(received) > CONNECT_ANSWER_MAX_BYTES) {
        const detail = `the egress proxy's answer is larger than ${CONNECT_ANSWER_MAX_BYTES} bytes`;
        settle(egressError('EGRESS_FAILED', target, detail));
        return;
      }
    }
  }
  function onAnswer(end) {
    const answer = parseAnswer(utf8Decode(view(received, 0, end)));
    if (answer === null || answer.status !== 200) {
      settle(answerError(target, answer));
      return;
    }
    settle(null, view(received, end + 4, byteLengthOf(received) - end - 4));
  }
  socket.setNoDelay(true);
  socket.setTimeout(CONNECT_ANSWER_TIMEOUT_MS);
  socket.on('readable', onReadable);
  socket.on('error', onError);
  socket.on('end', onClosed);
  socket.on('close', onClosed);
  socket.on('timeout', onTimeout);
  socket.write('CONNECT ' + target + ' HTTP/1.1\r\nHost: ' + target + '\r\n\r\n');
}

function egressContext() {
  if (egressCaList !== null && egressSecureContext === null) {
    egressSecureContext = tlsCreateSecureContext({ __proto__: null, ca: egressCaList });
  }
  return egressSecureContext;
}

// callback(null, socket) at the socket's `event`, or callback(error) at an error before it.
function whenReady(socket, event, callback) {
  function onReady() {
    socket.removeListener('error', onError);
    callback(null, socket);
  }
  function onError(err) {
    socket.removeListener(event, onReady);
    socket.destroy();
    callback(err);
  }
  socket.once(event, onReady);
  socket.once('error', onError);
}

// TLS to host, over `socket` (a tunnel) or to port: the host name goes into SNI and the
// certificate check; an address gets no SNI (RFC 6066) and is checked against the certificate's
// IP entries.
function connectTls(host, servername, socket, port, callback) {
  const options = { __proto__: null, host, port, socket, ALPNProtocols: ['http/1.1'] };
  if (netIsIP(host) === 0) options.servername = servername || host;
  let secureSocket;
  try {
    const context = egressContext();
    if (context !== null) options.secureContext = context;
    secureSocket = tlsConnect(options);
  } catch (err) {
    if (socket !== undefined) socket.destroy();
    callback(err);
    return;
  }
  whenReady(secureSocket, 'secureConnect', callback);
}

// The connector of fetch's dispatcher (undici's `connect` option): callback(null, socket) once
// the socket is ready for HTTP, TLS handshake done for https:, or callback(error).
function connectForFetch(options, callback) {
  const secure = options.protocol === 'https:';
  const host = bareHost(options.hostname);
  const port = portOf(options.port, secure ? 443 : 80);
  if (isJailLocal(host)) {
    if (secure) connectTls(host, options.servername, undefined, port, callback);
    else whenReady(netConnect({ __proto__: null, host, port }), 'connect', callback);
    return;
  }
  openTunnel(host, port, (err, socket) => {
    if (err) callback(err);
    else if (secure) connectTls(host, options.servername, socket, undefined, callback);
    else callback(null, socket);
  });
}

// fetch's dispatcher: an undici Agent like Node's own, with the connector above. Made from the
// class of the one Node created, which it replaces, once the fetch module has loaded.
let fetchDispatcher = null;

function ignore() {}

function routeFetch() {
  const current = globalThis[UNDICI_DISPATCHER];
  if (current !== undefined && current === fetchDispatcher) return;
  if (fetchDispatcher === null) {
    if (current === undefined) {
      // Loads the module (and its dispatcher) and fails on the URL before anything is sent.
      PromisePrototypeThen(ReflectApply(fetchBuiltin, undefined, ['http://[']), ignore, ignore);
    }
    const created = globalThis[UNDICI_DISPATCHER];
    if (created === undefined) {
      throw new ErrorCtor('sandboxd runner: cannot route fetch on Node ' + NODE_VERSION);
    }
    const Agent = created.constructor;
    fetchDispatcher = new Agent({ __proto__: null, connect: connectForFetch });
  }
  globalThis[UNDICI_DISPATCHER] = fetchDispatcher;
}

function fetch(input, init = undefined) {
  try {
    routeFetch();
  } catch (err) {
    return PromiseReject(err);
  }
  return ReflectApply(fetchBuiltin, undefined, [input, init]);
}

// http.Agent and https.Agent (the global agents and any a library makes) connect through the
// proxy. Node's Agent takes the socket from createConnection's callback when it returns nothing;
// a caller without a callback (none in Node itself) gets the original, direct connection.
function hostOfRequest(options) {
  return bareHost(options.host || options.hostname || 'localhost');
}

function createHttpConnection(options, oncreate) {
  const host = hostOfRequest(options);
  if (isJailLocal(host) || typeof oncreate !== 'function') {
    return ReflectApply(httpCreateConnection, this, arguments);
  }
  openTunnel(host, portOf(options.port, 80), oncreate);
  return undefined;
}

// Node's own https createConnection over the tunnel: it keeps the agent's TLS session cache.
function createHttpsConnection(options, oncreate) {
  const host = hostOfRequest(options);
  if (isJailLocal(host) || typeof oncreate !== 'function') {
    return ReflectApply(httpsCreateConnection, this, arguments);
  }
  const agent = this;
  openTunnel(host, portOf(options.port, 443), (err, socket) => {
    if (err) {
      oncreate(err);
      return;
    }
    const tlsOptions = { __proto__: null, ...options, socket };
    let secureSocket;
    try {
      const context = usesDefaultTrust(options) ? egressContext() : null;
      if (context !== null) tlsOptions.secureContext = context;
      secureSocket = ReflectApply(httpsCreateConnection, agent, [tlsOptions]);
    } catch (tlsErr) {
      socket.destroy();
      oncreate(tlsErr);
      return;
    }
    oncreate(null, secureSocket);
  });
  return undefined;
}

// A request that brings no TLS material of its own verifies with the operator's CAs too.
function usesDefaultTrust(options) {
  return (
    options.ca === undefined &&
    options.secureContext === undefined &&
    options.pfx === undefined &&
    options.cert === undefined
  );
}

function installEgress() {
  tls = require('tls');
  tlsConnect = tls.connect;
  tlsCreateSecureContext = tls.createSecureContext;
  HttpAgentPrototype = require('http').Agent.prototype;
  HttpsAgentPrototype = require('https').Agent.prototype;
  httpCreateConnection = HttpAgentPrototype.createConnection;
  httpsCreateConnection = HttpsAgentPrototype.createConnection;
  HttpAgentPrototype.createConnection = createHttpConnection;
  HttpsAgentPrototype.createConnection = createHttpsConnection;
  if (typeof fetchBuiltin !== 'function') return;
  ReflectDefineProperty(globalThis, 'fetch', {
    __proto__: null,
    value: fetch,
    writable: true,
    enumerable: true,
    configurable: true,
  });
}

// The exec frame's egress.caPem: CA certificates (PEM) trusted besides Node's own.
function setEgressCa(egress) {
  const caPem = egress !== null && typeof egress === 'object' ? own(egress, 'caPem', '') : '';
  if (typeof caPem !== 'string' || caPem === '') return;
  // Read only now (still before any step): Node builds the list on first access.
  const roots = tls.rootCertificates;
  const list = [];
  for (let i = 0; i < roots.length; i += 1) list[i] = roots[i];
  list[roots.length] = caPem;
  egressCaList = list;
  egressSecureContext = null;
}

// ---------------------------------------------------------------------------------------------
// Reading frames from fd 3
// ---------------------------------------------------------------------------------------------

const INITIAL_INPUT_BYTES = 64 * 1024;
const READ_BYTES = 1024 * 1024;
let inputBuffer = new U8(INITIAL_INPUT_BYTES);
let inputLength = 0;

// Frames wait in a linked list (no arrays: their methods can be replaced) until the runner is
// free: one step at a time, and `end` only after the steps sent before it.
let queueHead = null;
let queueTail = null;
let busy = false;

function enqueue(item) {
  if (queueTail === null) queueHead = item;
  else queueTail.next = item;
  queueTail = item;
}

// The buffer grows to the whole of the frame it holds first, once that frame's prefix is in:
// doubling from 64 KiB copied a 16 MiB input five times over and zeroed 32 MiB (30-60 ms in node
// alone, against 3-9 ms).
function appendInput(chunk) {
  const chunkLength = byteLengthOf(chunk);
  const needed = inputLength + chunkLength;
  if (needed > byteLengthOf(inputBuffer)) {
    let capacity = byteLengthOf(inputBuffer) * 2;
    while (capacity < needed) capacity *= 2;
    const grown = BufferAllocUnsafe(MathMax(capacity, firstFrameBytes(chunk)));
    TypedArraySet(grown, view(inputBuffer, 0, inputLength), 0);
    inputBuffer = grown;
  }
  TypedArraySet(inputBuffer, chunk, inputLength);
  inputLength = needed;
}

// The whole length of the frame at the start of the buffered input, with `chunk` appended; 0
// while its prefix is incomplete or its header is over the cap (parseFrames refuses that one).
function firstFrameBytes(chunk) {
  let bytes = inputBuffer;
  if (inputLength < PREFIX_BYTES) {
    if (inputLength !== 0 || byteLengthOf(chunk) < PREFIX_BYTES) return 0;
    bytes = chunk;
  }
  const headLength = getU32(bytes, 0);
  if (headLength > MAX_HEADER_BYTES) return 0;
  return PREFIX_BYTES + headLength + getU32(bytes, 4);
}

function parseHeader(bytes) {
  let header;
  try {
    header = JSONParse(utf8Decode(bytes));
  } catch (err) {
    fatal('frame header is not JSON: ' + safeString(safeGet(err, 'message')));
  }
  if (header === null || typeof header !== 'object' || typeof own(header, 't') !== 'string') {
    fatal("frame header is not an object with a string 't'");
  }
  return header;
}

// Split the buffered input into frames. Both bodies the runner receives are UTF-8 text.
function parseFrames() {
  let at = 0;
  while (inputLength - at >= PREFIX_BYTES) {
    const headLength = getU32(inputBuffer, at);
    const bodyLength = getU32(inputBuffer, at + 4);
    if (headLength === 0 || headLength > MAX_HEADER_BYTES) {
      fatal(`frame header of ${headLength} bytes`);
    }
    if (inputLength - at - PREFIX_BYTES < headLength + bodyLength) break;
    const header = parseHeader(view(inputBuffer, at + PREFIX_BYTES, headLength));
    const body = utf8Decode(view(inputBuffer, at + PREFIX_BYTES + headLength, bodyLength));
    enqueue({ __proto__: null, header, body, next: null });
    at += PREFIX_BYTES + headLength + bodyLength;
  }
  if (at === 0) return;
  inputLength -= at;
  if (byteLengthOf(inputBuffer) > 4 * INITIAL_INPUT_BYTES && inputLength < INITIAL_INPUT_BYTES) {
    // Give back the memory of a large frame (an input, a big step): it counts against the jail.
    const small = new U8(INITIAL_INPUT_BYTES);
    TypedArraySet(small, view(inputBuffer, at, inputLength), 0);
    inputBuffer = small;
  } else {
    TypedArrayCopyWithin(inputBuffer, 0, at, at + inputLength);
  }
}

function onExec(header, body) {
  let input = null;
  if (body !== '') {
    try {
      input = JSONParse(body);
    } catch (err) {
      fatal('exec input is not JSON: ' + safeString(safeGet(err, 'message')));
    }
  }
  execution = {
    __proto__: null,
    id: safeString(own(header, 'id', '')),
    tenantId: safeString(own(header, 'tenant', '')),
    attempt: own(header, 'attempt', 0),
    configVars: own(header, 'configVars', {}),
    credentials: own(header, 'credentials', {}),
    input,
  };
  setEgressCa(own(header, 'egress', null));
}

// A session step's own input arrives in an `input` frame right before its `step` frame.
let pendingInput = null;

function onInput(header, body) {
  let value = null;
  try {
    value = body === '' ? null : JSONParse(body);
  } catch (err) {
    fatal('step input is not JSON: ' + safeString(safeGet(err, 'message')));
  }
  pendingInput = { __proto__: null, seq: own(header, 'seq'), value };
}

function limit(header, key) {
  const value = own(header, key, Infinity);
  return typeof value === 'number' && value >= 0 ? value : Infinity;
}

function onStep(header, body) {
  const seq = own(header, 'seq');
  const name = own(header, 'name');
  if (!NumberIsSafeInteger(seq) || typeof name !== 'string') {
    fatal('step frame without seq and name');
  }
  const input = pendingInput !== null && pendingInput.seq === seq ? pendingInput : null;
  pendingInput = null;
  busy = true;
  startStep(
    {
      __proto__: null,
      seq,
      name,
      hasInput: input !== null,
      input: input === null ? null : input.value,
      filename: stepFilename(name),
      moduleURL: '', // set when the step is an ES module
      returnResult: own(header, 'returnResult', true) !== false,
      logBytes: limit(header, 'logBytes'),
      logLines: limit(header, 'logLines'),
      resultBytes: limit(header, 'resultBytes'),
      logUsed: 0,
      linesSent: 0,
      logDropped: false,
      logOverflow: 0, // UTF-16 units the step tried to log past its limit
      finished: false,
    },
    body,
  );
}

// Handle queued frames until a step is running.
function pump() {
  prepare();
  while (!busy && queueHead !== null) {
    const item = queueHead;
    queueHead = item.next;
    if (queueHead === null) queueTail = null;
    if (item.header === null) reallyExit(0); // EOF on fd 3: the daemon is gone
    const type = item.header.t;
    if (type === 'exec') onExec(item.header, item.body);
    else if (type === 'step') onStep(item.header, item.body);
    else if (type === 'input') onInput(item.header, item.body);
    else if (type === 'end') reallyExit(0);
    else fatal(`unknown frame type ${JSONStringify(type)}`);
  }
}

function listen() {
  // A net.Socket reads the pipe through the event loop, without holding a threadpool thread,
  // up to READ_BYTES at a time into one buffer of its own: by default libuv reads a pipe 64 KiB
  // at a time, each read a new Buffer and a 'data' event (256 of them for a 16 MiB input).
  const work = new net.Socket({
    fd: FD_WORK,
    readable: true,
    writable: false,
    onread: {
      buffer: new U8(READ_BYTES),
      callback: (length, buffer) => {
        appendInput(view(buffer, 0, length));
        parseFrames();
        pump();
      },
    },
  });
  work.on('end', () => {
    enqueue({ __proto__: null, header: null, body: '', next: null });
    pump();
  });
  work.on('error', (err) => fatal('cannot read fd 3: ' + safeString(safeGet(err, 'message'))));
}

// ---------------------------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------------------------

// Builtins that steps commonly use, loaded before the first frame so that steps do not pay for
// them.
const PRELOAD = [
  'fs', 'path', 'util', 'crypto', 'zlib', 'url', 'events', 'stream', 'buffer', 'querystring',
  'string_decoder',
];

// The runner says `ready` as soon as it can read frames, and loads the rest (about 8 ms: the
// preloads, http/https/tls for the egress connector, process.stdout and stderr) right after, in
// the time a warm jail waits for work anyway. The first frame waits for it if it comes sooner:
// pump() calls prepare() before it handles any frame, so every step, and the exec frame before
// it, finds the runner whole. No customer code runs before the first step frame.
let prepared = false;

function prepare() {
  if (prepared) return;
  prepared = true;
  for (let i = 0; i < PRELOAD.length; i += 1) require(PRELOAD[i]);
  installConsole();
  installStreams();
  installEgress();
  filterWarnings();
  process.on('uncaughtException', (err) => onStray(err, 'uncaught exception'));
  process.on('unhandledRejection', (reason) => onStray(reason, 'unhandled rejection'));
  rehearseStep();
}

// V8 compiles a function when it is first called, and Node's module compiler has first-use work
// of its own, so the first step used to pay for compiling much of the runner. This runs a step's
// own work once ahead (compile a module, call it with a context, serialize its result, encode a
// frame header) with nothing sent and nothing kept: it is the runner's code, not the customer's.
function rehearseStep() {
  const step = {
    __proto__: null,
    name: '_',
    hasInput: false,
    input: null,
    filename: stepFilename('_'),
  };
  const code = 'module.exports = (context) => ({ ok: context.execution.stepName === "_" });';
  const fn = exportedFunction(compileCommonJS(step.filename, code));
  serializeResult(ReflectApply(fn, undefined, [makeContext(step)]), true);
  serializeResult('', false);
  utf8Encode(JSONStringify({ __proto__: null, t: 'result', seq: 0, size: 0, kept: false }));
}

listen();
sendFrame({ __proto__: null, t: 'ready', node: NODE_VERSION });
setImmediate(prepare);
