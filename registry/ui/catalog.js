// catalog.js: the Services and Nodes pages, read from the catalog and health endpoints.

import { getJSON, getList } from './api.js';
import { h, replace, errorSlot, describeError, defList, statusBadge, worstStatus } from './dom.js';

const STATUSES = ['passing', 'warning', 'critical'];
const serviceHref = (name) => `#/services/${encodeURIComponent(name)}`;
const nodeHref = (name) => `#/nodes/${encodeURIComponent(name)}`;

/** Renders the page skeleton and returns where the data goes plus its error slot. */
function skeleton(view, title, crumbs) {
  const errors = errorSlot();
  const body = h('div', { 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Loading…'));
  view.setTitle(title);
  replace(view.el, crumbs, view.heading(title), errors.el, body);
  return { body, errors };
}

function crumbs(href, label) {
  return h('nav', { 'aria-label': 'Breadcrumb', class: 'breadcrumbs' }, h('ol', {}, h('li', {}, h('a', { href }, label))));
}

function tags(list) {
  if (!list || list.length === 0) return h('span', { class: 'muted' }, 'none');
  return h('ul', { class: 'tags' }, list.map((t) => h('li', {}, t)));
}

function meta(obj) {
  const entries = Object.entries(obj ?? {});
  if (entries.length === 0) return h('span', { class: 'muted' }, 'none');
  return h('dl', { class: 'meta' }, entries.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function checksTable(checks, { showService = false } = {}) {
  if (!checks || checks.length === 0) {
    return h('p', { class: 'muted' }, 'No health checks: counted as passing.');
  }
  return h(
    'div',
    { class: 'table-wrap' },
    h(
      'table',
      { class: 'checks stack' },
      h(
        'thead',
        {},
        h('tr', {}, h('th', {}, 'Check'), h('th', {}, 'Status'), showService && h('th', {}, 'Service'), h('th', {}, 'Output')),
      ),
      h(
        'tbody',
        {},
        checks.map((c) =>
          h(
            'tr',
            { class: `check check-${c.Status}`, 'data-check-id': c.CheckID },
            h('td', { 'data-label': 'Check' }, c.Name || c.CheckID, h('br'), h('code', { class: 'muted' }, c.CheckID)),
            h('td', { 'data-label': 'Status' }, statusBadge(c.Status)),
            showService &&
              h(
                'td',
                { 'data-label': 'Service' },
                c.ServiceName ? h('a', { href: serviceHref(c.ServiceName) }, c.ServiceName) : h('span', { class: 'muted' }, 'node check'),
              ),
            h('td', { 'data-label': 'Output' }, c.Output ? h('pre', { class: 'output' }, c.Output) : h('span', { class: 'muted' }, 'no output')),
          ),
        ),
      ),
    ),
  );
}

/** ACLs hid entries of a list: an error when nothing is left, else a note above the list. */
function hiddenNote(errors, nothingLeft, what) {
  if (nothingLeft) {
    errors.show(`Permission denied: your token may not read any ${what} (set another one on the ACL page).`);
  } else {
    errors.el.after(h('p', { class: 'note' }, `Some ${what} are hidden: your token may not read them.`));
  }
}

function counts(statuses) {
  const c = { passing: 0, warning: 0, critical: 0 };
  for (const s of statuses) c[s in c ? s : 'critical']++;
  return c;
}

export async function renderServices(view) {
  const { body, errors } = skeleton(view, 'Services', null);
  let names;
  let health;
  let filtered;
  try {
    const { list: services, filtered: hidden } = await getList('/v1/catalog/services');
    filtered = hidden;
    names = Object.keys(services ?? {}).sort();
    // One health request per service gives instance-level status (worst check of each instance).
    health = await Promise.all(names.map((n) => getJSON(`/v1/health/service/${encodeURIComponent(n)}`)));
  } catch (err) {
    replace(body);
    errors.show(err);
    return;
  }
  if (filtered) hiddenNote(errors, names.length === 0, 'services');
  if (names.length === 0) {
    if (filtered) return replace(body);
    replace(
      body,
      h(
        'p',
        { class: 'empty' },
        'No services registered yet. Services appear here once an agent registers them (PUT /v1/agent/service/register) or they are added with PUT /v1/catalog/register.',
      ),
    );
    return;
  }
  const rows = names.map((name, i) => {
    const c = counts((health[i] ?? []).map((e) => worstStatus((e.Checks ?? []).map((k) => k.Status))));
    const instanceTags = [...new Set((health[i] ?? []).flatMap((e) => e.Service?.Tags ?? []))];
    return h(
      'tr',
      { 'data-service': name },
      h('td', { 'data-label': 'Service' }, h('a', { href: serviceHref(name) }, name)),
      h('td', { 'data-label': 'Tags' }, tags(instanceTags)),
      STATUSES.map((s) =>
        h('td', { 'data-label': s[0].toUpperCase() + s.slice(1), class: `count count-${s}${c[s] ? '' : ' zero'}` }, String(c[s])),
      ),
    );
  });
  replace(
    body,
    h('p', { class: 'muted' }, 'Instances per service, each counted by its worst check.'),
    h(
      'div',
      { class: 'table-wrap' },
      h(
        'table',
        { class: 'stack', id: 'services' },
        h(
          'thead',
          {},
          h('tr', {}, h('th', {}, 'Service'), h('th', {}, 'Tags'), h('th', {}, 'Passing'), h('th', {}, 'Warning'), h('th', {}, 'Critical')),
        ),
        h('tbody', {}, rows),
      ),
    ),
  );
}

export async function renderService(view, name) {
  const { body, errors } = skeleton(view, name, crumbs('#/services', 'Services'));
  let entries;
  try {
    entries = await getJSON(`/v1/health/service/${encodeURIComponent(name)}`);
  } catch (err) {
    replace(body);
    errors.show(err);
    return;
  }
  if (!entries || entries.length === 0) {
    replace(
      body,
      h('p', { class: 'empty' }, `No instances of “${name}” are registered. `, h('a', { href: '#/services' }, 'See all services'), '.'),
    );
    return;
  }
  replace(
    body,
    entries.map((e) => {
      const svc = e.Service ?? {};
      const status = worstStatus((e.Checks ?? []).map((c) => c.Status));
      return h(
        'section',
        { class: 'panel instance', 'data-instance': svc.ID },
        h('h2', {}, svc.ID, ' ', statusBadge(status)),
        defList([
          ['Node', h('a', { href: nodeHref(e.Node?.Node) }, e.Node?.Node ?? '')],
          ['Address', svc.Address || e.Node?.Address || ''],
          ['Port', String(svc.Port ?? 0)],
          ['Tags', tags(svc.Tags)],
          ['Meta', meta(svc.Meta)],
        ]),
        h('h3', {}, 'Checks'),
        checksTable(e.Checks),
      );
    }),
  );
}

export async function renderNodes(view) {
  const { body, errors } = skeleton(view, 'Nodes', null);
  let checks = null;
  const [nodesResult, checksResult] = await Promise.allSettled([
    getList('/v1/catalog/nodes'),
    getJSON('/v1/health/state/any'),
  ]);
  if (nodesResult.status === 'rejected') {
    replace(body);
    errors.show(nodesResult.reason);
    return;
  }
  const { list: nodes, filtered } = nodesResult.value;
  if (checksResult.status === 'fulfilled') checks = checksResult.value;
  else errors.show(`Node health is unknown: ${describeError(checksResult.reason)}`);
  if (filtered) hiddenNote(errors, !nodes || nodes.length === 0, 'nodes');
  if (!nodes || nodes.length === 0) {
    if (filtered) return replace(body);
    replace(body, h('p', { class: 'empty' }, 'No nodes registered yet. Nodes appear when an agent joins or PUT /v1/catalog/register adds one.'));
    return;
  }
  const byNode = new Map();
  for (const c of checks ?? []) {
    if (!byNode.has(c.Node)) byNode.set(c.Node, []);
    byNode.get(c.Node).push(c.Status);
  }
  const rows = nodes.map((n) => {
    const statuses = byNode.get(n.Node) ?? [];
    const c = counts(statuses);
    const status = checks === null ? 'unknown' : worstStatus(statuses);
    return h(
      'tr',
      { 'data-node': n.Node },
      h('td', { 'data-label': 'Node' }, h('a', { href: nodeHref(n.Node) }, n.Node)),
      h('td', { 'data-label': 'Address' }, n.Address),
      h('td', { 'data-label': 'Status' }, statusBadge(status)),
      h(
        'td',
        { 'data-label': 'Checks' },
        statuses.length === 0 ? h('span', { class: 'muted' }, checks === null ? 'unknown' : 'none') : STATUSES.filter((s) => c[s]).map((s) => `${c[s]} ${s}`).join(', '),
      ),
    );
  });
  replace(
    body,
    h(
      'div',
      { class: 'table-wrap' },
      h(
        'table',
        { class: 'stack', id: 'nodes' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Node'), h('th', {}, 'Address'), h('th', {}, 'Status'), h('th', {}, 'Checks'))),
        h('tbody', {}, rows),
      ),
    ),
  );
}

export async function renderNode(view, name) {
  const { body, errors } = skeleton(view, name, crumbs('#/nodes', 'Nodes'));
  let node;
  let hidden;
  let checks;
  try {
    let answer;
    [answer, checks] = await Promise.all([
      getList(`/v1/catalog/node/${encodeURIComponent(name)}`),
      getJSON(`/v1/health/node/${encodeURIComponent(name)}`),
    ]);
    ({ list: node, filtered: hidden } = answer);
  } catch (err) {
    replace(body);
    errors.show(err);
    return;
  }
  if (!node && hidden) {
    // Consul answers `null` (filtered) for a node the token may not read.
    replace(body);
    errors.show(`Permission denied: your token may not read node “${name}” (set another one on the ACL page).`);
    return;
  }
  if (!node || !node.Node) {
    replace(body, h('p', { class: 'empty' }, `No node named “${name}” is registered. `, h('a', { href: '#/nodes' }, 'See all nodes'), '.'));
    return;
  }
  const services = Object.values(node.Services ?? {}).sort((a, b) => a.ID.localeCompare(b.ID));
  replace(
    body,
    h(
      'section',
      { class: 'panel' },
      h('h2', {}, 'Node ', statusBadge(worstStatus((checks ?? []).map((c) => c.Status)))),
      defList([
        ['Address', node.Node.Address],
        ['Datacenter', node.Node.Datacenter],
        ['ID', node.Node.ID],
        ['Meta', meta(node.Node.Meta)],
      ]),
    ),
    h('section', { class: 'panel' }, h('h2', {}, 'Checks'), checksTable(checks, { showService: true })),
    h(
      'section',
      { class: 'panel' },
      h('h2', {}, 'Services'),
      services.length === 0
        ? h('p', { class: 'muted' }, 'No services on this node.')
        : h(
            'div',
            { class: 'table-wrap' },
            h(
              'table',
              { class: 'stack', id: 'node-services' },
              h('thead', {}, h('tr', {}, h('th', {}, 'Instance'), h('th', {}, 'Service'), h('th', {}, 'Address'), h('th', {}, 'Port'), h('th', {}, 'Tags'))),
              h(
                'tbody',
                {},
                services.map((s) =>
                  h(
                    'tr',
                    {},
                    h('td', { 'data-label': 'Instance' }, s.ID),
                    h('td', { 'data-label': 'Service' }, h('a', { href: serviceHref(s.Service) }, s.Service)),
                    h('td', { 'data-label': 'Address' }, s.Address || node.Node.Address),
                    h('td', { 'data-label': 'Port' }, String(s.Port ?? 0)),
                    h('td', { 'data-label': 'Tags' }, tags(s.Tags)),
                  ),
                ),
              ),
            ),
          ),
    ),
  );
}
