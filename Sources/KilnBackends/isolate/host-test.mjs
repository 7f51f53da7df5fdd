// Tests for the isolate host: node --test Sources/KilnBackends/isolate/host-test.mjs
// Spawns host.mjs and talks its stdin/stdout protocol, as Kiln does.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const HOST = fileURLToPath(new URL('./host.mjs', import.meta.url));
const WAIT_MS = 20_000; // generous: the suite may share 2 cores with a Swift build

class Host {
  constructor() {
    this.proc = spawn(process.execPath, [HOST], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.messages = []; // { msg, at } in arrival order
    this.waiters = [];
    this.stderr = '';
    this.exited = new Promise((resolve) => this.proc.on('exit', (code, signal) => resolve({ code, signal })));
    let buf = '';
    this.proc.stdout.setEncoding('utf8');
    this.proc.stdout.on('data', (chunk) => {
      buf += chunk;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        this.messages.push({ msg: JSON.parse(line), at: performance.now() }); // non-JSON output fails the suite
        this.waiters = this.waiters.filter((w) => !w());
      }
    });
    this.proc.stderr.setEncoding('utf8');
    this.proc.stderr.on('data', (s) => { this.stderr += s; });
  }

  send(obj) { this.sendRaw(JSON.stringify(obj)); }
  sendRaw(line) { this.proc.stdin.write(line + '\n'); }

