// Kiln isolate host: runs untrusted JavaScript workloads in V8 isolates.
//
// Protocol: one JSON object per line; stdin from Kiln, stdout to Kiln, diagnostics on stderr.
//   in:  {"type":"run","id":s,"code":s,"input":any,"mem_mb":n,"timeout_ms":n}  {"type":"kill","id":s}
//   out: {"type":"ready"}                                   once, when runs can execute
//        {"type":"log","id":s,"stream":"stdout"|"stderr","line":s}   as it happens; may hold \n
//        {"type":"result","id":s,"output":any}               exactly one result or error per run
//        {"type":"result","id":s,"output":s,"truncated":true} a result whose JSON text is over
//                                                             1 Mi characters: its start, as a string
//        {"type":"error","id":s,"reason":r,"error":s}        r: exception|timeout|memory|killed|crash
//        {"type":"error","id":null,"reason":"protocol","error":s}    unusable input line
// The host exits when stdin closes. Requires Node 20 (uses Node internals; see workloadMain).
//
// One file, three roles (chosen at the bottom):
//
//   supervisor  (the process Kiln starts)   speaks the protocol, queues runs, owns a pool of
//                                           executor processes, watches their memory.
//   executor    (`--kiln-executor`, forked) runs ONE workload at a time, in a worker thread.
//   workload    (worker thread of executor) builds a vm context and runs the user's module.
//
// Why executor processes and not just worker threads in the supervisor: `resourceLimits` is
// best-effort. A worker that makes one big heap allocation past its limit (e.g.
// `new Array(1e9).fill(1)`, or a large `push` loop) does not get ERR_WORKER_OUT_OF_MEMORY; V8
// calls FatalProcessOutOfMemory and aborts the WHOLE process (nodejs/node#47224, reproduced
// here on Node 20). Off-heap memory (ArrayBuffers) is not limited by resourceLimits at all.
// So the code that can die runs in a process of its own, one workload per process at a time,
// which makes both a V8 abort and the RSS-based off-heap limit attributable to exactly one run.
// Executors are reused and pre-warmed (each keeps a booted worker ready), so the extra layer
// costs a few ms per run, not a process start.

import { Worker, isMainThread, parentPort } from 'node:worker_threads';
import { fork } from 'node:child_process';
import { createInterface } from 'node:readline';
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import vm from 'node:vm';

const HOST_PATH = fileURLToPath(import.meta.url);
// Worker-only flags (the supervisor and executors run plain): SourceTextModule needs
// --experimental-vm-modules on Node 20; --expose-internals gives the worker the
// internalBinding it needs to replace Node's isolate-wide hooks (see workloadMain);
// --no-warnings hides the warnings both print on every worker start.
const WORKER_EXEC_ARGV = ['--experimental-vm-modules', '--expose-internals', '--no-warnings'];

const env = (name, fallback) => {
  const n = Number(process.env[name]);
  return Number.isFinite(n) && n >= 0 ? n : fallback;
};
// Idle executors kept booted (each holds a warm worker) so a run rarely waits for a start.
const SPARES = env('KILN_ISOLATE_SPARES', 2);
// Hard cap on executor processes; runs beyond it queue.
const MAX_PROCS = Math.max(1, env('KILN_ISOLATE_MAX_PROCS', 64));
// Extra idle executors (beyond SPARES) left over from a burst exit after this long.
const IDLE_RETIRE_MS = 15_000;
// An executor is replaced after this many runs, to bound anything that accumulates in it.
const MAX_RUNS_PER_PROC = 200;
// Process RSS allowed above (idle baseline + mem_mb): covers the young generation, code space,
// V8's 16 MB out-of-memory leeway and allocator slack, so a workload that stays within its
// heap limit never trips the RSS check; anything beyond is off-heap growth (ArrayBuffers).
const RSS_SLACK_MB = 96;
const RSS_POLL_MS = 20;
// If an executor does not report within timeout_ms + this, it is SIGKILLed (it may be stuck
// in something worker.terminate() cannot interrupt, e.g. a huge compile).
const BACKSTOP_GRACE_MS = 3_000;
const KILL_GRACE_MS = 1_000;
const MAX_TIMEOUT_MS = 2 ** 31 - 1; // setTimeout's range
const MAX_MEM_MB = 1 << 20;

const memMessage = (mb) => `memory limit of ${mb} MB exceeded`;

