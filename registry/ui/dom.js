// dom.js: tiny helpers to build DOM nodes from data without innerHTML (KV data is untrusted).

/**
 * Creates an element. `attrs` keys: `class`, `text`, `on<event>` handlers, boolean attributes
 * (true adds, false/null/undefined skips) and any other attribute as a string.
 * Children may be nodes, strings, numbers, arrays of those, or null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'class') el.className = value;
    else if (name === 'text') el.textContent = value;
    else if (name.startsWith('on') && typeof value === 'function') {
      el.addEventListener(name.slice(2), value);
    } else if (value === true) el.setAttribute(name, '');
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

/** Replaces every child of `el` with `children`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A paragraph for an error next to what caused it; empty (and hidden) until `show` is called. */
export function errorSlot() {
  const el = h('p', { class: 'error', role: 'alert', hidden: true });
  return {
    el,
    show(err) {
      el.textContent = typeof err === 'string' ? err : describeError(err);
      el.hidden = false;
    },
    clear() {
      el.textContent = '';
      el.hidden = true;
    },
  };
}

/** Human text for an error thrown by api.js (or anything else). */
export function describeError(err) {
  if (err && typeof err.userMessage === 'string') return err.userMessage;
  return String(err?.message ?? err);
}

/** A status badge: the word is always shown, the colour only repeats it. */
export function statusBadge(status) {
  const s = ['passing', 'warning', 'critical'].includes(status) ? status : 'unknown';
  return h('span', { class: `badge badge-${s}` }, status || 'unknown');
}

/** Worst of a list of check statuses; no checks counts as passing (as Consul does). */
export function worstStatus(statuses) {
  const rank = { passing: 0, warning: 1, critical: 2 };
  let worst = 'passing';
  for (const s of statuses) {
    const r = rank[s] ?? 2;
    if (r > rank[worst]) worst = s in rank ? s : 'critical';
  }
  return worst;
}

/** Route fragment for a KV path: each segment percent-encoded, slashes kept. */
export function encodePath(path) {
  return path.split('/').map(encodeURIComponent).join('/');
}

/** A `<dl>` from [label, value] pairs; values may be nodes or text, null rows are skipped. */
export function defList(rows) {
  return h(
    'dl',
    { class: 'props' },
    rows
      .filter((r) => r && r[1] !== null && r[1] !== undefined && r[1] !== '')
      .map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]),
  );
}

/** Shows the page's confirmation dialog; resolves to true when the user confirms. */
export function confirmDialog(message, confirmLabel) {
  const dialog = document.getElementById('confirm');
  document.getElementById('confirm-message').textContent = message;
  const ok = document.getElementById('confirm-ok');
  ok.textContent = confirmLabel;
  dialog.returnValue = '';
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
    dialog.showModal();
    document.getElementById('confirm-cancel').focus();
  });
}