  // Resolves with the index of the first message (from `from` on) matching pred.
  waitFor(pred, what, from = 0, ms = WAIT_MS) {
    return new Promise((resolve, reject) => {
      const check = () => {
        for (let i = from; i < this.messages.length; i++) if (pred(this.messages[i].msg)) { clearTimeout(timer); resolve(i); return true; }
        return false;
      };
      const timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}; stderr:\n${this.stderr.slice(-2000)}`)), ms);
      if (!check()) this.waiters.push(check);
    });
  }

  // Sends a run; resolves with its final message, its logs (in order), and timings.
  async run(id, code, { input = null, mem_mb = 64, timeout_ms = 10_000, ms } = {}) {
    const from = this.messages.length;
    const sentAt = performance.now();
    this.send({ type: 'run', id, code, input, mem_mb, timeout_ms });
    const i = await this.waitFor((m) => m.id === id && (m.type === 'result' || m.type === 'error'), `final message for ${id}`, from, ms);
    const mine = this.messages.slice(from).filter((e) => e.msg.id === id);
    return {
      final: this.messages[i].msg,
      finalAt: this.messages[i].at,
      sentAt,
      logs: mine.filter((e) => e.msg.type === 'log'),
      after: mine.filter((e, k) => k > mine.findIndex((x) => x.msg.type !== 'log')), // anything after the final
    };
  }

  // Ends stdin and waits for the exit; a host that does not exit is killed and is an error.
  async close(ms = 5000) {
    this.proc.stdin.end();
    let timer;
    const late = new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`host did not exit within ${ms} ms of stdin closing`)), ms); });
    try {
      return await Promise.race([this.exited, late]);
    } catch (e) {
      this.proc.kill('SIGKILL');
      throw e;
    } finally {
      clearTimeout(timer);
    }
  }
}

const result = (r) => {
  assert.equal(r.final.type, 'result', `expected a result, got ${JSON.stringify(r.final)}`);
  return r.final.output;
};
const failure = (r, reason) => {
  assert.equal(r.final.type, 'error', `expected an error, got ${JSON.stringify(r.final)}`);
  assert.equal(r.final.reason, reason, `reason: ${JSON.stringify(r.final)}`);
  return r.final.error;
};

let host;
let seq = 0;
const id = (name) => `${name}-${++seq}`;

before(async () => {
  host = new Host();
  await host.waitFor((m) => m.type === 'ready', 'ready');
});
after(async () => {
  if (host) await host.close();
});

test('console lines arrive in order, on the right streams, before the result', async () => {
  const r = await host.run(id('console'), `
    console.log('one');
    console.error('two');
    console.info('three', 3, { a: [1, 'x'] });
    console.warn('%s=%d', 'four', 4);
    console.debug('five\\nsix');
    export default () => { console.log(null, undefined, 5n, [1, , 3]); return 'done'; };
  `);
  assert.equal(result(r), 'done');
  assert.deepEqual(r.logs.map((e) => [e.msg.stream, e.msg.line]), [
    ['stdout', 'one'],
    ['stderr', 'two'],
    ['stdout', "three 3 { a: [ 1, 'x' ] }"],
    ['stderr', 'four=4'],
    ['stdout', 'five\nsix'],
    ['stdout', 'null undefined 5n [ 1, <1 empty item>, 3 ]'],
  ]);
  assert.ok(r.logs.every((e) => e.at <= r.finalAt));
  assert.deepEqual(r.after, [], 'nothing may follow the final message');
});

test('one console call sends at most 1 Mi characters, its group indentation counted', async () => {
  const r = await host.run(id('indent'), `
    export default () => {
      for (let i = 0; i < 10; i++) console.group();
      console.log('\\n'.repeat(1 << 20));
      console.log('x'.repeat(1 << 20));
      console.groupEnd();
      return 1;
    };
  `);
  assert.equal(result(r), 1);
  assert.equal(r.logs.length, 2);
  for (const e of r.logs) {
    assert.ok(e.msg.line.length <= (1 << 20) + 64, `a call sent ${e.msg.line.length} characters`);
    assert.match(e.msg.line, /more characters truncated\]$/);
  }
  assert.ok(r.logs[0].msg.line.startsWith(' '.repeat(20) + '\n'));
});

test('console lines are sent as they happen, not at the end', async () => {
  const r = await host.run(id('live'), `
    export default () => {
      console.log('early');
      const end = Date.now() + 1500;
      while (Date.now() < end) {}
      return 1;
    };
  `);
  assert.equal(result(r), 1);
  assert.equal(r.logs.length, 1);
  assert.ok(r.finalAt - r.logs[0].at > 700, `log came ${r.finalAt - r.logs[0].at} ms before the result`);
});

test('sync default export receives the input', async () => {
  const r = await host.run(id('sync'), 'export default (input) => ({ doubled: input.n * 2, keys: Object.keys(input) })', { input: { n: 21, s: 'x' } });
  assert.deepEqual(result(r), { doubled: 42, keys: ['n', 's'] });
});

test('a result over 1 Mi characters comes as the start of its JSON text, flagged', async () => {
  const r = await host.run(id('big'), "export default () => ({ s: 'x'.repeat(3 * 1024 * 1024) })");
  assert.equal(r.final.type, 'result');
  assert.equal(r.final.truncated, true);
  assert.equal(r.final.output.length, 1 << 20);
  assert.ok(r.final.output.startsWith('{"s":"xxx'));
  const small = await host.run(id('small'), "export default () => 'x'.repeat(1000)");
  assert.equal(small.final.truncated, undefined);
  assert.equal(result(small).length, 1000);
});

test('async default export is awaited (timers work inside)', async () => {
  const r = await host.run(id('async'), `
    export default async (input) => {
      await new Promise((resolve) => setTimeout(resolve, 50));
      return input.map((x) => x + 1);
    };
  `, { input: [1, 2, 3] });
  assert.deepEqual(result(r), [2, 3, 4]);
});

test('other module shapes: value export, top-level await, named function, undefined', async () => {
  assert.deepEqual(result(await host.run(id('value'), 'export default { a: [1, 2] }')), { a: [1, 2] });
  assert.equal(result(await host.run(id('tla'), 'const x = await Promise.resolve(7); export default () => x * 6')), 42);
  assert.equal(result(await host.run(id('named'), 'export default function fact(n) { return n <= 1 ? 1 : n * fact(n - 1); }', { input: 5 })), 120);
  assert.equal(result(await host.run(id('undef'), 'export default () => {}')), null);
});

test('non-JSON-serializable output is an exception', async () => {
  assert.match(failure(await host.run(id('bigint'), 'export default () => 10n'), 'exception'), /^output is not JSON-serializable: .*BigInt/);
  assert.match(failure(await host.run(id('cycle'), 'const a = {}; a.self = a; export default a'), 'exception'), /^output is not JSON-serializable: .*circular/i);
  assert.match(failure(await host.run(id('fn'), 'export default () => () => 1'), 'exception'), /^output is not JSON-serializable: .*function/);
});

test('a thrown error is an exception with message and workload-only stack', async () => {
  const error = failure(await host.run(id('throw'), `
    function inner() { throw new TypeError('boom'); }
    export default () => inner();
  `), 'exception');
  assert.match(error, /^TypeError: boom\n/);
  assert.match(error, /at inner \(workload\.mjs:2:/);
  assert.doesNotMatch(error, /host\.mjs|node:internal|kiln:bootstrap|file:\/\//);
  // The workload's own view of a stack has no host frames either.
  const own = result(await host.run(id('own-stack'), 'export default async () => { await null; return new Error("mine").stack; }'));
  assert.match(own, /^Error: mine\n    at default \(workload\.mjs:1:/);
  assert.doesNotMatch(own, /host\.mjs|node:|kiln:bootstrap|file:\/\//);
  // async rejections and syntax errors too
  assert.match(failure(await host.run(id('reject'), 'export default async () => { throw new RangeError("later") }'), 'exception'), /^RangeError: later/);
  assert.match(failure(await host.run(id('syntax'), 'export default ('), 'exception'), /^SyntaxError/);
});

test('require and static import are not available', async () => {
  assert.equal(result(await host.run(id('typeof-require'), 'export default () => [typeof require, typeof module, typeof exports]')).join(), 'undefined,undefined,undefined');
  assert.match(failure(await host.run(id('require'), "export default () => require('fs').readFileSync('/etc/passwd', 'utf8')"), 'exception'), /^ReferenceError: require is not defined/);
  assert.match(failure(await host.run(id('import'), "import fs from 'node:fs'; export default () => fs.readFileSync('/etc/passwd', 'utf8')"), 'exception'), /cannot import 'node:fs'/);
});

test('process, its env and other host globals are not reachable', async () => {
  const out = result(await host.run(id('globals'), `
    export default () => ({
      process: typeof process,
      globalProcess: typeof globalThis.process,
      env: (() => { try { return typeof process.env; } catch (e) { return e.name; } })(),
      others: ['Buffer', 'fetch', 'WebSocket', 'WebAssembly', 'require', 'global', 'setImmediate'].map((k) => k + ':' + typeof globalThis[k]),
    });
  `));
  assert.deepEqual(out, {
    process: 'undefined',
    globalProcess: 'undefined',
    env: 'ReferenceError',
    others: ['Buffer:undefined', 'fetch:undefined', 'WebSocket:undefined', 'WebAssembly:undefined', 'require:undefined', 'global:undefined', 'setImmediate:function'],
  });
});

test("import('node:child_process') fails and its error does not lead to the host", async () => {
  const out = result(await host.run(id('dynimport'), `
    const probe = async (load) => {
      try { await load(); return 'IMPORTED'; } catch (e) {
        let reach;
        try { reach = typeof e.constructor.constructor('return process')(); } catch (x) { reach = 'threw ' + x.name; }
        return [e.name, e.message, reach];
      }
    };
    export default async () => [
      await probe(() => import('node:child_process')),
      await probe(() => eval("import('node:fs')")),
      await probe(() => new Function("return import('child_process')")()),
    ];
  `));
  for (const [name, message, reach] of out) {
    assert.equal(name, 'TypeError');
    assert.match(message, /is not allowed/);
    assert.equal(reach, 'threw ReferenceError'); // the context's Function: no `process` in scope
  }
});

test('constructor, stack-trace, timer and thenable tricks do not reach process', async () => {
  const out = result(await host.run(id('escape'), `
    const P = 'return process';
    const results = {};
    // Records what each candidate's Function constructor gives; 'ESCAPED' if it is the host process.
    const probe = (name, get) => {
      let candidates;
      try { candidates = get(); } catch (e) { results[name] = ['threw ' + e.name]; return; }
      results[name] = (Array.isArray(candidates) ? candidates : [candidates]).map((c) => {
        if (c === undefined || c === null) return 'none';
        try {
          const p = (typeof c === 'function' ? c : c.constructor).constructor(P)();
          return p && typeof p.pid === 'number' ? 'ESCAPED' : 'no process';
        } catch (e) { return 'threw ' + e.name; }
      });
    };
    probe('globalThis', () => globalThis);
    probe('object literal', () => ({}));
    probe('console', () => console);
    probe('console.log', () => console.log);
    probe('setTimeout', () => setTimeout);
    probe('import.meta', () => import.meta);
    probe('eval', () => (0, eval)('globalThis'));
    probe('callsites', () => {
      Error.prepareStackTrace = (e, cs) => cs;
      const cs = new Error().stack;
      Error.prepareStackTrace = undefined;
      return cs.flatMap((c) => [c, c.getThis(), c.getFunction()]);
    });
    let timer;
    await new Promise((resolve) => setTimeout(function () {
      Error.prepareStackTrace = (e, cs) => cs.flatMap((c) => [c.getThis(), c.getFunction()]);
      timer = [this, ...new Error().stack];
      Error.prepareStackTrace = undefined;
      resolve();
    }, 1));
    probe('timer this and frames', () => timer);
    let leaked = [];
    console.log({ [Symbol.for('nodejs.util.inspect.custom')](depth, options, inspect) { leaked.push(options, inspect); return 'x'; } });
    probe('util.inspect.custom', () => leaked);
    const then = Promise.prototype.then;
    const seen = [];
    Promise.prototype.then = function (a, b) { seen.push(a, b); return then.call(this, a, b); };
    await null;
    await new Promise((r) => r());
    Promise.prototype.then = then;
    probe('then override', () => seen);
    export default results;
  `));
  const flat = Object.entries(out).flatMap(([name, rs]) => rs.map((r) => `${name}: ${r}`));
  assert.deepEqual(flat.filter((s) => s.includes('ESCAPED')), []);
  // The probes must actually have run: these are context objects whose Function is the context's.
  for (const name of ['globalThis', 'object literal', 'console', 'console.log', 'setTimeout', 'eval']) {
    assert.deepEqual(out[name], ['threw ReferenceError'], name);
  }
  assert.deepEqual(out['import.meta'], ['threw TypeError'], 'import.meta has a null prototype: no constructor at all');
  assert.ok(out.callsites.length >= 3, 'callsites probed');
  assert.ok(out['timer this and frames'].every((r) => r === 'none' || r === 'threw ReferenceError'));
  assert.deepEqual(out['util.inspect.custom'], [], 'console must not call inspect.custom with host arguments');
});

test('stack exhaustion inside host hooks never hands the workload a host-realm error', async () => {
  // A stack overflow inside a host-realm function creates a host-realm RangeError, whose
  // constructor chain leads to the host's Function and `process`. V8 runs some hooks on the
  // workload's own stack (stack formatting, import(), the console bridge, timers). For each
  // operation: find the smallest unwind k at which it fits after exhausting the stack, then
  // run it at every nearby depth so overflows land inside those hooks.
  const out = result(await host.run(id('stack-edge'), `
    const P = 'return process';
    const verdict = (e) => {
      try {
        const p = e.constructor.constructor(P)();
        return p && typeof p.pid === 'number' ? 'ESCAPED' : 'no process';
      } catch (x) { return 'context ' + x.name; }
    };
    const atEdge = (op) => {
      const errors = [];
      let unwind;
      function deep() {
        try { return deep(); } catch (e) {
          if (unwind-- > 0) throw e;
          try { op(); return true; } catch (e2) { errors.push(e2); return false; }
        }
      }
      // false: op overflowed; true: op ran; unwinding past the top (k too big) counts as room.
      const fits = (k, pad) => { unwind = k; try { return deep.apply(null, new Array(pad)); } catch { return true; } };
      let lo = 0, hi = 1;
      while (!fits(hi, 0)) hi *= 2;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (fits(mid, 0)) hi = mid; else lo = mid + 1; }
      for (let k = Math.max(0, lo - 120); k <= lo + 8; k++) for (let pad = 0; pad < 3; pad++) fits(k, pad);
      return errors;
    };
    const late = [];
    const ops = {
      'new Error().stack': () => new Error('x').stack,
      'Error.captureStackTrace': () => { const o = {}; Error.captureStackTrace(o); return o.stack; },
      'import()': () => { late.push(import('node:fs').catch((e) => e)); },
      'eval import()': () => { late.push(eval("import('node:fs')").catch((e) => e)); },
      'console.debug': () => console.debug('edge'),
      'setTimeout': () => clearTimeout(setTimeout(() => {}, 1)),
      'user prepareStackTrace': () => {
        Error.prepareStackTrace = (e, cs) => { throw cs.flatMap((c) => [c, c.getThis(), c.getFunction()]).find((x) => x && verdict(x) === 'ESCAPED') || new Error('none'); };
        try { new Error().stack; } finally { Error.prepareStackTrace = undefined; }
      },
    };
    const results = {};
    for (const [name, op] of Object.entries(ops)) {
      const errors = atEdge(op);
      const verdicts = {};
      for (const e of errors) verdicts[verdict(e)] = (verdicts[verdict(e)] || 0) + 1;
      results[name] = verdicts;
    }
    const rejections = await Promise.all(late);
    results['import() rejections'] = {};
    for (const e of rejections) results['import() rejections'][verdict(e)] = (results['import() rejections'][verdict(e)] || 0) + 1;
    export default results;
  `, { timeout_ms: 120_000, ms: 180_000 }));
  for (const [name, verdicts] of Object.entries(out)) {
    assert.equal(verdicts.ESCAPED, undefined, `${name}: ${JSON.stringify(verdicts)}`);
    assert.ok(Object.keys(verdicts).length > 0, `${name}: the stack edge was reached`);
  }
});

test('an infinite loop times out while a concurrent run completes', async () => {
  const loopId = id('loop');
  const loop = host.run(loopId, 'export default () => { while (true) {} }', { timeout_ms: 1000 });
  const normal = host.run(id('beside-loop'), 'export default async () => { await new Promise((r) => setTimeout(r, 200)); return "ok"; }', { timeout_ms: 10_000 });
  const [l, n] = await Promise.all([loop, normal]);
  assert.equal(result(n), 'ok');
  assert.ok(n.finalAt < l.finalAt, 'the normal run finished first');
  assert.equal(failure(l, 'timeout'), 'timed out after 1000 ms');
  // Enforced by the executor (worker.terminate()), not by the supervisor's later backstop.
  const took = l.finalAt - l.sentAt;
  assert.ok(took >= 950 && took < 2500, `timeout reported after ${took} ms`);
});

test('a 1 GB allocation with mem_mb 64 fails with reason memory and the host keeps working', async () => {
  const heap = await host.run(id('oom-array'), 'export default () => new Array(1e9).fill(1).length', { mem_mb: 64, timeout_ms: 30_000 });
  assert.match(failure(heap, 'memory'), /^memory limit of 64 MB exceeded/);
  const growth = await host.run(id('oom-push'), 'export default () => { const a = []; for (;;) a.push({ n: a.length }); }', { mem_mb: 64, timeout_ms: 30_000 });
  assert.match(failure(growth, 'memory'), /^memory limit of 64 MB exceeded/);
  // Off-heap: resourceLimits do not cover ArrayBuffers; the host's RSS check does.
  const offHeap = await host.run(id('oom-buffer'), 'export default () => new Uint8Array(2 ** 30).fill(1).length', { mem_mb: 64, timeout_ms: 30_000 });
  assert.match(failure(offHeap, 'memory'), /^memory limit of 64 MB exceeded/);
  const tooBig = await host.run(id('huge-buffer'), 'export default () => new ArrayBuffer(2 ** 42).byteLength', { mem_mb: 64 });
  assert.match(failure(tooBig, 'exception'), /^RangeError: Array buffer allocation failed/);
  assert.equal(result(await host.run(id('after-oom'), 'export default (i) => i + 1', { input: 1 })), 2);
  assert.equal(host.proc.exitCode, null, 'host still running');
});

test('20 concurrent workloads all return correct outputs', async () => {
  const runs = Array.from({ length: 20 }, (_, k) => host.run(id(`many${k}`), `
    export default async ({ k }) => {
      console.log('start', k);
      await new Promise((r) => setTimeout(r, 20 + (k % 5) * 10));
      return { k, square: k * k };
    };
  `, { input: { k }, timeout_ms: 20_000, ms: 60_000 }));
  const done = await Promise.all(runs);
  done.forEach((r, k) => {
    assert.deepEqual(result(r), { k, square: k * k });
    assert.deepEqual(r.logs.map((e) => e.msg.line), [`start ${k}`]);
  });
});

test('kill ends a running workload with reason killed', async () => {
  const killId = id('kill');
  const pending = host.run(killId, 'export default () => { for (;;) {} }', { timeout_ms: 60_000 });
  await new Promise((r) => setTimeout(r, 500));
  const killedAt = performance.now();
  host.send({ type: 'kill', id: killId });
  const r = await pending;
  assert.equal(failure(r, 'killed'), 'killed');
  // Well under the supervisor's 1 s SIGKILL backstop: the executor terminated the worker.
  assert.ok(r.finalAt - killedAt < 800, `kill took ${r.finalAt - killedAt} ms`);
  assert.equal(result(await host.run(id('after-kill'), 'export default () => "alive"')), 'alive');
});

test('malformed lines get protocol errors and do not kill the host', async () => {
  const from = host.messages.length;
  for (const line of ['this is not json', '[1, 2]', '{"type":"launch"}', '{"type":"run","code":"export default 1"}', '{"type":']) host.sendRaw(line);
  for (let k = 0, at = from; k < 5; k++) {
    at = await host.waitFor((m) => m.type === 'error' && m.id === null && m.reason === 'protocol', `protocol error ${k + 1}`, at) + 1;
  }
  assert.equal(result(await host.run(id('after-garbage'), 'export default () => "still here"')), 'still here');
  assert.equal(host.proc.exitCode, null);
});

test('ready was sent exactly once', () => {
  assert.equal(host.messages.filter((e) => e.msg.type === 'ready').length, 1);
  assert.equal(host.messages[0].msg.type, 'ready');
});

test('the host exits when its stdin closes, taking its executors with it', async () => {
  const h = new Host();
  await h.waitFor((m) => m.type === 'ready', 'ready');
  const children = () => readdirSync('/proc').filter((d) => /^\d+$/.test(d)).filter((pid) => {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      return Number(fields[1]) === h.proc.pid && fields[0] !== 'Z';
    } catch { return false; }
  });
  const kids = children();
  assert.ok(kids.length >= 1, 'the host has executor processes');
  const { code } = await h.close(5000);
  assert.equal(code, 0);
  await new Promise((r) => setTimeout(r, 300));
  const alive = kids.filter((pid) => {
    try { return readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1][0] !== 'Z'; } catch { return false; }
  });
  assert.deepEqual(alive, [], 'executor processes are gone');
});
