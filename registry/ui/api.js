// api.js: the only module that talks to the registry, through the Consul HTTP API.

const TOKEN_KEY = 'berth-ui-token';

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY) ?? '';
}

export function setToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** A failed request: `status` 0 means the registry could not be reached. */
export class ApiError extends Error {
  constructor(status, body) {
    super(body ? `${status}: ${body}` : `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }

  get denied() {
    return this.status === 403;
  }

  get userMessage() {
    if (this.status === 0) return `Cannot reach the registry (${this.body}).`;
    if (this.status === 403 && this.body.startsWith('ACL not found')) {
      return 'Permission denied: the registry does not know this token (set another one on the ACL page).';
    }
    if (this.status === 403) return 'Permission denied: your token does not allow this.';
    return `The registry answered ${this.status}${this.body ? `: ${this.body}` : ''}`;
  }
}

/** Encodes a KV key for a URL path: each segment percent-encoded, slashes kept. */
export function kvUrl(key) {
  return '/v1/kv/' + key.split('/').map(encodeURIComponent).join('/');
}

/**
 * Sends one request and returns the body text; `null` for a 404 when `allow404` is set.
 * Throws ApiError for any other non-2xx answer or a network failure.
 */
export async function request(method, path, opts = {}) {
  return (await exchange(method, path, opts)).text;
}

/**
 * Like `request`, plus whether the registry dropped entries the token may not read
 * (`X-Consul-Results-Filtered-By-ACLs: true`, which Consul sends instead of a 403 on lists).
 */
async function exchange(method, path, { body, allow404 = false, signal } = {}) {
  const headers = {};
  const token = getToken();
  if (token) headers['X-Consul-Token'] = token;
  let res;
  let text;
  try {
    res = await fetch(path, { method, headers, body, cache: 'no-store', signal });
    text = await res.text();
  } catch (err) {
    // A page that was left aborts its requests: not an error to show anyone.
    if (err.name === 'AbortError') throw err;
    throw new ApiError(0, err.message);
  }
  const filtered = res.headers.get('X-Consul-Results-Filtered-By-ACLs') === 'true';
  const index = res.headers.get('X-Consul-Index');
  if (res.status === 404 && allow404) return { text: null, filtered, index };
  if (!res.ok) throw new ApiError(res.status, text.trim());
  return { text, filtered, index };
}

export async function getJSON(path, opts) {
  const text = await request('GET', path, opts);
  return text === null ? null : JSON.parse(text);
}

/** GET /v1/kv/<key>: the entry (with `FlagsText` keeping all 64 bits of Flags) or null. */
export async function kvGet(key) {
  const text = await request('GET', kvUrl(key), { allow404: true });
  if (text === null) return null;
  const [entry] = JSON.parse(text);
  // JSON numbers above 2^53 lose precision in JavaScript; keep the exact digits for the rewrite.
  entry.FlagsText = /"Flags"\s*:\s*(\d+)/.exec(text)?.[1] ?? '0';
  return entry;
}

/** A GET of a list: `{ list, filtered }`, `filtered` when ACLs hid some entries. */
export async function getList(path, opts) {
  const { text, filtered } = await exchange('GET', path, opts);
  return { list: text === null ? null : JSON.parse(text), filtered };
}

/**
 * GET /v1/kv/<prefix>?keys&separator=/ : the direct children of a folder ([] when none), and
 * whether ACLs hid some.
 */
export async function kvList(prefix) {
  const { list, filtered } = await getList(`${kvUrl(prefix)}?keys&separator=/`, { allow404: true });
  return { keys: (list ?? []).filter((k) => k !== prefix), filtered };
}

/**
 * GET /v1/kv/<key> (with `recurse`, every key under a prefix) as a Consul blocking query: with an
 * `index` from an earlier answer the registry holds the request until something under the key
 * changes past that index or `wait` passes. Resolves to `{ entries, index, filtered }`: entries
 * `[]` when nothing exists, `index` the answer's X-Consul-Index (null if the server sent none).
 */
export async function kvBlockingGet(key, { recurse = false, index = null, wait = '60s', signal } = {}) {
  const params = [];
  if (recurse) params.push('recurse');
  if (index) params.push(`index=${encodeURIComponent(index)}`, `wait=${wait}`);
  const q = params.length ? `?${params.join('&')}` : '';
  const { text, filtered, index: next } = await exchange('GET', kvUrl(key) + q, { allow404: true, signal });
  return { entries: text === null ? [] : JSON.parse(text), index: next, filtered };
}

/** PUT a value; resolves to the registry's true/false answer. */
export async function kvPut(key, value, { flags, cas } = {}) {
  const params = new URLSearchParams();
  if (flags !== undefined) params.set('flags', flags);
  if (cas !== undefined) params.set('cas', cas);
  const qs = params.toString();
  const q = qs ? `?${qs}` : '';
  return (await request('PUT', kvUrl(key) + q, { body: value })).trim() === 'true';
}

export async function kvDelete(key, { recurse = false } = {}) {
  await request('DELETE', kvUrl(key) + (recurse ? '?recurse' : ''));
}

const writeCache = new Map();

/** The key whose write permission stands for a folder's (KV rules are prefix rules). */
export const folderProbeKey = (prefix) => `${prefix}.berth-ui-write-probe`;

/**
 * Whether the current token may write `key`. Probe: a PUT with a check-and-set index no entry
 * can have (u64::MAX) never writes anything; the registry checks the ACL first, so a token
 * without write access gets 403 and any other token gets `false`. Any other failure (network,
 * 5xx) counts as writable so the controls stay and the action itself reports the error.
 */
export async function canWriteKV(key) {
  const cacheKey = `${getToken()}\n${key}`;
  if (writeCache.has(cacheKey)) return writeCache.get(cacheKey);
  let writable = true;
  try {
    await request('PUT', `${kvUrl(key)}?cas=18446744073709551615`, { body: '' });
  } catch (err) {
    if (err instanceof ApiError && err.denied) writable = false;
  }
  writeCache.set(cacheKey, writable);
  return writable;
}

export function forgetPermissions() {
  writeCache.clear();
}
