// records.js: berth's own KV layout: which keys the master owns, reading its instance records
// (tolerant of fields this UI does not know yet), telling problems apart, and live updates.

import { kvBlockingGet } from './api.js';

/** KV prefix of the master's instance records, `berth/instances/<id>` (JSON). */
export const RECORD_PREFIX = 'berth/instances/';

/**
 * Prefixes the master writes and reads back: its records and locks under `berth/`, and the
 * seed-compatible `instance/<id>/` keys. A hand edit there changes what the master believes.
 */
export const MASTER_PREFIXES = ['berth/', 'instance/'];

/** True when the master owns `key` (or the folder `key`, or a folder above its keys). */
export function ownedByMaster(key) {
  return MASTER_PREFIXES.some((p) => key.startsWith(p) || (key.endsWith('/') && p.startsWith(key)));
}

/** States in which something that should run does not (record or service level). */
const PROBLEM_STATES = new Set([
  'failed',
  'degraded',
  'crash_looping',
  'crash-looping',
  'crashloop',
  'restarting',
  'unhealthy',
  'exited',
  'dead',
  'error',
]);
/** States on the way somewhere else. */
const MOVING_STATES = new Set(['uploaded', 'building', 'starting', 'stopping', 'deleting', 'deploying', 'created']);
const GOOD_STATES = new Set(['running', 'completed', 'healthy']);

/** Badge colour of a record or service state: `passing`, `warning`, `critical` or `unknown`. */
export function stateTone(state) {
  if (GOOD_STATES.has(state)) return 'passing';
  if (PROBLEM_STATES.has(state)) return 'critical';
  if (MOVING_STATES.has(state)) return 'warning';
  return 'unknown';
}

/** A service's state word, whatever the record calls it. */
export function serviceState(svc) {
  const s = svc?.state ?? svc?.status;
  return typeof s === 'string' ? s : s && typeof s === 'object' ? String(s.state ?? s.status ?? '') : '';
}

/**
 * The record's per-service states as `[{ name, state, info }]`, from a list of objects (with
 * `name` or `service`) or an object keyed by service name; [] when the record has none.
 */
export function servicesOf(rec) {
  const raw = rec?.services;
  if (Array.isArray(raw)) {
    return raw
      .filter((s) => s && typeof s === 'object')
      .map((s, i) => ({ name: String(s.name ?? s.service ?? `#${i + 1}`), state: serviceState(s), info: s }));
  }
  if (raw && typeof raw === 'object') {
    return Object.entries(raw).map(([name, s]) => ({
      name,
      state: typeof s === 'string' ? s : serviceState(s),
      info: s && typeof s === 'object' ? s : { state: s },
    }));
  }
  return [];
}

/** Restart count of a service, if the record says. */
export function restartsOf(info) {
  const n = info?.restarts ?? info?.restart_count ?? info?.restartCount;
  return typeof n === 'number' ? n : null;
}

/** Why an instance is a problem: a list of short reasons, empty when it is not one. */
export function problemsOf(item) {
  if (item.unreadable) return [`unreadable record: ${item.unreadable}`];
  const rec = item.record;
  const reasons = [];
  const state = typeof rec.state === 'string' ? rec.state : '';
  if (PROBLEM_STATES.has(state)) reasons.push(state.replace(/_/g, '-'));
  if (rec.degraded === true && state !== 'degraded') reasons.push('degraded');
  const looping = rec.crash_looping === true || rec.crashlooping === true;
  for (const svc of servicesOf(rec)) {
    if (!PROBLEM_STATES.has(svc.state)) continue;
    const restarts = restartsOf(svc.info);
    const detail = restarts ? `${svc.state}, ${restarts} restarts` : svc.state;
    const crash = svc.state === 'restarting' || svc.state.startsWith('crash');
    reasons.push(`${crash ? 'crash-looping' : 'service down'}: ${svc.name} (${detail})`);
  }
  if (looping && !reasons.some((r) => r.startsWith('crash-looping'))) reasons.push('crash-looping');
  return reasons;
}

/** Decodes one KV entry into `{ key, id, record, unreadable }` (record {} when unreadable). */
export function readRecord(entry) {
  const id = entry.Key.startsWith(RECORD_PREFIX) ? entry.Key.slice(RECORD_PREFIX.length) : entry.Key;
  let record = {};
  let unreadable = null;
  try {
    const bytes = Uint8Array.from(atob(entry.Value ?? ''), (c) => c.charCodeAt(0));
    const parsed = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
    if (parsed && typeof parsed === 'object' && !Array.isArray(parsed)) record = parsed;
    else unreadable = 'not a JSON object';
  } catch (err) {
    unreadable = err instanceof SyntaxError ? 'not valid JSON' : 'not UTF-8 text';
  }
  const item = { key: entry.Key, id, record, unreadable, modifyIndex: entry.ModifyIndex };
  item.problems = problemsOf(item);
  return item;
}

const sleep = (ms, signal) =>
  new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => {
      clearTimeout(timer);
      resolve();
    }, { once: true });
  });

/** The index to send next, or null to ask without one: Consul's rule is to start over when the
 * index goes backwards (and never to send 0). */
function nextIndex(previous, received) {
  if (previous && BigInt(received) < BigInt(previous)) return null;
  return BigInt(received) > 0n ? received : '1';
}

/**
 * Follows a KV key (or, with `recurse`, a prefix) until `signal` aborts: `onData(answer)` first
 * with the current entries, then after every change, using blocking queries (`?index=`) so a change
 * shows within a moment and an idle page costs one open request. A failure calls `onError(err)`
 * and retries with a growing pause; a server that sends no index is polled every 5 s.
 */
export function watchKV(key, { recurse = false, signal }, onData, onError) {
  (async () => {
    let index = null;
    let pause = 1000;
    while (!signal.aborted) {
      let answer;
      try {
        answer = await kvBlockingGet(key, { recurse, index, signal });
      } catch (err) {
        if (signal.aborted) return;
        onError(err);
        await sleep(pause, signal);
        pause = Math.min(pause * 2, 30000);
        continue;
      }
      pause = 1000;
      if (!signal.aborted && (index === null || answer.index !== index)) onData(answer);
      if (answer.index && /^\d+$/.test(answer.index)) {
        index = nextIndex(index, answer.index);
      } else {
        index = null;
        await sleep(5000, signal);
      }
    }
  })();
}
