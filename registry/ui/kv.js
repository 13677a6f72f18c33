// kv.js: the Key/Value pages: folder listing with filter, key view and edit, create, delete, locks.

import * as api from './api.js';
import {
  h,
  replace,
  errorSlot,
  defList,
  confirmDialog,
  encodePath,
} from './dom.js';
import { ownedByMaster, RECORD_PREFIX } from './records.js';

const kvHref = (path) => `#/kv/${encodePath(path)}`;

const OWNED_WARNING =
  'berth’s master writes these keys (instance records, locks, instance addresses) and acts on what they say. ' +
  'A change by hand can make it lose track of an instance or start it in the wrong place; ' +
  'use the master’s API to change instances.';

/** The warning shown on a folder or key the master owns; null elsewhere. */
function ownedNote(path) {
  if (!ownedByMaster(path)) return null;
  const records = path.startsWith(RECORD_PREFIX) || RECORD_PREFIX.startsWith(path);
  return h(
    'p',
    { class: 'note', id: 'kv-owned-note', role: 'note' },
    h('strong', {}, 'Managed by berth. '),
    OWNED_WARNING,
    records ? [' Read the records on the ', h('a', { href: '#/instances' }, 'Instances page'), '.'] : null,
  );
}

/** Asks before a change to a key the master owns; true when it may go ahead. */
async function confirmOwned(key, what, label) {
  if (!ownedByMaster(key)) return true;
  return confirmDialog(`“${key}” is managed by berth. ${OWNED_WARNING} ${what}`, label);
}

/** Renders `#/kv/<path>`: a folder when the path is empty or ends in `/`, else a key. */
export function renderKV(view, path) {
  if (path === '' || path.endsWith('/')) return renderFolder(view, path);
  return renderKey(view, path);
}

function parentOf(path) {
  const trimmed = path.endsWith('/') ? path.slice(0, -1) : path;
  const cut = trimmed.lastIndexOf('/');
  return cut < 0 ? '' : trimmed.slice(0, cut + 1);
}

function lastName(path) {
  const trimmed = path.endsWith('/') ? path.slice(0, -1) : path;
  return trimmed.slice(trimmed.lastIndexOf('/') + 1);
}

/** Links to the folders above `path` (none at the root: the heading says where you are). */
function breadcrumbs(path) {
  if (path === '') return null;
  const items = [h('li', {}, h('a', { href: '#/kv/' }, 'Key/Value'))];
  const parent = parentOf(path);
  let acc = '';
  for (const segment of parent.split('/').slice(0, -1)) {
    acc += `${segment}/`;
    items.push(h('li', {}, h('a', { href: kvHref(acc) }, `${segment}/`)));
  }
  return h('nav', { 'aria-label': 'Breadcrumb', class: 'breadcrumbs' }, h('ol', {}, items));
}

