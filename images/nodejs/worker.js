'use strict';
/*
 * Warm Node.js worker of a codeexec sandbox (CommonJS, no dependencies; started by the
 * supervisor). Preloads the common libraries, reports ready on the result pipe, then blocks for
 * one request on fd 0: checks the syntax, loads the user's code as the CommonJS module
 * `main.js`, calls `main(args)`, awaits a thenable and writes one result record
 * (docs/runner-protocol.md) before exiting. It never writes to stdout/stderr itself.
 */

const fs = require('fs');
const path = require('path');
const vm = require('vm');
const util = require('util');
const Module = require('module');
const { constants: osConstants } = require('os');

// Captured before the user's code runs, which may replace any of them on the globals.
const stringify = JSON.stringify;
const parse = JSON.parse;
const bufferFrom = Buffer.from.bind(Buffer);
const byteLength = Buffer.byteLength.bind(Buffer);
const writeSync = fs.writeSync;
const hardExit =
  typeof process.reallyExit === 'function' ? process.reallyExit.bind(process) : process.exit;
const errnoByCode = osConstants.errno;
const inspect = util.inspect;

const USER_FILE = 'main.js';
const MAX_RECORD_BYTES = 60 * 1024;
// The operator keeps a return value at most this deep (jsonbounds.MAX_RETURN_VALUE_DEPTH) and
// sends its limit as maxResultDepth; a deeper value is reported as omitted, not as an error.
const DEFAULT_MAX_DEPTH = 64;

// Reopening fd 3 gives a close-on-exec descriptor: the user's child processes do not inherit
// it, and fd 3 itself is free again, so no file of the user's can end up writing into our pipe.
function openResultFd() {
  try {
    const fd = fs.openSync('/proc/self/fd/3', fs.constants.O_WRONLY);
    fs.closeSync(3);
    return fd;
  } catch {
    return 3;
  }
}

const resultFd = openResultFd();
let finished = false;

function send(line) {
  const buf = bufferFrom(line + '\n', 'utf8');
  let off = 0;
  while (off < buf.length) {
    try {
      off += writeSync(resultFd, buf, off, buf.length - off);
    } catch (err) {
      if (err && err.code === 'EAGAIN') continue;
      return false;
    }
  }
  return true;
}

// `record` is an object, an already encoded line, or null (no record: the user's own exit).
function finish(record, code) {
  if (finished) return;
  finished = true;
  if (record !== null) {
    let line;
    try {
      line = typeof record === 'string' ? record : encodeRecord(record);
    } catch {
      line = stringify({ kind: 'error', phase: record.phase || 'run', type: 'Error',
        message: 'the error could not be described', traceback: null, causes: [] });
    }
    send(line);
  }
  // Writes to stdout/stderr block until the pipe takes them (makeStdioBlocking): nothing is
  // lost by leaving now, and timers or sockets the user left open must not keep the run alive.
  hardExit(code);
}

// -------------------------------------------------------------------------------------------
// error records

function describeType(err) {
  if (err === null) return 'null';
  if (typeof err !== 'object') return typeof err; // `throw "text"`, `throw 42`
  let name = '';
  let ctor = '';
  let errorLike = false;
  try {
    name = typeof err.name === 'string' ? err.name : '';
    const c = err.constructor;
    ctor = typeof c === 'function' && typeof c.name === 'string' ? c.name : '';
    errorLike = err instanceof Error || (name !== '' && typeof err.message === 'string');
  } catch {
    // a hostile getter: go with what we have
  }
  if (!errorLike) return 'object'; // `throw { code: 1 }`
  // `class MyError extends Error {}` keeps name "Error"; its constructor says more.
  if ((name === '' || name === 'Error') && ctor && ctor !== 'Error' && ctor !== 'Object') {
    return ctor;
  }
  return name || ctor || 'Error';
}

function describeMessage(err) {
  try {
    if (err !== null && typeof err === 'object' && typeof err.message === 'string') {
      return err.message;
    }
    if (typeof err === 'string') return err;
    return inspect(err, { depth: 2, breakLength: Infinity });
  } catch {
    return '<unprintable>';
  }
}

