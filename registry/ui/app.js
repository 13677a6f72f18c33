// app.js: entry point: hash routing between the pages and the header's token indicator.

import { getToken } from './api.js';
import { h, replace } from './dom.js';
import { renderKV } from './kv.js';
import { renderServices, renderService, renderNodes, renderNode } from './catalog.js';
import { renderACL } from './acl.js';
import { renderInstances, renderInstance } from './instances.js';

const main = document.getElementById('main');

const decode = (s) => {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
};
const decodePath = (p) => p.split('/').map(decode).join('/');

const routes = [
  [/^#\/kv\/(.*)$/, 'kv', (view, m) => renderKV(view, decodePath(m[1]))],
  [/^#\/services\/?$/, 'services', (view) => renderServices(view)],
  [/^#\/services\/(.+)$/, 'services', (view, m) => renderService(view, decode(m[1]))],
  [/^#\/nodes\/?$/, 'nodes', (view) => renderNodes(view)],
  [/^#\/nodes\/(.+)$/, 'nodes', (view, m) => renderNode(view, decode(m[1]))],
  [/^#\/instances\/?$/, 'instances', (view) => renderInstances(view)],
  [/^#\/instances\/(.+)$/, 'instances', (view, m) => renderInstance(view, decodePath(m[1]))],
  [/^#\/acl\/?$/, 'acl', (view) => renderACL(view, updateTokenIndicator)],
];

function updateTokenIndicator() {
  const el = document.getElementById('token-indicator');
  replace(el, getToken() ? 'Token set' : 'No token');
  el.classList.toggle('set', Boolean(getToken()));
}

let focusOnRender = false;
// Aborted when another page is shown, so a live page stops its blocking queries.
let leave = new AbortController();

function route() {
  const hash = location.hash || '#/kv/';
  const match = routes.map(([re, section, render]) => [hash.match(re), section, render]).find(([m]) => m);
  if (!match) {
    location.replace('#/kv/');
    return;
  }
  const [m, section, render] = match;
  for (const link of document.querySelectorAll('#nav a')) {
    if (link.dataset.section === section) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  // Each render writes into its own container, so a slow answer for a page the user already
  // left lands in a detached element instead of over the current page.
  const el = h('div', { class: 'page' });
  replace(main, el);
  leave.abort();
  leave = new AbortController();
  const view = {
    el,
    signal: leave.signal,
    setTitle: (title) => {
      document.title = `${title} · berth registry`;
    },
    heading: (title) => {
      const h1 = h('h1', { tabindex: '-1' }, title);
      if (focusOnRender) queueMicrotask(() => h1.focus({ preventScroll: true }));
      return h1;
    },
  };
  render(view, m);
  focusOnRender = true;
}

window.addEventListener('hashchange', route);
// A link to the page already shown reloads its data instead of doing nothing.
document.addEventListener('click', (event) => {
  const link = event.target.closest?.('a[href^="#/"]');
  if (link && link.getAttribute('href') === location.hash && !event.defaultPrevented) route();
});
updateTokenIndicator();
route();