async function renderFolder(view, prefix) {
  const title = prefix === '' ? 'Key/Value' : `${lastName(prefix)}/`;
  const errors = errorSlot();
  const listing = h('div', { class: 'listing', 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Loading…'));
  const toolbar = h('div', { class: 'toolbar' });
  const formArea = h('div');
  view.setTitle(title);
  replace(view.el, breadcrumbs(prefix), view.heading(title), ownedNote(prefix), toolbar, formArea, errors.el, listing);

  let keys;
  let filtered;
  try {
    ({ keys, filtered } = await api.kvList(prefix));
  } catch (err) {
    replace(listing);
    errors.show(err);
    return;
  }
  const writable = await api.canWriteKV(api.folderProbeKey(prefix));

  const filter = h('input', {
    type: 'search',
    id: 'kv-filter',
    placeholder: 'Filter',
    autocomplete: 'off',
  });
  const actions = [];
  if (writable) {
    actions.push(
      h('button', { type: 'button', id: 'kv-new-key', onclick: () => showCreate(formArea, prefix, false) }, 'New key'),
      h('button', { type: 'button', id: 'kv-new-folder', onclick: () => showCreate(formArea, prefix, true) }, 'New folder'),
    );
    if (prefix !== '') {
      actions.push(
        h(
          'button',
          { type: 'button', id: 'kv-delete-folder', class: 'danger', onclick: () => deleteFolder(prefix, errors) },
          'Delete folder',
        ),
      );
    }
  }
  if (!writable) {
    actions.push(h('p', { class: 'muted read-only', id: 'kv-read-only' }, 'Read only: your token may not change keys here.'));
  }
  replace(
    toolbar,
    h('label', { for: 'kv-filter', class: 'filter' }, h('span', {}, 'Filter keys in this folder'), filter),
    h('div', { class: 'actions' }, actions),
  );

  const rows = keys.map((key) => {
    const name = key.slice(prefix.length);
    const folder = key.endsWith('/');
    return {
      name,
      el: h(
        'li',
        { class: folder ? 'folder' : 'key' },
        h(
          'a',
          { href: kvHref(key) },
          h('span', { class: 'kind', 'aria-hidden': 'true' }, folder ? '▸' : '•'),
          h('span', { class: 'name' }, name),
          ownedByMaster(key) && !ownedByMaster(prefix) ? h('span', { class: 'owned-tag' }, 'managed by berth') : null,
        ),
      ),
    };
  });
  const list = h('ul', { class: 'kv-list', id: 'kv-list' }, rows.map((r) => r.el));
  const noMatch = h('p', { class: 'empty', hidden: true }, 'No key in this folder matches the filter.');
  filter.addEventListener('input', () => {
    const needle = filter.value.toLowerCase();
    let shown = 0;
    for (const r of rows) {
      const hit = r.name.toLowerCase().includes(needle);
      r.el.hidden = !hit;
      if (hit) shown++;
    }
    noMatch.hidden = shown > 0 || rows.length === 0;
  });

  if (filtered && rows.length === 0) {
    errors.show('Permission denied: your token may not read the keys in this folder (set another one on the ACL page).');
  } else if (filtered) {
    listing.before(h('p', { class: 'note', id: 'kv-filtered' }, 'Some keys in this folder are hidden: your token may not read them.'));
  }
  if (filtered && rows.length === 0) {
    replace(listing);
    replace(toolbar);
  } else if (rows.length === 0) {
    const hint = writable
      ? 'No keys yet — create one with ‘New key’ or group keys with ‘New folder’.'
      : 'No keys here yet. Your token can only read, so ask an operator to add keys.';
    replace(listing, h('p', { class: 'empty' }, hint));
  } else {
    replace(listing, list, noMatch);
  }
}

function showCreate(area, prefix, folder) {
  const errors = errorSlot();
  const name = h('input', {
    id: 'kv-create-name',
    required: true,
    autocomplete: 'off',
    spellcheck: 'false',
    placeholder: folder ? 'folder name' : 'key name (may contain /)',
  });
  const value = folder ? null : h('textarea', { id: 'kv-create-value', rows: 6, spellcheck: 'false' });
  const form = h(
    'form',
    { class: 'panel', id: 'kv-create-form' },
    h('h2', {}, folder ? 'New folder' : 'New key'),
    h('label', { for: 'kv-create-name' }, `Name (inside ${prefix === '' ? 'the root' : prefix})`),
    name,
    value && [h('label', { for: 'kv-create-value' }, 'Value'), value],
    errors.el,
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'submit', id: 'kv-create-submit', class: 'primary' }, 'Create'),
      h('button', { type: 'button', onclick: () => replace(area) }, 'Cancel'),
    ),
  );
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    errors.clear();
    let rel = name.value.trim().replace(/^\/+/, '');
    if (folder) rel = rel.replace(/\/+$/, '');
    if (rel === '' || rel.endsWith('/')) {
      errors.show(folder ? 'Give the folder a name.' : 'Give the key a name that does not end in /.');
      name.focus();
      return;
    }
    const key = prefix + rel + (folder ? '/' : '');
    if (!(await confirmOwned(key, 'Create it anyway?', 'Create anyway'))) return;
    try {
      // cas=0: create only; an existing key is never overwritten from this form.
      const created = await api.kvPut(key, folder ? '' : value.value, { cas: 0 });
      if (!created) {
        errors.show(`“${key}” already exists.`);
        return;
      }
    } catch (err) {
      errors.show(err);
      return;
    }
    location.hash = kvHref(key);
  });
  replace(area, form);
  name.focus();
}

async function deleteFolder(prefix, errors) {
  const ok = ownedByMaster(prefix)
    ? await confirmOwned(prefix, 'Delete this folder and every key under it anyway?', 'Delete anyway')
    : await confirmDialog(`Delete the folder “${prefix}” and every key under it?`, 'Delete folder');
  if (!ok) return;
  try {
    await api.kvDelete(prefix, { recurse: true });
  } catch (err) {
    errors.show(err);
    return;
  }
  location.hash = kvHref(parentOf(prefix));
}