// ---------------------------------------------------------------------------------------------
// In-context bootstrap.
//
// This function is never called in the host realm: its SOURCE is compiled inside the
// workload's vm context (see workloadMain), so every object it creates (console, its methods,
// timers, thrown errors) belongs to the context realm, and `x.constructor.constructor` on any
// of them yields the context's Function, which cannot see the host. It must therefore not
// reference anything outside itself. Its only link to the host is `bridge`, kept in this
// closure and never stored where user code can reach it; `bridge` receives primitives only
// (plus the bootstrap's own timer thunks) and never throws into the context.
//
// It also provides the functions that replace Node's isolate-wide hooks (stack formatting,
// dynamic import, import.meta): V8 calls those synchronously on the workload's stack, and a
// stack overflow inside a host-realm function creates a HOST-realm RangeError, which V8 then
// hands to the workload (verified: `new Error().stack` or `import()` at the stack's edge gave
// the host's Function, hence `process`). Context-realm hooks can only ever overflow into
// context-realm errors.
// ---------------------------------------------------------------------------------------------
function kilnBootstrap(bridge) {
  'use strict';
  const G = globalThis;
  const { apply, ownKeys, getPrototypeOf } = Reflect;
  const { getOwnPropertyDescriptor, defineProperty, is } = Object;
  const { stringify, parse } = JSON;
  // Captured up front so user code patching prototypes only garbles its own log output.
  const call = (fn) => (self, ...args) => apply(fn, self, args);
  const getter = (proto, key) => call(getOwnPropertyDescriptor(proto, key).get);
  const objToString = call(Object.prototype.toString);
  const fnToString = call(Function.prototype.toString);
  const symToString = call(Symbol.prototype.toString);
  const errToString = call(Error.prototype.toString);
  const dateTime = call(Date.prototype.getTime);
  const dateISO = call(Date.prototype.toISOString);
  const reToString = call(RegExp.prototype.toString);
  const mapSize = getter(Map.prototype, 'size');
  const mapEntries = call(Map.prototype.entries);
  const setSize = getter(Set.prototype, 'size');
  const setValues = call(Set.prototype.values);
  const taTag = getter(getPrototypeOf(Uint8Array.prototype), Symbol.toStringTag);
  const taLength = getter(getPrototypeOf(Uint8Array.prototype), 'length');
  const abLength = getter(ArrayBuffer.prototype, 'byteLength');
  const reSource = getter(RegExp.prototype, 'source');
  const promiseThen = call(Promise.prototype.then);
  const CtxPromise = Promise;
  const resolved = Promise.resolve();
  const now = Date.now;
  const isArray = Array.isArray;
  const CtxRangeError = RangeError, CtxTypeError = TypeError;

  const MAX_LINE = 1 << 20; // characters per console call
  const MAX_ITEMS = 100;
  const DEPTH = 2;

  // Every host call goes through here. The bridge swallows its own errors, so the only thing
  // that can come out is a stack overflow raised on entry, which would be a HOST-realm
  // RangeError (its constructor leads to the host Function); it is replaced, never exposed.
  function host(op, a, b, c) {
    try {
      return bridge(op, a, b, c);
    } catch {
      throw new CtxRangeError('Maximum call stack size exceeded');
    }
  }

  // ---- formatting, after util.format / util.inspect (single-line, depth 2) -----------------
  const brand = (check) => (v) => {
    try { check(v); return true; } catch { return false; }
  };
  const isDate = brand(dateTime), isMap = brand(mapSize), isSet = brand(setSize);
  const isTyped = (v) => { try { return taTag(v) !== undefined; } catch { return false; } };
  const isBuffer = brand(abLength);
  const isRegExp = (v) => v !== RegExp.prototype && brand(reSource)(v);
  const isError = (v) => {
    try { return v instanceof Error || objToString(v) === '[object Error]'; } catch { return false; }
  };
  const IDENT = /^[A-Za-z_$][\w$]*$/;
  const INDEX = /^(?:0|[1-9]\d*)$/;
  const ESC = { '\\': '\\\\', '\n': '\\n', '\r': '\\r', '\t': '\\t', "'": "\\'" };
  const quote = (s) => (s.includes("'") && !s.includes('"')
    ? '"' + s.replace(/[\\\n\r\t]/g, (c) => ESC[c]) + '"'
    : "'" + s.replace(/[\\\n\r\t']/g, (c) => ESC[c]) + "'");

  // Host frames (this bootstrap, the worker's module, node internals) mean nothing to the
  // workload's author and would reveal host paths.
  const HOST_FRAME = /^\s+at\s.*(?:kiln:bootstrap|node:|file:\/\/)/;
  const HOST_FILE = /^(?:kiln:bootstrap$|node:|file:|\/)/;
  const trimStack = (s) => s.split('\n').filter((l) => !HOST_FRAME.test(l)).join('\n');

  function ctorName(v) {
    let o = v;
    for (let i = 0; i < 100 && o !== null; i++, o = getPrototypeOf(o)) {
      const d = getOwnPropertyDescriptor(o, 'constructor');
      if (d && typeof d.value === 'function') {
        const n = d.value.name;
        if (typeof n === 'string' && n) return n;
      }
    }
    return o === null ? null : 'Object';
  }

  function fnLabel(f) {
    let src = '', name = '';
    try { src = fnToString(f); } catch {}
    try { if (typeof f.name === 'string') name = f.name; } catch {}
    if (/^class\b/.test(src)) return `[class ${name || '(anonymous)'}]`;
    const kind = /^async\s*(?:function\s*)?\*/.test(src) ? 'AsyncGeneratorFunction'
      : /^async\b/.test(src) ? 'AsyncFunction'
        : /^(?:function\s*)?\*/.test(src) ? 'GeneratorFunction' : 'Function';
    return name ? `[${kind}: ${name}]` : `[${kind} (anonymous)]`;
  }

  function errorText(e) {
    let s;
    try { s = e.stack; } catch {}
    if (typeof s === 'string' && s) return trimStack(s);
    try { return '[' + errToString(e) + ']'; } catch { return '[Error]'; }
  }

  function prop(obj, key, level, seen) {
    const k = typeof key === 'symbol' ? '[' + symToString(key) + ']' : IDENT.test(key) ? key : quote(key);
    const d = getOwnPropertyDescriptor(obj, key);
    if (!d) return k + ': undefined';
    if (d.get || d.set) return k + ': ' + (d.get && d.set ? '[Getter/Setter]' : d.get ? '[Getter]' : '[Setter]');
    return k + ': ' + inspect(d.value, level + 1, seen);
  }

  function enumKeys(obj, skipIndices) {
    const out = [];
    for (const k of ownKeys(obj)) {
      if (skipIndices && typeof k === 'string' && INDEX.test(k)) continue;
      const d = getOwnPropertyDescriptor(obj, k);
      if (d && d.enumerable) out.push(k);
    }
    return out;
  }

  function inspect(v, level, seen) {
    switch (typeof v) {
      case 'string': return quote(v);
      case 'number': return is(v, -0) ? '-0' : '' + v;
      case 'bigint': return v + 'n';
      case 'boolean': case 'undefined': return '' + v;
      case 'symbol': return symToString(v);
      case 'function': return fnLabel(v);
    }
    if (v === null) return 'null';
    if (seen.includes(v)) return '[Circular *1]';
    if (isError(v)) return errorText(v);
    if (isDate(v)) return Number.isNaN(dateTime(v)) ? 'Invalid Date' : dateISO(v);
    if (isRegExp(v)) return reToString(v);
    if (level > DEPTH) return isArray(v) ? '[Array]' : '[' + (ctorName(v) || 'Object') + ']';
    seen.push(v);
    try {
      const parts = [];
      let prefix = '', open = '{', close = '}', extra = true;
      const more = (n) => n > 0 && parts.push(`... ${n} more item${n > 1 ? 's' : ''}`);
      if (isArray(v)) {
        open = '['; close = ']';
        const len = v.length, c = ctorName(v);
        if (c !== 'Array') prefix = `${c}(${len}) `;
        const empty = (n) => parts.push(`<${n} empty item${n > 1 ? 's' : ''}>`);
        let i = 0, holes = 0;
        // Bounded scan: `new Array(1e9)` is one hole run that must not take a billion steps.
        for (; i < len && i < 10 * MAX_ITEMS && parts.length < MAX_ITEMS; i++) {
          if (!(i in v)) { holes++; continue; }
          if (holes) { empty(holes); holes = 0; }
          parts.push(inspect(v[i], level + 1, seen));
        }
        if (holes) empty(holes);
        more(len - i);
        extra = len <= 10_000; // listing own keys of a huge array would be its own DoS
      } else if (isTyped(v)) {
        open = '['; close = ']';
        const len = taLength(v);
        prefix = `${taTag(v)}(${len}) `;
        for (let i = 0; i < len && i < MAX_ITEMS; i++) parts.push(inspect(v[i], level + 1, seen));
        more(len - MAX_ITEMS);
        extra = false;
      } else if (isMap(v)) {
        prefix = `Map(${mapSize(v)}) `;
        for (const [k, val] of mapEntries(v)) {
          if (parts.length >= MAX_ITEMS) break;
          parts.push(inspect(k, level + 1, seen) + ' => ' + inspect(val, level + 1, seen));
        }
        more(mapSize(v) - MAX_ITEMS);
      } else if (isSet(v)) {
        prefix = `Set(${setSize(v)}) `;
        for (const val of setValues(v)) {
          if (parts.length >= MAX_ITEMS) break;
          parts.push(inspect(val, level + 1, seen));
        }
        more(setSize(v) - MAX_ITEMS);
      } else if (isBuffer(v)) {
        prefix = 'ArrayBuffer ';
        parts.push('byteLength: ' + abLength(v));
      } else {
        const c = ctorName(v);
        prefix = c === null ? '[Object: null prototype] ' : c === 'Object' ? '' : c + ' ';
      }
      if (extra) for (const k of enumKeys(v, open === '[')) parts.push(prop(v, k, level, seen));
      return parts.length ? `${prefix}${open} ${parts.join(', ')} ${close}` : `${prefix}${open}${close}`;
    } finally {
      seen.pop();
    }
  }

  const show = (v) => (typeof v === 'string' ? v : inspect(v, 0, []));

  function format(args) {
    let first = args[0], i = 1, out = '';
    if (typeof first === 'string' && args.length > 1) {
      let last = 0;
      for (let p = 0; p < first.length - 1; p++) {
        if (first[p] !== '%') continue;
        const f = first[p + 1];
        let rep;
        if (f === '%') rep = '%';
        else if (i >= args.length) continue;
        else {
          const a = args[i];
          switch (f) {
            case 's': rep = typeof a === 'bigint' ? a + 'n' : typeof a === 'symbol' ? symToString(a)
              : typeof a === 'object' && a !== null ? inspect(a, 1, []) : typeof a === 'number' && is(a, -0) ? '-0' : '' + a; break;
            case 'd': rep = typeof a === 'bigint' ? a + 'n' : typeof a === 'symbol' ? 'NaN' : '' + Number(a); break;
            case 'i': rep = typeof a === 'bigint' ? a + 'n' : typeof a === 'symbol' ? 'NaN' : '' + parseInt(a); break;
            case 'f': rep = typeof a === 'symbol' ? 'NaN' : '' + parseFloat(a); break;
            case 'j': try { rep = '' + stringify(a); } catch { rep = '[Circular]'; } break;
            case 'o': case 'O': rep = inspect(a, 0, []); break;
            case 'c': rep = ''; break;
            default: continue;
          }
          i++;
        }
        out += first.slice(last, p) + rep;
        last = p + 2;
        p++;
      }
      out += first.slice(last);
    } else {
      out = show(first);
      if (args.length === 0) out = '';
    }
    for (; i < args.length; i++) out += ' ' + show(args[i]);
    return out;
  }

  // ---- console ------------------------------------------------------------------------------
  let indent = '';
  // One console call sends at most MAX_LINE characters, its group indentation counted: the
  // cap came before the indent, so a call of a million newlines ten groups deep sent 21 MB
  // (and, split at its newlines, a million lines).
  function emit(stream, text) {
    if (indent) {
      const parts = text.split('\n');
      const total = text.length + indent.length * parts.length;
      if (total > MAX_LINE) {
        let out = '';
        for (const part of parts) {
          out += (out ? '\n' : '') + indent + part;
          if (out.length >= MAX_LINE) break;
        }
        text = out.slice(0, MAX_LINE) + ` ... [${total - MAX_LINE} more characters truncated]`;
        host('log', stream, text);
        return;
      }
      text = indent + parts.join('\n' + indent);
    }
    if (text.length > MAX_LINE) text = text.slice(0, MAX_LINE) + ` ... [${text.length - MAX_LINE} more characters truncated]`;
    host('log', stream, text);
  }
  const counts = new Map(), times = new Map();
  const label = (l) => (l === undefined ? 'default' : '' + l);
  const console = {
    log(...args) { emit('stdout', format(args)); },
    info(...args) { emit('stdout', format(args)); },
    debug(...args) { emit('stdout', format(args)); },
    error(...args) { emit('stderr', format(args)); },
    warn(...args) { emit('stderr', format(args)); },
    dir(obj) { emit('stdout', inspect(obj, 0, [])); },
    table(...args) { emit('stdout', format(args)); },
    trace(...args) {
      const frames = trimStack(new Error().stack || '').split('\n').slice(2).join('\n');
      emit('stderr', 'Trace' + (args.length ? ': ' + format(args) : '') + (frames ? '\n' + frames : ''));
    },
    assert(ok, ...args) { if (!ok) emit('stderr', 'Assertion failed' + (args.length ? ': ' + format(args) : '')); },
    count(l) { const k = label(l), n = (counts.get(k) || 0) + 1; counts.set(k, n); emit('stdout', `${k}: ${n}`); },
    countReset(l) { counts.delete(label(l)); },
    time(l) { times.set(label(l), now()); },
    timeLog(l, ...args) { const k = label(l); if (times.has(k)) emit('stdout', `${k}: ${now() - times.get(k)}ms` + (args.length ? ' ' + format(args) : '')); },
    timeEnd(l) { const k = label(l); if (times.has(k)) { emit('stdout', `${k}: ${now() - times.get(k)}ms`); times.delete(k); } },
    group(...args) { if (args.length) console.log(...args); indent += '  '; },
    groupCollapsed(...args) { console.group(...args); },
    groupEnd() { indent = indent.slice(2); },
  };

  // ---- failures -------------------------------------------------------------------------------
  function describe(e) {
    try {
      if (e !== null && (typeof e === 'object' || typeof e === 'function')) return isError(e) ? errorText(e) : 'Uncaught ' + inspect(e, 0, []);
      return typeof e === 'string' ? e : 'Uncaught ' + inspect(e, 0, []);
    } catch {
      return 'Uncaught exception (could not be described)';
    }
  }
  const fail = (e) => host('fail', describe(e));

  // ---- timers: host timers run our thunks, so user callbacks never see a host Timeout -------
  function schedule(fn, ms, args, repeat) {
    if (typeof fn !== 'function') throw new CtxTypeError('The "callback" argument must be of type function. Received ' + inspect(fn, 0, []));
    ms = +ms;
    if (!(ms >= 1 && ms <= 2147483647)) ms = 1;
    return host('timer', () => { try { apply(fn, undefined, args); } catch (e) { fail(e); } }, ms, repeat);
  }
  const clear = (id) => { if (typeof id === 'number') host('clear', id); };
  const globals = {
    console,
    setTimeout: function setTimeout(fn, ms, ...args) { return schedule(fn, ms, args, false); },
    setInterval: function setInterval(fn, ms, ...args) { return schedule(fn, ms, args, true); },
    setImmediate: function setImmediate(fn, ...args) { return schedule(fn, 0, args, false); },
    clearTimeout: function clearTimeout(id) { clear(id); },
    clearInterval: function clearInterval(id) { clear(id); },
    clearImmediate: function clearImmediate(id) { clear(id); },
    queueMicrotask: function queueMicrotask(fn) {
      if (typeof fn !== 'function') throw new CtxTypeError('The "callback" argument must be of type function');
      promiseThen(resolved, () => { try { fn(); } catch (e) { fail(e); } });
    },
  };
  // V8's own console builtin is deleted first, so deleting ours cannot uncover it.
  delete G.console;
  for (const k of ownKeys(globals)) defineProperty(G, k, { value: globals[k], writable: true, configurable: true, enumerable: false });
  // wasm compilation is disabled (codeGeneration.wasm=false), so WebAssembly is only a way to
  // make off-heap Memory objects and to reach Node's wasm streaming hook: remove it.
  delete G.WebAssembly;

  // ---- the run --------------------------------------------------------------------------------
  async function run(ns, inputJSON) {
    let value;
    try {
      if (!('default' in ns)) throw new SyntaxError('the workload has no default export (expected `export default (input) => ...`)');
      const exp = ns.default;
      const input = parse(inputJSON);
      value = typeof exp === 'function' ? await exp(input) : await exp;
    } catch (e) {
      return fail(e);
    }
    let json;
    try {
      json = value === undefined ? 'null' : stringify(value);
    } catch (e) {
      let msg = '';
      try { msg = '' + e.message; } catch {}
      return host('fail', 'output is not JSON-serializable: ' + msg);
    }
    if (typeof json !== 'string') {
      return host('fail', 'output is not JSON-serializable: ' + (typeof value === 'function' ? 'the workload returned a function'
        : typeof value === 'symbol' ? 'the workload returned a symbol' : 'it has no JSON representation'));
    }
    host('done', json);
  }

  // ---- isolate hooks (installed by the host in place of Node's) -------------------------------
  // Error.prototype.stack formatting for every error in this isolate, host ones included. Only
  // errors of this context go to a user-defined Error.prepareStackTrace (V8's own rule is the
  // error's realm); everything else gets V8's default format.
  function prepareStackTrace(errorGlobal, error, trace) {
    if (errorGlobal === G) {
      let E, custom;
      try { E = G.Error; custom = E && E.prepareStackTrace; } catch {}
      if (typeof custom === 'function') return apply(custom, E, [error, trace]);
    }
    let out;
    try { out = errToString(error); } catch { out = 'Error'; }
    for (let i = 0; i < trace.length; i++) {
      let frame, file;
      try { frame = '' + trace[i]; file = trace[i].getFileName(); } catch { frame = '<unknown>'; }
      // The workload's own errors show only its frames, not the host's (or its paths).
      if (errorGlobal === G && typeof file === 'string' && HOST_FILE.test(file)) continue;
      out += '\n    at ' + frame;
    }
    return out;
  }
  // import(): Node's C++ requires a promise back. Arguments (referrer id, specifier,
  // attributes) are host values: only a string is looked at.
  function importModuleDynamically(...args) {
    let specifier = '?';
    for (let i = 0; i < args.length; i++) if (typeof args[i] === 'string') { specifier = args[i]; break; }
    const error = new CtxTypeError(`import('${specifier}') is not allowed: workloads cannot load modules`);
    return new CtxPromise((resolve, reject) => reject(error));
  }
  function initializeImportMeta() {} // import.meta stays an empty null-prototype object

  return { run, describe, prepareStackTrace, importModuleDynamically, initializeImportMeta };
}

// ---------------------------------------------------------------------------------------------
// Workload role (worker thread inside an executor). Boots, builds the context, says `ready`,
// then waits for exactly one job. Never calls, awaits or inspects a context value except
// through the bootstrap's own functions, and never hands a host object to the context: the
// input crosses as JSON text and is parsed inside.
// ---------------------------------------------------------------------------------------------
function workloadMain() {
  // Without the internals there is no way to keep Node's hooks off the workload's stack: refuse
  // to run at all rather than run unprotected (the executor turns this into a startup failure).
  let errorsBinding, moduleBinding;
  try {
    const { internalBinding } = createRequire(import.meta.url)('internal/test/binding');
    errorsBinding = internalBinding('errors');
    moduleBinding = internalBinding('module_wrap');
  } catch {}
  if (typeof errorsBinding?.setPrepareStackTraceCallback !== 'function'
      || typeof moduleBinding?.setImportModuleDynamicallyCallback !== 'function'
      || typeof moduleBinding?.setInitializeImportMetaObjectCallback !== 'function') {
    parentPort.postMessage({ t: 'unsafe', error: `this Node.js (${process.version}) lacks the internal hooks the isolate host needs to contain workloads` });
    return;
  }
  // A null-prototype sandbox: with `{}`, the global's `constructor` lookup falls through to the
  // host Object.prototype and `this.constructor.constructor('return process')()` escapes.
  // strings:true keeps eval/new Function working: they compile in the context realm, and
  // import() from such code hits the same replaced hook (tested).
  const ctx = vm.createContext(Object.create(null), {
    name: 'kiln-workload',
    codeGeneration: { strings: true, wasm: false },
  });
  const post = (m) => parentPort.postMessage(m);
  const timers = new Map();
  let nextTimer = 1;
  let finished = false;
  const end = (m) => {
    if (finished) return;
    finished = true;
    for (const t of timers.values()) clearTimeout(t);
    timers.clear();
    post(m);
  };

  // The one host function the context can (indirectly) call. Never throws: a host-realm error
  // reaching the workload would hand it the host's Function constructor.
  function bridge(op, a, b, c) {
    try {
      if (finished) return undefined;
      switch (op) {
        case 'log':
          if ((a === 'stdout' || a === 'stderr') && typeof b === 'string') post({ t: 'log', s: a, l: b });
          return undefined;
        case 'done':
          if (typeof a === 'string') end({ t: 'done', json: a });
          return undefined;
        case 'fail':
          if (typeof a === 'string') end({ t: 'fail', error: a });
          return undefined;
        case 'timer': {
          if (typeof a !== 'function' || typeof b !== 'number') return undefined;
          const id = nextTimer++;
          // `a` is the bootstrap's arrow thunk: it ignores the host Timeout passed as `this`.
          const fire = () => { if (!c) timers.delete(id); try { a(); } catch {} };
          timers.set(id, c ? setInterval(fire, b) : setTimeout(fire, b));
          return id;
        }
        case 'clear': {
          const t = timers.get(a);
          if (t !== undefined) { clearTimeout(t); timers.delete(a); }
          return undefined;
        }
      }
    } catch {}
    return undefined;
  }

  const boot = new vm.Script(`(${kilnBootstrap})`, { filename: 'kiln:bootstrap' });
  // Read once, before any user code exists, so no getter can interfere.
  const { run, describe, prepareStackTrace, importModuleDynamically, initializeImportMeta } = boot.runInContext(ctx)(bridge);
  // Isolate-wide, i.e. this worker only. Node's own hooks are host-realm JS; see kilnBootstrap.
  errorsBinding.setPrepareStackTraceCallback(prepareStackTrace);
  moduleBinding.setImportModuleDynamicallyCallback(importModuleDynamically);
  moduleBinding.setInitializeImportMetaObjectCallback(initializeImportMeta);
  const explain = (v) => {
    try {
      const s = describe(v);
      return typeof s === 'string' ? s : 'Uncaught exception';
    } catch {
      return 'Uncaught exception';
    }
  };
  // Node's default handling would serialize the value with util.inspect, which calls a
  // user-defined [nodejs.util.inspect.custom] with host arguments. Both go through the
  // context's own describe instead, and count as the workload failing, as in plain Node.
  process.on('unhandledRejection', (reason) => end({ t: 'fail', error: 'Unhandled promise rejection: ' + explain(reason) }));
  process.on('uncaughtException', (err) => end({ t: 'fail', error: explain(err) }));

  parentPort.once('message', async (job) => {
    post({ t: 'go' });
    let mod;
    try {
      // A real ES module rather than rewriting `export default` into an assignment: no regex
      // over source (strings/comments), `export default function f` keeps its binding, named
      // exports and top-level await work, and static imports fail at link time with a clear
      // message.
      mod = new vm.SourceTextModule(job.code, { context: ctx, identifier: 'workload.mjs' });
      await mod.link((specifier) => {
        throw new Error(`cannot import '${specifier}': workloads cannot load modules`);
      });
      // Node awaits the module's top-level-await promise here; a user-patched `then` on it runs
      // with context-realm resolving functions (spec: created in then's realm), so no leak.
      await mod.evaluate();
    } catch (e) {
      end({ t: 'fail', error: explain(e) });
      return;
    }
    try {
      run(mod.namespace, job.input); // reports through the bridge; its promise is not touched
    } catch (e) {
      end({ t: 'fail', error: explain(e) });
    }
  });
  post({ t: 'ready' });
}

// ---------------------------------------------------------------------------------------------
// Executor role: one run at a time, in a fresh worker thread. Enforces timeout and kill with
// worker.terminate(), maps worker deaths to reasons. Keeps the next worker booted.
// ---------------------------------------------------------------------------------------------
function executorMain() {
  const send = (m) => { if (process.connected) process.send(m); };
  process.on('disconnect', () => process.exit(0)); // supervisor gone
  let warm = null; // { w, mem } booted, waiting for a job
  let job = null; // { slot, mem, timeoutMs, timer, finished }
  let up = false;
  // The first warm worker proves this Node can run contained workloads; only then is the
  // executor usable ('up'). A worker that cannot install its hooks fails the executor.
  const announce = () => { if (!up) { up = true; send({ t: 'up' }); } };

  function spawn(mem) {
    const w = new Worker(new URL(import.meta.url), {
      execArgv: WORKER_EXEC_ARGV,
      env: {},
      stdin: false,
      name: 'kiln-workload',
      resourceLimits: {
        maxOldGenerationSizeMb: mem,
        maxYoungGenerationSizeMb: Math.max(1, Math.min(16, Math.floor(mem / 4))),
      },
    });
    const slot = { w, mem };
    const mine = () => job && job.slot === slot && !job.finished;
    w.on('message', (m) => {
      if (m && m.t === 'unsafe') {
        send({ t: 'fatal', error: m.error });
        process.exit(1);
      }
      if (m && m.t === 'ready') announce();
      if (!mine() || !m) return;
      if (m.t === 'go') job.timer = setTimeout(() => finish({ t: 'error', reason: 'timeout', error: `timed out after ${job.timeoutMs} ms` }), job.timeoutMs);
      else if (m.t === 'log') send({ t: 'log', s: m.s, l: m.l });
      else if (m.t === 'done') finish({ t: 'result', json: m.json });
      else if (m.t === 'fail') finish({ t: 'error', reason: 'exception', error: m.error });
    });
    w.on('error', (e) => {
      if (warm === slot) warm = null;
      if (!mine()) return;
      if (e && e.code === 'ERR_WORKER_OUT_OF_MEMORY') finish({ t: 'error', reason: 'memory', error: memMessage(job.mem) });
      else finish({ t: 'error', reason: 'crash', error: `isolate crashed: ${e && e.message ? e.message : e}` });
    });
    w.on('exit', (code) => {
      if (warm === slot) warm = null;
      announce(); // a worker that died booting (e.g. mem_mb too small) fails its run, not us
      if (!job || job.slot !== slot) return;
      if (!job.finished) {
        // Exit 0 without a result: the event loop drained while the module or the default
        // export's promise was still pending (Node would exit with "unsettled top-level await").
        finish(code === 0
          ? { t: 'error', reason: 'exception', error: 'the workload never settled: its promise was still pending with nothing left to run' }
          : { t: 'error', reason: 'crash', error: `isolate exited unexpectedly (code ${code})` });
      }
      const mem = job.mem;
      job = null;
      warm = spawn(mem);
      send({ t: 'idle' });
    });
    return slot;
  }

  function finish(msg) {
    if (!job || job.finished) return;
    job.finished = true;
    clearTimeout(job.timer);
    send(msg);
    job.slot.w.terminate(); // 'exit' then re-warms and reports idle
  }

  process.on('message', (m) => {
    if (m.t === 'run' && !job) {
      let slot = warm && warm.mem === m.mem ? warm : null;
      if (warm && !slot) warm.w.terminate();
      warm = null;
      slot ||= spawn(m.mem);
      job = { slot, mem: m.mem, timeoutMs: m.timeout, timer: null, finished: false };
      slot.w.postMessage({ t: 'job', code: m.code, input: m.input });
    } else if (m.t === 'kill' && job) {
      finish({ t: 'error', reason: 'killed', error: 'killed' });
    }
  });
  warm = spawn(Number(process.argv[3]) || 128);
}

// ---------------------------------------------------------------------------------------------
// Supervisor role: the protocol endpoint. Never runs workload code.
// ---------------------------------------------------------------------------------------------
function supervisorMain() {
  const runs = new Map(); // id -> run, from arrival until its one result/error is written
  const queue = [];
  const procs = new Set();
  let lastMem = 128;
  let everUp = false;
  let startFailures = 0;
  let readySent = false;
  let watchdog = null;

  const write = (line) => process.stdout.write(line + '\n');
  const MAX_RESULT = 1 << 20; // characters of a result's JSON text sent whole
  const out = (obj) => write(JSON.stringify(obj));
  const note = (msg) => process.stderr.write(`kiln-isolate: ${msg}\n`);
  const protocolError = (error) => { note(error); out({ type: 'error', id: null, reason: 'protocol', error }); };

  function finish(run, reason, error) {
    if (run.done) return;
    run.done = true;
    clearTimeout(run.backstop);
    runs.delete(run.id);
    out({ type: 'error', id: run.id, reason, error });
  }
  function finishResult(run, json) {
    if (run.done) return;
    // The context's own JSON.stringify produced it, so it is one line of valid JSON; the check
    // only guards the framing.
    if (typeof json !== 'string' || /[\r\n]/.test(json)) return finish(run, 'crash', 'isolate returned a malformed result');
    run.done = true;
    clearTimeout(run.backstop);
    runs.delete(run.id);
    // The server keeps at most 1 MiB of output: a larger result goes as the start of its
    // JSON text, flagged, so that no line the server must read whole is larger than a few MiB
    // (a 400 MB string returned whole had pushed the server to 2 GB).
    if (json.length > MAX_RESULT) {
      write(`{"type":"result","id":${JSON.stringify(run.id)},"output":${JSON.stringify(json.slice(0, MAX_RESULT))},"truncated":true}`);
      return;
    }
    write(`{"type":"result","id":${JSON.stringify(run.id)},"output":${json}}`);
  }

  // Resident memory of a process; Linux only (NaN elsewhere disables the off-heap check).
  function rssMb(pid) {
    try {
      const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'latin1'));
      return m ? Number(m[1]) / 1024 : NaN;
    } catch {
      return NaN;
    }
  }

  // The pid under which /proc shows a child. Kiln starts the host in a PID namespace of its
  // own while /proc stays the host's, so `child.pid` (a pid of our namespace) names some
  // other process there, often a kernel thread without VmRSS, which silently turned the
  // off-heap check off. Our children, as /proc numbers them, are in
  // /proc/self/task/*/children; the one whose NSpid ends with `pid` is this child.
  function procPid(pid) {
    try {
      for (const task of readdirSync('/proc/self/task')) {
        const children = readFileSync(`/proc/self/task/${task}/children`, 'latin1').split(' ').filter(Boolean);
        for (const c of children) {
          const ns = /NSpid:\s+([\d\s]+)\n/.exec(readFileSync(`/proc/${c}/status`, 'latin1'));
          const ids = ns ? ns[1].trim().split(/\s+/) : [c];
          if (ids[ids.length - 1] === String(pid)) return Number(c);
        }
      }
    } catch {
      // Not Linux, or the child is already gone: the check is off for it (rssMb gives NaN).
    }
    return NaN;
  }

  function spawnProc() {
    const childEnv = {};
    for (const k of ['TZ', 'LANG', 'LC_ALL']) if (process.env[k] !== undefined) childEnv[k] = process.env[k];
    // execArgv [] and a bare env: a --max-old-space-size inherited from Kiln's command line or
    // NODE_OPTIONS would override the workers' resourceLimits (nodejs/node#43991).
    const child = fork(HOST_PATH, ['--kiln-executor', String(lastMem)], {
      execArgv: [],
      env: childEnv,
      stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
      serialization: 'json',
    });
    const p = { child, up: false, run: null, runs: 0, idleTimer: null, tail: '' };
    procs.add(p);
    // Executor output is diagnostics only (V8 fatal errors, Node warnings): to our stderr,
    // line by line with the pid, and the tail kept to tell a V8 OOM abort from other deaths.
    const relay = (stream) => {
      let partial = '';
      stream.setEncoding('utf8');
      stream.on('data', (s) => {
        p.tail = (p.tail + s).slice(-4096);
        const lines = (partial + s).split('\n');
        partial = lines.pop();
        for (const l of lines) if (l.trim()) process.stderr.write(`kiln-isolate[${child.pid}]: ${l}\n`);
      });
      stream.on('end', () => { if (partial.trim()) process.stderr.write(`kiln-isolate[${child.pid}]: ${partial}\n`); });
    };
    relay(child.stdout);
    relay(child.stderr);
    child.on('error', (e) => note(`executor process error: ${e.message}`));
    child.on('message', (m) => onProcMessage(p, m));
    child.on('close', (code, signal) => onProcClose(p, code, signal));
    return p;
  }

  function onProcMessage(p, m) {
    const run = p.run;
    switch (m && m.t) {
      case 'up':
        p.up = true;
        everUp = true;
        startFailures = 0;
        if (!readySent) { readySent = true; out({ type: 'ready' }); }
        becomeIdle(p);
        break;
      case 'idle':
        p.run = null;
        if (++p.runs >= MAX_RUNS_PER_PROC) retire(p);
        else becomeIdle(p);
        break;
      case 'log':
        if (run && !run.done && (m.s === 'stdout' || m.s === 'stderr') && typeof m.l === 'string') out({ type: 'log', id: run.id, stream: m.s, line: m.l });
        break;
      case 'result':
        if (run) finishResult(run, m.json);
        break;
      case 'error':
        if (run) finish(run, m.reason, String(m.error));
        break;
      case 'fatal':
        note(`isolate executor cannot run workloads: ${m.error}`);
        if (!everUp) process.exit(1); // before ready: Kiln sees the host fail to start
        break;
    }
  }

  function onProcClose(p, code, signal) {
    procs.delete(p);
    clearTimeout(p.idleTimer);
    const run = p.run;
    if (run && !run.done) {
      // V8 aborts the executor on a fatal OOM (one allocation past the worker's heap limit;
      // also some V8 bugs, e.g. a RegExp compiled at the stack's edge), printing the cause.
      const fatal = /FATAL ERROR: ([^\n]*)/.exec(p.tail);
      if (fatal && /out of memory/i.test(fatal[1])) finish(run, 'memory', `${memMessage(run.mem)} (V8: ${fatal[1].trim()})`);
      else if (fatal) finish(run, 'crash', `isolate process aborted (V8: ${fatal[1].trim()})`);
      else finish(run, 'crash', `isolate process died (${signal || `exit code ${code}`})`);
    }
    if (!p.up && !p.retired) {
      startFailures++;
      if (!everUp && startFailures >= 3) {
        note('cannot start isolate executor processes; exiting');
        process.exit(1);
      }
      if (startFailures >= 5) {
        for (const r of queue.splice(0)) finish(r, 'crash', 'could not start an isolate process');
        startFailures = 0;
      }
    }
    pump();
  }

  function becomeIdle(p) {
    pump();
    if (p.run || p.retired) return;
    clearTimeout(p.idleTimer);
    p.idleTimer = setTimeout(() => {
      if (!p.run && idleProcs().length > SPARES) retire(p);
    }, IDLE_RETIRE_MS);
  }

  function retire(p) {
    p.retired = true;
    clearTimeout(p.idleTimer);
    p.child.kill('SIGKILL');
    pump();
  }

  const idleProcs = () => [...procs].filter((p) => p.up && !p.run && !p.retired);
  const startingProcs = () => [...procs].filter((p) => !p.up && !p.retired).length;

  function pump() {
    for (const p of idleProcs()) {
      if (!queue.length) break;
      dispatch(p, queue.shift());
    }
    // Enough processes starting for what is queued, plus SPARES idle ones for what comes next.
    const want = queue.length + SPARES - idleProcs().length - startingProcs();
    for (let i = 0; i < want && procs.size < MAX_PROCS; i++) spawnProc();
  }

  function dispatch(p, run) {
    clearTimeout(p.idleTimer);
    p.run = run;
    run.proc = p;
    if (!p.procPid) p.procPid = procPid(p.child.pid);
    const base = rssMb(p.procPid);
    p.rssLimit = base + run.mem + RSS_SLACK_MB;
    p.child.send({ t: 'run', code: run.code, input: run.input, mem: run.mem, timeout: run.timeout });
    run.backstop = setTimeout(() => hardKill(p, 'timeout', `timed out after ${run.timeout} ms`), run.timeout + BACKSTOP_GRACE_MS);
    if (!watchdog && Number.isFinite(base)) watchdog = setInterval(watch, RSS_POLL_MS);
  }

  function hardKill(p, reason, error) {
    if (p.run) finish(p.run, reason, error);
    p.retired = true;
    p.child.kill('SIGKILL');
  }

  // Off-heap memory (ArrayBuffers, typed arrays) is invisible to resourceLimits. One run per
  // executor makes the executor's RSS that run's footprint, so it is checked here instead.
  function watch() {
    let busy = 0;
    for (const p of procs) {
      if (!p.run || p.run.done || p.retired) continue;
      busy++;
      const rss = rssMb(p.procPid);
      if (rss > p.rssLimit) {
        note(`run ${JSON.stringify(p.run.id)}: process RSS ${rss.toFixed(0)} MB over its ${p.rssLimit.toFixed(0)} MB ceiling; killing`);
        hardKill(p, 'memory', `${memMessage(p.run.mem)} (off-heap memory such as ArrayBuffers counts too)`);
      }
    }
    if (!busy) { clearInterval(watchdog); watchdog = null; }
  }

  function onRun(m) {
    const id = m.id;
    if (typeof id !== 'string' || id === '') return protocolError('run message needs a non-empty string "id"');
    if (runs.has(id)) return protocolError(`duplicate run id ${JSON.stringify(id)}: a run with this id is still active`);
    const bad = typeof m.code !== 'string' ? '"code" must be a string'
      : !(Number.isFinite(m.mem_mb) && m.mem_mb >= 1 && m.mem_mb <= MAX_MEM_MB) ? '"mem_mb" must be a number from 1 to ' + MAX_MEM_MB
        : !(Number.isFinite(m.timeout_ms) && m.timeout_ms > 0) ? '"timeout_ms" must be a positive number' : null;
    if (bad) {
      note(`run ${JSON.stringify(id)}: invalid run message: ${bad}`);
      return out({ type: 'error', id, reason: 'crash', error: `invalid run message: ${bad}` });
    }
    const run = {
      id,
      code: m.code,
      input: JSON.stringify(m.input === undefined ? null : m.input),
      mem: Math.ceil(m.mem_mb),
      timeout: Math.min(Math.ceil(m.timeout_ms), MAX_TIMEOUT_MS),
      done: false,
      proc: null,
      backstop: null,
    };
    lastMem = run.mem;
    runs.set(id, run);
    queue.push(run);
    pump();
  }

  function onKill(m) {
    const run = typeof m.id === 'string' ? runs.get(m.id) : undefined;
    if (!run) return note(`kill for unknown or finished run ${JSON.stringify(m.id)} ignored`);
    if (!run.proc) {
      queue.splice(queue.indexOf(run), 1);
      return finish(run, 'killed', 'killed');
    }
    const p = run.proc;
    p.child.send({ t: 'kill' });
    clearTimeout(run.backstop);
    run.backstop = setTimeout(() => hardKill(p, 'killed', 'killed'), KILL_GRACE_MS);
  }

  function onLine(line) {
    if (!line.trim()) return;
    let m;
    try {
      m = JSON.parse(line);
    } catch (e) {
      return protocolError(`malformed message (not JSON): ${e.message}`);
    }
    if (m === null || typeof m !== 'object' || Array.isArray(m)) return protocolError('malformed message: expected a JSON object');
    if (m.type === 'run') onRun(m);
    else if (m.type === 'kill') onKill(m);
    else protocolError(`unknown message type ${JSON.stringify(m.type)}`);
  }

  function shutdown(code) {
    for (const p of procs) p.child.kill('SIGKILL');
    process.exit(code);
  }

  // A supervisor bug must not take every in-flight run down with it; note and carry on.
  process.on('uncaughtException', (e) => note(`internal error: ${e && e.stack ? e.stack : e}`));
  process.stdout.on('error', () => shutdown(0)); // Kiln closed our stdout: it is gone
  process.on('SIGTERM', () => shutdown(0));
  process.on('SIGINT', () => shutdown(0));
  const rl = createInterface({ input: process.stdin, crlfDelay: Infinity });
  rl.on('line', (line) => {
    try {
      onLine(line);
    } catch (e) {
      note(`internal error handling a message: ${e && e.stack ? e.stack : e}`);
    }
  });
  rl.on('close', () => shutdown(0)); // stdin closed: Kiln died or is done with us
  pump();
  if (!procs.size) spawnProc(); // even with no spares, one executor must prove it can start
}

if (!isMainThread) workloadMain();
else if (process.argv[2] === '--kiln-executor') executorMain();
else supervisorMain();