function osFields(err) {
  const out = {};
  if (err === null || typeof err !== 'object') return out;
  try {
    const code = typeof err.code === 'string' ? err.code : null;
    if (code !== null) out.code = code;
    if (typeof err.errno === 'number' && Number.isInteger(err.errno)) {
      // libuv reports -errno; give the positive errno where the code names one.
      out.errno = code !== null && errnoByCode[code] !== undefined ? errnoByCode[code] : err.errno;
    }
    if (typeof err.syscall === 'string') out.syscall = err.syscall;
    if (typeof err.path === 'string') out.filename = err.path;
  } catch {
    // a hostile getter: report what we have
  }
  return out;
}

function userStack(err, filename) {
  let stack;
  try {
    stack = err !== null && typeof err === 'object' ? err.stack : undefined;
  } catch {
    return null;
  }
  if (typeof stack !== 'string') return null;
  const lines = stack.split('\n');
  const firstFrame = lines.findIndex((l) => /^\s+at /.test(l));
  const header = firstFrame < 0 ? lines : lines.slice(0, firstFrame);
  const frames = firstFrame < 0 ? [] : lines.slice(firstFrame).filter((l) => l.includes(filename));
  return header.concat(frames).join('\n').split(filename).join(USER_FILE);
}

function causesOf(err) {
  const out = [];
  const seen = new Set([err]);
  let cur = err;
  for (;;) {
    let next;
    try {
      next = cur !== null && typeof cur === 'object' ? cur.cause : undefined;
    } catch {
      break;
    }
    if (next === undefined || next === null || seen.has(next) || out.length >= 8) break;
    seen.add(next);
    const entry = { type: describeType(next), message: describeMessage(next).slice(0, 1024) };
    const fields = osFields(next);
    if (fields.errno !== undefined) entry.errno = fields.errno;
    if (fields.code !== undefined) entry.code = fields.code;
    out.push(entry);
    cur = next;
  }
  return out;
}

function errorRecord(phase, err, filename) {
  return Object.assign(
    {
      kind: 'error',
      phase,
      type: describeType(err),
      message: describeMessage(err),
      traceback: userStack(err, filename),
    },
    osFields(err),
    { causes: causesOf(err) },
  );
}

function shorten(text, limit) {
  if (typeof text !== 'string' || text.length <= limit) return text;
  const head = Math.floor(limit / 8);
  return text.slice(0, head) + '\n... (cut) ...\n' + text.slice(text.length - (limit - head));
}

function encodeRecord(record) {
  if (record.kind !== 'error') return stringify(record);
  for (let limit = 32 * 1024; ; limit = Math.floor(limit / 2)) {
    const rec = Object.assign({}, record, {
      message: shorten(record.message, Math.floor(limit / 4)),
      traceback: shorten(record.traceback, limit),
    });
    if (limit < 1024) rec.causes = [];
    const line = stringify(rec);
    if (byteLength(line, 'utf8') <= MAX_RECORD_BYTES || limit < 64) return line;
  }
}

// -------------------------------------------------------------------------------------------
// JSON check: JSON.stringify's own rules, except that it would silently turn these into null
// or {} (or throw without saying where): BigInt, NaN/Infinity, cycles, functions, symbols and
// undefined in arrays or at the top level, Map and Set.

class Unserializable extends Error {
  constructor(kind, where) {
    super(kind);
    this.kind = kind;
    this.where = where;
  }
}

function checkJson(value, maxDepth) {
  const ancestors = [];
  const keys = []; // the path to the value being checked; spelled out only for the message
  const where = () => '$' + keys.map((k) => `[${typeof k === 'number' ? k : stringify(k)}]`).join('');
  const walk = (key, v, context) => {
    if (v !== null && (typeof v === 'object' || typeof v === 'bigint') &&
        typeof v.toJSON === 'function') {
      v = v.toJSON(key);
    }
    if (v === null) return;
    switch (typeof v) {
      case 'string':
      case 'boolean':
        return;
      case 'number':
        if (Number.isNaN(v)) throw new Unserializable('NaN', where());
        if (!Number.isFinite(v)) throw new Unserializable(v > 0 ? 'Infinity' : '-Infinity', where());
        return;
      case 'bigint':
        throw new Unserializable('bigint', where());
      case 'undefined':
        // A main without `return` gives undefined: that is null, like Python's None.
        if (context === 'object' || context === 'top') return;
        throw new Unserializable('undefined', where());
      case 'function':
      case 'symbol':
        if (context === 'object') return; // JSON.stringify leaves such properties out
        throw new Unserializable(typeof v, where());
      default:
        break;
    }
    if (v instanceof Number || v instanceof String || v instanceof Boolean) return;
    if (v instanceof Map || v instanceof Set || v instanceof WeakMap || v instanceof WeakSet) {
      throw new Unserializable(v.constructor.name, where());
    }
    if (ancestors.includes(v)) throw new Unserializable('cycle', where());
    if (ancestors.length >= maxDepth) throw new Unserializable('NestingTooDeep', where());
    ancestors.push(v);
    if (Array.isArray(v)) {
      for (let i = 0; i < v.length; i++) {
        keys.push(i);
        walk(String(i), v[i], 'array');
        keys.pop();
      }
    } else {
      for (const k of Object.keys(v)) {
        keys.push(k);
        walk(k, v[k], 'object');
        keys.pop();
      }
    }
    ancestors.pop();
  };
  walk('', value, 'top');
}