/** Decodes a KV value: bytes, and text when the bytes are valid UTF-8 (else null). */
function decodeValue(base64) {
  if (base64 === null || base64 === undefined) return { bytes: new Uint8Array(), text: '' };
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  try {
    return { bytes, text: new TextDecoder('utf-8', { fatal: true }).decode(bytes) };
  } catch {
    return { bytes, text: null };
  }
}

function prettyJSON(text) {
  const t = text.trim();
  if (!(t.startsWith('{') || t.startsWith('['))) return null;
  try {
    return JSON.stringify(JSON.parse(t), null, 2);
  } catch {
    return null;
  }
}

/** `offset  hex bytes  |printable|`, 16 bytes a line, at most 4 KiB. */
function hexDump(bytes) {
  const lines = [];
  const max = Math.min(bytes.length, 4096);
  for (let off = 0; off < max; off += 16) {
    const row = Array.from(bytes.slice(off, Math.min(off + 16, max)));
    const hex = row.map((b) => b.toString(16).padStart(2, '0')).join(' ');
    const ascii = row.map((b) => (b >= 0x20 && b < 0x7f ? String.fromCharCode(b) : '.')).join('');
    lines.push(`${off.toString(16).padStart(6, '0')}  ${hex.padEnd(47)}  |${ascii}|`);
  }
  if (bytes.length > max) lines.push(`… ${bytes.length - max} more bytes`);
  return lines.join('\n');
}

async function renderKey(view, key) {
  const title = lastName(key);
  const errors = errorSlot();
  const body = h('div', { 'aria-live': 'polite' }, h('p', { class: 'muted' }, 'Loading…'));
  view.setTitle(title);
  replace(view.el, breadcrumbs(key), view.heading(title), ownedNote(key), errors.el, body);

  let entry;
  let writable;
  try {
    entry = await api.kvGet(key);
    writable = await api.canWriteKV(key);
  } catch (err) {
    replace(body);
    errors.show(err);
    return;
  }
  if (entry === null) {
    replace(
      body,
      h(
        'p',
        { class: 'empty' },
        'This key does not exist (any more). ',
        h('a', { href: kvHref(parentOf(key)) }, 'Back to its folder'),
        '.',
      ),
    );
    return;
  }

  const { bytes, text } = decodeValue(entry.Value);
  const valueArea = h('section', { class: 'panel', 'aria-labelledby': 'value-h' });
  const actionErrors = errorSlot();

  const showValue = () => {
    const parts = [h('h2', { id: 'value-h' }, 'Value')];
    if (text === null) {
      parts.push(
        h(
          'p',
          { class: 'note', id: 'kv-binary-note' },
          `This value is not valid UTF-8 text (${bytes.length} bytes); it is shown as hexadecimal and cannot be edited here.`,
        ),
        h('pre', { class: 'value hex' }, hexDump(bytes)),
      );
    } else if (text === '') {
      parts.push(h('p', { class: 'muted', id: 'kv-value-empty' }, '(empty value)'));
    } else {
      const pretty = prettyJSON(text);
      if (pretty !== null) parts.push(h('p', { class: 'muted' }, 'JSON, formatted for reading.'));
      parts.push(h('pre', { class: 'value', id: 'kv-value' }, pretty ?? text));
    }
    const buttons = [];
    if (writable && text !== null) {
      buttons.push(h('button', { type: 'button', id: 'kv-edit', onclick: editOwned }, 'Edit'));
    }
    if (writable) {
      buttons.push(h('button', { type: 'button', id: 'kv-delete', class: 'danger', onclick: deleteKey }, 'Delete key'));
    } else {
      buttons.push(h('p', { class: 'muted read-only', id: 'kv-read-only' }, 'Read only: your token may not change this key.'));
    }
    parts.push(h('div', { class: 'actions' }, buttons), actionErrors.el);
    replace(valueArea, parts);
  };

  const editOwned = async () => {
    if (await confirmOwned(key, 'Edit it anyway?', 'Edit anyway')) showEditor();
  };

  const showEditor = () => {
    actionErrors.clear();
    const area = h('textarea', { id: 'kv-edit-value', rows: 12, spellcheck: 'false' });
    area.value = text;
    const form = h(
      'form',
      { id: 'kv-edit-form' },
      h('h2', { id: 'value-h' }, 'Edit value'),
      h('label', { for: 'kv-edit-value' }, `Value (flags: ${entry.FlagsText}, kept on save)`),
      area,
      actionErrors.el,
      h(
        'div',
        { class: 'actions' },
        h('button', { type: 'submit', id: 'kv-save', class: 'primary' }, 'Save'),
        h('button', { type: 'button', onclick: showValue }, 'Cancel'),
      ),
    );
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      actionErrors.clear();
      try {
        // cas: refuse to overwrite a change made by someone else since this page loaded.
        const saved = await api.kvPut(key, area.value, { flags: entry.FlagsText, cas: entry.ModifyIndex });
        if (!saved) {
          actionErrors.show('The key changed since this page loaded, so nothing was saved. Reload to see the new value.');
          return;
        }
      } catch (err) {
        actionErrors.show(err);
        return;
      }
      renderKey(view, key);
    });
    replace(valueArea, form);
    area.focus();
  };

  const deleteKey = async () => {
    const ok = ownedByMaster(key)
      ? await confirmOwned(key, 'Delete it anyway?', 'Delete anyway')
      : await confirmDialog(`Delete the key “${key}”?`, 'Delete key');
    if (!ok) return;
    try {
      await api.kvDelete(key);
    } catch (err) {
      actionErrors.show(err);
      return;
    }
    location.hash = kvHref(parentOf(key));
  };

  showValue();
  const meta = h(
    'section',
    { class: 'panel', 'aria-labelledby': 'meta-h' },
    h('h2', { id: 'meta-h' }, 'Details'),
    defList([
      ['Key', h('code', { id: 'kv-key' }, key)],
      ['Flags', h('span', { id: 'kv-flags' }, entry.FlagsText)],
      ['Size', `${bytes.length} bytes`],
      ['Create index', String(entry.CreateIndex)],
      ['Modify index', String(entry.ModifyIndex)],
      ['Lock index', String(entry.LockIndex)],
    ]),
  );
  const lock = entry.Session ? lockPanel(view, key, entry.Session, writable) : null;
  replace(body, lock, valueArea, meta);
}

