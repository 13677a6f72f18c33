// instances.js: the Instances pages, read-only views of the master's records under
// `berth/instances/`: every instance with problems first, and one instance in full. Both follow
// the records live with blocking queries.

import { h, replace, errorSlot, defList, encodePath } from './dom.js';
import { RECORD_PREFIX, readRecord, servicesOf, restartsOf, stateTone, watchKV } from './records.js';

const instanceHref = (id) => `#/instances/${encodePath(id)}`;
const kvHref = (key) => `#/kv/${encodePath(key)}`;

/** Fields this page shows in their own place; any other field is listed under "Other fields". */
const KNOWN = new Set([
  'id',
  'user',
  'project',
  'commit',
  'built_commit',
  'built_at',
  'running_commit',
  'repo',
  'worker',
  'state',
  'degraded',
  'endpoints',
  'error',
  'moves',
  'services',
  'releases',
  'created_at',
  'updated_at',
]);
/** Where records and services may keep their last log lines. */
const LOG_FIELDS = ['log_lines', 'last_log_lines', 'logs', 'log_tail', 'last_logs', 'lines'];

const str = (v) => (typeof v === 'string' ? v : v === null || v === undefined ? '' : String(v));
const none = (text = 'none') => h('span', { class: 'muted' }, text);

function stateBadge(state) {
  const s = str(state) || 'unknown';
  return h('span', { class: `badge badge-${stateTone(s)}`, 'data-state': s }, s);
}

function shortCommit(commit) {
  const c = str(commit);
  if (!c) return none();
  return h('code', { title: c }, c.slice(0, 7));
}