function article(kind) {
  if (kind === 'cycle') return 'a reference cycle';
  if (kind === 'NaN' || kind === 'Infinity' || kind === '-Infinity') return kind;
  return /^[aeiou]/i.test(kind) ? `an ${kind}` : `a ${kind}`;
}

// Deepest nesting of a JSON text, counted outside strings ({} is 1).
function textDepth(text) {
  const brackets = text.replace(/"(?:[^"\\]|\\.)*"/g, '').replace(/[^[\]{}]+/g, '');
  let level = 0;
  let deepest = 0;
  for (const c of brackets) {
    level += c === '[' || c === '{' ? 1 : -1;
    if (level > deepest) deepest = level;
  }
  return deepest;
}

// A value main returned that is not sent back: the run still succeeded.
function omitted(why, size) {
  return { omitted: stringify({ kind: 'returned', value: null, omitted: why, bytes: size }) };
}

function serialize(value, maxBytes, maxDepth) {
  try {
    checkJson(value, maxDepth);
    const text = value === undefined ? 'null' : stringify(value);
    const size = byteLength(text, 'utf8');
    if (size > maxBytes) return omitted('TooLarge', size);
    // toJSON may have built something deeper than what was checked.
    if (text.length > 2 * maxDepth && textDepth(text) > maxDepth) return omitted('TooDeep', size);
    return { text };
  } catch (err) {
    if (err instanceof Unserializable) {
      if (err.kind === 'NestingTooDeep') return omitted('TooDeep', null);
      return { problem: { kind: 'error', phase: 'serialize', type: err.kind,
        message: `the return value at ${err.where} is ${article(err.kind)}, ` +
          'which JSON cannot represent',
        traceback: null, causes: [] } };
    }
    // A throwing getter or toJSON, or a stack overflow on a huge structure.
    const rec = errorRecord('serialize', err, '\0');
    rec.traceback = null;
    return { problem: rec };
  }
}

// -------------------------------------------------------------------------------------------
// the run

function preload() {
  const names = (process.env.CODEEXEC_PRELOAD === undefined ? 'axios' : process.env.CODEEXEC_PRELOAD)
    .split(',').map((s) => s.trim()).filter(Boolean);
  for (const name of names) {
    try {
      require(name);
    } catch {
      // a missing library only costs its users a require later
    }
  }
}

function readRequest() {
  const chunks = [];
  const buf = Buffer.alloc(65536);
  for (;;) {
    let n;
    try {
      n = fs.readSync(0, buf, 0, buf.length, null);
    } catch (err) {
      if (err.code === 'EAGAIN' || err.code === 'EINTR') {
        Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
        continue;
      }
      if (err.code === 'EOF') return null;
      throw err;
    }
    if (n === 0) return null;
    const nl = buf.indexOf(10);
    if (nl >= 0 && nl < n) {
      chunks.push(Buffer.from(buf.subarray(0, nl)));
      break;
    }
    chunks.push(Buffer.from(buf.subarray(0, n)));
  }
  return parse(Buffer.concat(chunks).toString('utf8'));
}

function syntaxCheck(code, filename) {
  try {
    // The same parameters the CommonJS loader wraps a module in.
    vm.compileFunction(code, ['exports', 'require', 'module', '__filename', '__dirname'],
      { filename });
    return null;
  } catch (err) {
    const rec = errorRecord('compile', err, filename);
    const stack = typeof err.stack === 'string' ? err.stack : '';
    // V8 decorates a SyntaxError's stack with "<file>:<line>", the line, and a caret line.
    const m = /^(.*):(\d+)$/.exec(stack.split('\n', 1)[0]);
    if (m && m[1] === filename) {
      rec.line = Number(m[2]);
      const caretLine = stack.split('\n')[2] || '';
      const col = caretLine.indexOf('^');
      if (col >= 0 && /^[\s^]*$/.test(caretLine)) rec.column = col + 1;
      const snippet = stack.split('\n').slice(1, 3).join('\n');
      rec.traceback = `${USER_FILE}:${rec.line}\n${snippet}\n\n${describeType(err)}: ${rec.message}`;
    } else {
      rec.traceback = `${describeType(err)}: ${rec.message}`;
    }
    return rec;
  }
}