function formatNs(ns) {
  if (!ns) return '0s';
  return `${ns / 1e9}s`;
}

function lockPanel(view, key, sessionId, writable) {
  const errors = errorSlot();
  const panel = h(
    'section',
    { class: 'panel lock', id: 'kv-lock', 'aria-labelledby': 'lock-h' },
    h('h2', { id: 'lock-h' }, 'Locked'),
    h('p', { class: 'muted' }, 'Loading the session that holds this key…'),
  );
  (async () => {
    let session;
    try {
      [session] = await api.getJSON(`/v1/session/info/${encodeURIComponent(sessionId)}`);
    } catch (err) {
      replace(panel, h('h2', { id: 'lock-h' }, 'Locked'), h('p', {}, `Held by session ${sessionId}.`), errors.el);
      errors.show(err);
      return;
    }
    const checks = [...(session?.NodeChecks ?? []), ...(session?.ServiceChecks ?? []).map((c) => c.ID), ...(session?.Checks ?? [])];
    const invalidate = async () => {
      const ok = await confirmDialog(
        `Invalidate session ${sessionId}? Every lock it holds is released or deleted (behavior “${session?.Behavior ?? 'release'}”).`,
        'Invalidate session',
      );
      if (!ok) return;
      try {
        await api.request('PUT', `/v1/session/destroy/${encodeURIComponent(sessionId)}`);
      } catch (err) {
        errors.show(err);
        return;
      }
      renderKey(view, key);
    };
    replace(
      panel,
      h('h2', { id: 'lock-h' }, 'Locked by a session'),
      session
        ? defList([
            ['Session', h('code', {}, session.ID)],
            ['Name', session.Name || '(no name)'],
            ['Node', h('a', { href: `#/nodes/${encodeURIComponent(session.Node)}` }, session.Node)],
            ['TTL', session.TTL || 'none'],
            ['Behavior', session.Behavior],
            ['Lock delay', formatNs(session.LockDelay)],
            ['Checks', checks.length ? checks.join(', ') : 'none'],
          ])
        : h('p', {}, `Session ${sessionId} no longer exists; the lock is about to be released.`),
      writable && session
        ? h(
            'div',
            { class: 'actions' },
            h('button', { type: 'button', id: 'kv-invalidate', class: 'danger', onclick: invalidate }, 'Invalidate session'),
          )
        : null,
      errors.el,
    );
  })();
  return panel;
}