/** `http://host:port/` for a TCP endpoint (IPv6 hosts in brackets); null for UDP. */
function endpointUrl(ep) {
  if (typeof ep.url === 'string' && /^https?:\/\//.test(ep.url)) return ep.url;
  if (!ep.host || !ep.host_port || (ep.protocol && ep.protocol !== 'tcp')) return null;
  const host = str(ep.host).includes(':') ? `[${ep.host}]` : ep.host;
  return `http://${host}:${ep.host_port}/`;
}

function endpointLink(ep) {
  const url = endpointUrl(ep);
  const label = ep.host ? `${str(ep.host).includes(':') ? `[${ep.host}]` : ep.host}:${ep.host_port}` : str(ep.url);
  const target = url ? h('a', { href: url, target: '_blank', rel: 'noopener noreferrer' }, label) : h('code', {}, label);
  return h('span', { class: 'endpoint' }, ep.service ? `${ep.service} ` : '', target, ep.protocol === 'udp' ? ' (udp)' : '');
}

function endpointsOf(rec) {
  return Array.isArray(rec.endpoints) ? rec.endpoints.filter((e) => e && typeof e === 'object') : [];
}

function workerCell(worker) {
  if (!worker || typeof worker !== 'object') return none(worker ? str(worker) : 'not placed');
  const node = str(worker.node);
  if (!node) return h('code', {}, str(worker.id) || JSON.stringify(worker));
  return h('a', { href: `#/nodes/${encodeURIComponent(node)}`, title: str(worker.id) }, node);
}

/**
 * A worker's error message as `{ headline, logs }`: the worker appends the failed service's last
 * log lines to the message after "last log lines:" (worker/src/stacks/faults.rs), which read
 * as one long paragraph where a line of text is wanted.
 */
function splitMessage(message) {
  const text = str(message);
  const at = text.search(/;? ?\n?last log lines:\n/);
  if (at < 0) return { headline: text, logs: null };
  const logs = text.slice(at).replace(/^;? ?\n?last log lines:\n/, '');
  return { headline: text.slice(0, at), logs: logs || null };
}

/** The error in one line: its step and its message without the log lines it carries. */
function errorText(error) {
  if (!error) return '';
  if (typeof error === 'string') return splitMessage(error).headline;
  const step = error.step ? `${error.step}: ` : '';
  return step + splitMessage(error.message ?? error.code ?? JSON.stringify(error)).headline;
}

/** Log lines kept under any of the usual field names, as one text; null when there are none. */
function logLines(obj) {
  if (!obj || typeof obj !== 'object') return null;
  for (const field of LOG_FIELDS) {
    const v = obj[field];
    if (Array.isArray(v) && v.length) return v.map(str).join('\n');
    if (typeof v === 'string' && v) return v;
  }
  return null;
}

/** Any JSON value, for fields this page does not know: scalars as text, the rest as JSON. */
function valueNode(v) {
  if (v === null || v === undefined || v === '') return none();
  if (typeof v !== 'object') return str(v);
  return h('pre', { class: 'value' }, JSON.stringify(v, null, 2));
}

/** A table of a list of objects, one column per field seen (moves, releases, future lists). */
function objectTable(list, id) {
  const rows = list.filter((x) => x && typeof x === 'object');
  const cols = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  return h(
    'div',
    { class: 'table-wrap' },
    h(
      'table',
      { class: 'stack', id },
      h('thead', {}, h('tr', {}, cols.map((c) => h('th', {}, c)))),
      h(
        'tbody',
        {},
        rows.map((r) =>
          h(
            'tr',
            { class: r.current === true ? 'current' : null },
            cols.map((c) => h('td', { 'data-label': c }, /commit$/.test(c) ? shortCommit(r[c]) : valueNode(r[c]))),
          ),
        ),
      ),
    ),
  );
}

/** Reports a failed read and shows the watch is retrying; the next answer clears both. */
function liveStatus() {
  const errors = errorSlot();
  const el = h('p', { class: 'muted live', id: 'inst-live', 'aria-live': 'off' }, 'Live: connecting to the registry…');
  return {
    errors,
    el,
    ok() {
      errors.clear();
      el.textContent = `Live: follows the records as they change (last update ${new Date().toLocaleTimeString()}).`;
      el.dataset.updated = String(Date.now());
    },
    failed(err) {
      errors.show(err);
      el.textContent = 'Live updates paused: retrying.';
    },
  };
}

export function renderInstances(view) {
  const title = 'Instances';
  const live = liveStatus();
  const summary = h('div', { id: 'inst-summary', 'aria-live': 'polite' });
  const filter = h('input', { type: 'search', id: 'inst-filter', placeholder: 'Filter', autocomplete: 'off' });
  const toolbar = h(
    'div',
    { class: 'toolbar' },
    h('label', { for: 'inst-filter', class: 'filter' }, h('span', {}, 'Filter by id, user, project, worker or state'), filter),
    live.el,
  );
  const body = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  view.setTitle(title);
  replace(view.el, view.heading(title), summary, toolbar, live.errors.el, body);

  let rows = [];
  const applyFilter = () => {
    const needle = filter.value.trim().toLowerCase();
    let shown = 0;
    for (const r of rows) {
      r.el.hidden = needle !== '' && !r.text.includes(needle);
      if (!r.el.hidden) shown++;
    }
    const noMatch = body.querySelector('.no-match');
    if (noMatch) noMatch.hidden = shown > 0 || rows.length === 0;
  };
  filter.addEventListener('input', applyFilter);

  const show = ({ entries, filtered }) => {
    live.ok();
    const items = entries
      .filter((e) => e && typeof e.Key === 'string' && !e.Key.endsWith('/'))
      .map(readRecord)
      .sort((a, b) => (b.problems.length > 0) - (a.problems.length > 0) || a.id.localeCompare(b.id));
    const problems = items.filter((i) => i.problems.length > 0);
    if (filtered && items.length === 0) {
      // Nothing readable is not "no problems": say why the page is empty.
      rows = [];
      replace(
        summary,
        h(
          'p',
          { class: 'error', role: 'alert', id: 'inst-denied' },
          'Permission denied: your token may not read the instance records under ',
          h('code', {}, RECORD_PREFIX),
          ' (set another one on the ACL page).',
        ),
      );
      replace(body);
      return;
    }
    replace(
      summary,
      h(
        'p',
        { class: problems.length ? 'problems-summary bad' : 'problems-summary', id: 'inst-counts' },
        h(
          'strong',
          { id: 'inst-problem-count', 'data-count': problems.length },
          problems.length ? `⚠ ${problems.length} with problems` : 'No problems',
        ),
        ` of ${items.length} instance${items.length === 1 ? '' : 's'}`,
        problems.length ? [': ', problems.map((p) => p.id).join(', ')] : '',
      ),
      filtered ? h('p', { class: 'note', id: 'inst-filtered' }, 'Some records are hidden: your token may not read them.') : null,
    );
    if (items.length === 0) {
      rows = [];
      replace(
        body,
        h(
          'p',
          { class: 'empty' },
          `No instances yet. The master keeps one record per instance under ${RECORD_PREFIX}; they appear here as soon as it writes them.`,
        ),
      );
      return;
    }
    rows = items.map((item) => ({ el: instanceRow(item), text: searchText(item) }));
    replace(
      body,
      h(
        'div',
        { class: 'table-wrap' },
        h(
          'table',
          { class: 'stack', id: 'instances' },
          h(
            'thead',
            {},
            h(
              'tr',
              {},
              ['Instance', 'User / project', 'State', 'Worker', 'Endpoints', 'Commit', 'Last error'].map((c) => h('th', {}, c)),
            ),
          ),
          h('tbody', {}, rows.map((r) => r.el)),
        ),
      ),
      h('p', { class: 'empty no-match', hidden: true }, 'No instance matches the filter.'),
    );
    applyFilter();
  };
  watchKVInto(view, RECORD_PREFIX, true, show, live);
}

function searchText(item) {
  const r = item.record;
  return [item.id, r.user, r.project, r.worker?.node, r.worker?.id, r.state, ...item.problems]
    .map(str)
    .join(' ')
    .toLowerCase();
}

function instanceRow(item) {
  const r = item.record;
  const problem = item.problems.length > 0;
  const endpoints = endpointsOf(r);
  const owner = [str(r.user), str(r.project)].filter(Boolean).join(' / ');
  const running = str(r.running_commit);
  const latest = str(r.commit);
  const err = errorText(r.error);
  return h(
    'tr',
    { 'data-instance': item.id, class: problem ? 'problem' : null, 'data-problem': problem ? 'true' : 'false' },
    h('td', { 'data-label': 'Instance' }, h('a', { href: instanceHref(item.id) }, str(r.id) || item.id)),
    h('td', { 'data-label': 'User / project' }, owner || none('—')),
    h(
      'td',
      { 'data-label': 'State', class: 'state' },
      item.unreadable ? none('unreadable') : stateBadge(r.state),
      problem && [
        h('br'),
        h('strong', { class: 'problem-mark' }, '⚠ Problem'),
        h('ul', { class: 'reasons' }, item.problems.filter((p) => p !== r.state).map((p) => h('li', {}, p))),
      ],
    ),
    h('td', { 'data-label': 'Worker' }, workerCell(r.worker)),
    h(
      'td',
      { 'data-label': 'Endpoints' },
      endpoints.length ? h('ul', { class: 'endpoints' }, endpoints.map((e) => h('li', {}, endpointLink(e)))) : none(),
    ),
    h(
      'td',
      { 'data-label': 'Commit' },
      running ? shortCommit(running) : shortCommit(latest),
      running && latest && latest !== running ? [h('br'), h('span', { class: 'muted' }, 'latest '), shortCommit(latest)] : null,
      !running && latest ? [h('br'), h('span', { class: 'muted' }, 'not running')] : null,
    ),
    h(
      'td',
      { 'data-label': 'Last error', class: 'last-error' },
      item.unreadable ? h('a', { href: kvHref(item.key) }, 'open the raw key') : err ? h('span', { class: 'error-text' }, err) : none(),
    ),
  );
}

/** Follows `key` for as long as the page is shown (the router aborts `view.signal` on leaving). */
function watchKVInto(view, key, recurse, show, live) {
  watchKV(key, { recurse, signal: view.signal }, show, (err) => live.failed(err));
}

export function renderInstance(view, id) {
  const key = RECORD_PREFIX + id;
  const live = liveStatus();
  const crumbs = h(
    'nav',
    { 'aria-label': 'Breadcrumb', class: 'breadcrumbs' },
    h('ol', {}, h('li', {}, h('a', { href: '#/instances' }, 'Instances'))),
  );
  const body = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
  view.setTitle(id);
  replace(view.el, crumbs, view.heading(id), live.el, live.errors.el, body);

  const show = ({ entries }) => {
    live.ok();
    const entry = entries.find((e) => e.Key === key);
    if (!entry) {
      replace(
        body,
        h(
          'p',
          { class: 'empty', id: 'inst-missing' },
          `There is no record for “${id}” (deleted, or not created yet; this page shows it if it appears). `,
          h('a', { href: '#/instances' }, 'See all instances'),
          '.',
        ),
      );
      return;
    }
    replace(body, instanceDetail(readRecord(entry)));
  };
  watchKVInto(view, key, false, show, live);
}

function instanceDetail(item) {
  const r = item.record;
  const parts = [];
  if (item.problems.length) {
    parts.push(
      h(
        'section',
        { class: 'panel problem-panel', id: 'inst-problems', 'aria-labelledby': 'problems-h' },
        h('h2', { id: 'problems-h' }, '⚠ Problem'),
        h('ul', { class: 'reasons' }, item.problems.map((p) => h('li', {}, p))),
      ),
    );
  }
  if (item.unreadable) {
    parts.push(
      h('p', { class: 'note' }, `This record cannot be read (${item.unreadable}). `, h('a', { href: kvHref(item.key) }, 'Open the raw key'), '.'),
    );
    return parts;
  }
  const w = r.worker && typeof r.worker === 'object' ? r.worker : null;
  parts.push(
    section('Instance', 'inst-summary-panel', [
      defList([
        ['State', stateBadge(r.state)],
        ['User', str(r.user) || null],
        ['Project', str(r.project) || null],
        ['Worker', workerCell(r.worker)],
        ['Worker id', w ? h('code', {}, str(w.id)) : null],
        ['Worker API', w && w.url ? h('code', {}, str(w.url)) : null],
        ['Worker address', w && w.address ? h('code', {}, str(w.address)) : null],
        ['Repository', r.repo ? h('code', {}, str(r.repo)) : null],
        ['Created', str(r.created_at) || null],
        ['Updated', str(r.updated_at) || null],
        ['Record', h('a', { href: kvHref(item.key), id: 'inst-raw' }, item.key)],
      ]),
    ]),
  );
  const endpoints = endpointsOf(r);
  parts.push(
    section('Endpoints', 'inst-endpoints', [
      endpoints.length
        ? h(
            'div',
            { class: 'table-wrap' },
            h(
              'table',
              { class: 'stack' },
              h('thead', {}, h('tr', {}, ['Service', 'Address', 'Container port', 'Protocol'].map((c) => h('th', {}, c)))),
              h(
                'tbody',
                {},
                endpoints.map((e) =>
                  h(
                    'tr',
                    {},
                    h('td', { 'data-label': 'Service' }, str(e.service)),
                    h('td', { 'data-label': 'Address' }, endpointLink({ ...e, service: '' })),
                    h('td', { 'data-label': 'Container port' }, str(e.container_port)),
                    h('td', { 'data-label': 'Protocol' }, str(e.protocol) || 'tcp'),
                  ),
                ),
              ),
            ),
          )
        : h('p', { class: 'muted' }, 'No published ports.'),
    ]),
  );
  parts.push(
    section('Releases', 'inst-releases', [
      defList([
        ['Running commit', str(r.running_commit) ? h('code', {}, r.running_commit) : none('nothing running')],
        ['Built commit', str(r.built_commit) ? h('code', {}, r.built_commit) : none()],
        ['Built at', str(r.built_at) || null],
        ['Latest upload', str(r.commit) ? h('code', {}, r.commit) : none()],
      ]),
      Array.isArray(r.releases) && r.releases.length ? [h('h3', {}, 'Release history'), objectTable(r.releases, 'inst-release-list')] : null,
    ]),
  );
  const services = servicesOf(r);
  if (services.length) parts.push(section('Services', 'inst-services', [servicesTable(services)]));
  if (r.error) parts.push(section('Last error', 'inst-error', [errorBlock(r.error)]));
  if (Array.isArray(r.moves) && r.moves.length) {
    parts.push(section('Placement moves', 'inst-moves', [objectTable(r.moves, 'inst-move-list')]));
  }
  const other = Object.keys(r).filter((k) => !KNOWN.has(k));
  if (other.length) parts.push(section('Other fields', 'inst-other', [defList(other.map((k) => [k, valueNode(r[k])]))]));
  return parts;
}

function section(title, id, children) {
  return h('section', { class: 'panel', id, 'aria-labelledby': `${id}-h` }, h('h2', { id: `${id}-h` }, title), children);
}

function errorBlock(error) {
  if (typeof error !== 'object') return h('pre', { class: 'output' }, str(error));
  const message = splitMessage(error.message);
  const logs = logLines(error) ?? message.logs;
  const rest = Object.keys(error).filter((k) => !['step', 'message', ...LOG_FIELDS].includes(k));
  return [
    defList([
      ['Step', str(error.step) || null],
      ['Message', message.headline ? h('pre', { class: 'output error-message' }, message.headline) : null],
      ...rest.map((k) => [k, valueNode(error[k])]),
    ]),
    logs ? [h('h3', {}, 'Last log lines'), h('pre', { class: 'output logs' }, logs)] : null,
  ];
}

function servicesTable(services) {
  return h(
    'div',
    { class: 'table-wrap' },
    h(
      'table',
      { class: 'stack', id: 'inst-service-list' },
      h('thead', {}, h('tr', {}, ['Service', 'State', 'Restarts', 'Details'].map((c) => h('th', {}, c)))),
      h(
        'tbody',
        {},
        services.map((s) => {
          const restarts = restartsOf(s.info);
          const logs = logLines(s.info);
          const details = Object.entries(s.info).filter(
            ([k]) => !['name', 'service', 'state', 'status', 'restarts', 'restart_count', 'restartCount', ...LOG_FIELDS].includes(k),
          );
          return h(
            'tr',
            { 'data-service': s.name, class: stateTone(s.state) === 'critical' ? 'problem' : null },
            h('td', { 'data-label': 'Service' }, s.name),
            h('td', { 'data-label': 'State' }, stateBadge(s.state)),
            h('td', { 'data-label': 'Restarts' }, restarts === null ? none('—') : String(restarts)),
            h(
              'td',
              { 'data-label': 'Details' },
              details.length ? defList(details.map(([k, v]) => [k, valueNode(v)])) : null,
              logs ? h('pre', { class: 'output logs' }, logs) : null,
              !details.length && !logs ? none() : null,
            ),
          );
        }),
      ),
    ),
  );
}