function run(request) {
  const code = typeof request.code === 'string' ? request.code : '';
  const args = request.arguments !== null && typeof request.arguments === 'object'
    ? request.arguments : {};
  const maxResult = Number.isInteger(request.maxResultBytes) ? request.maxResultBytes : 1 << 20;
  const maxDepth = Number.isInteger(request.maxResultDepth) && request.maxResultDepth > 0
    ? request.maxResultDepth : DEFAULT_MAX_DEPTH;
  const filename = path.join(process.cwd(), USER_FILE);

  const compileProblem = syntaxCheck(code, filename);
  if (compileProblem !== null) return finish(compileProblem, 1);

  let pending = false;
  const onAsyncError = (err) => finish(errorRecord('run', err, filename), 1);
  process.on('uncaughtException', onAsyncError);
  process.on('unhandledRejection', onAsyncError);
  process.on('beforeExit', () => {
    // The event loop ran dry while main's promise was pending: nothing can settle it now.
    if (pending) {
      finish({ kind: 'error', phase: 'run', type: 'PromiseNeverSettled',
        message: 'main returned a promise that can never settle: the event loop is empty',
        traceback: null, causes: [] }, 1);
    }
  });

  const mod = new Module(filename, null);
  mod.filename = filename;
  mod.paths = Module._nodeModulePaths(path.dirname(filename));
  Module._cache[filename] = mod;
  process.argv = [process.argv[0], filename];
  let main;
  try {
    mod._compile(code, filename);
    mod.loaded = true;
    const exported = mod.exports;
    if (typeof exported === 'function') main = exported;
    else if (exported !== null && typeof exported === 'object' && typeof exported.main === 'function') {
      main = exported.main;
    }
  } catch (err) {
    return finish(errorRecord('run', err, filename), 1);
  }
  if (main === undefined) {
    return finish({ kind: 'error', phase: 'entrypoint', type: 'MainNotFound',
      message: 'the code exports no main function; expected `module.exports = main`, ' +
        '`module.exports = { main }` or `exports.main = ...`',
      traceback: null, causes: [] }, 1);
  }

  const done = (value) => {
    pending = false;
    const { text, problem, omitted: left } = serialize(value, maxResult, maxDepth);
    if (left) return finish(left, 0); // main returned; the value is only not sent back
    if (problem) return finish(problem, 1);
    return finish(`{"kind":"returned","value":${text}}`, 0);
  };
  let value;
  try {
    value = main(args);
  } catch (err) {
    return finish(errorRecord('run', err, filename), 1);
  }
  let isThenable = false;
  try {
    isThenable = value !== null && (typeof value === 'object' || typeof value === 'function') &&
      typeof value.then === 'function';
  } catch (err) {
    return finish(errorRecord('run', err, filename), 1);
  }
  if (!isThenable) return done(value);
  pending = true;
  Promise.resolve(value).then(done, (err) => {
    pending = false;
    finish(errorRecord('run', err, filename), 1);
  });
  return undefined;
}

// libuv makes stdio pipes non-blocking and queues what does not fit in memory, to be flushed
// by an event loop that a busy user loop never yields to: output would pile up in the heap
// instead of reaching the supervisor (which counts it, caps it, keeps it across a kill).
function makeStdioBlocking() {
  for (const stream of [process.stdout, process.stderr]) {
    try {
      const handle = stream._handle;
      if (handle && typeof handle.setBlocking === 'function') handle.setBlocking(true);
    } catch {
      // not a pipe (a file or a TTY): writes there are synchronous already
    }
  }
}

function startup() {
  makeStdioBlocking();
  preload();
  const usage = process.cpuUsage();
  send(stringify({ kind: 'ready', cpuMs: (usage.user + usage.system) / 1000 }));
  let request;
  try {
    request = readRequest();
  } catch {
    request = null;
  }
  // The supervisor always sends a JSON object; anything else means it went away.
  if (request === null || typeof request !== 'object') return hardExit(70);
  return run(request);
}

startup();
