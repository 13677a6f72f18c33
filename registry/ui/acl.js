// acl.js: the ACL page: the token kept in session storage, and what the registry says about it.

import * as api from './api.js';
import { h, replace, errorSlot, defList } from './dom.js';

/**
 * What the registry says about the current token, from GET /v1/acl/token/self:
 * `{ kind: 'disabled' }` (401 ACL support disabled), `{ kind: 'absent' }` (no ACL endpoints),
 * `{ kind: 'token', token }`, or `{ kind: 'error', error }`.
 */
export async function tokenStatus() {
  try {
    return { kind: 'token', token: await api.getJSON('/v1/acl/token/self') };
  } catch (err) {
    if (err instanceof api.ApiError && err.status === 401 && /ACL support disabled/i.test(err.body)) {
      return { kind: 'disabled' };
    }
    if (err instanceof api.ApiError && (err.status === 404 || err.status === 405)) return { kind: 'absent' };
    return { kind: 'error', error: err };
  }
}

export async function renderACL(view, onTokenChange) {
  const title = 'ACL token';
  view.setTitle(title);
  const input = h('input', {
    type: 'password',
    id: 'acl-token',
    autocomplete: 'off',
    spellcheck: 'false',
    placeholder: 'secret ID, e.g. 6d0f…',
  });
  input.value = api.getToken();
  const status = h('section', { class: 'panel', id: 'acl-status', 'aria-live': 'polite' });
  const errors = errorSlot();

  const apply = (token) => {
    api.setToken(token);
    api.forgetPermissions();
    onTokenChange();
    showStatus();
  };
  const form = h(
    'form',
    { class: 'panel', id: 'acl-form' },
    h('label', { for: 'acl-token' }, 'Token'),
    input,
    h(
      'p',
      { class: 'muted' },
      'Kept only in this browser tab (session storage) and sent with every request as the X-Consul-Token header.',
    ),
    errors.el,
    h(
      'div',
      { class: 'actions' },
      h('button', { type: 'submit', class: 'primary', id: 'acl-save' }, 'Use token'),
      h(
        'button',
        {
          type: 'button',
          id: 'acl-clear',
          onclick: () => {
            input.value = '';
            apply('');
          },
        },
        'Forget token',
      ),
    ),
  );
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    errors.clear();
    const token = input.value.trim();
    // HTTP headers carry visible ASCII only; anything else cannot be a token.
    if (!/^[\x21-\x7e]*$/.test(token)) {
      errors.show('A token is made of visible ASCII characters (no spaces); check what was pasted.');
      input.focus();
      return;
    }
    apply(token);
  });

  const showStatus = async () => {
    replace(status, h('h2', {}, 'What the registry says'), h('p', { class: 'muted' }, 'Checking…'));
    const [st, writable] = await Promise.all([tokenStatus(), api.canWriteKV(api.folderProbeKey(''))]);
    const parts = [h('h2', {}, 'What the registry says')];
    if (st.kind === 'disabled') {
      parts.push(h('p', { id: 'acl-state' }, 'ACLs are disabled on this registry: no token is needed and every page is editable.'));
    } else if (st.kind === 'absent') {
      parts.push(h('p', { id: 'acl-state' }, 'This registry has no ACL endpoints; requests are not checked.'));
    } else if (st.kind === 'error') {
      const e = errorSlot();
      e.show(st.error);
      parts.push(h('p', { id: 'acl-state' }, 'The token could not be checked.'), e.el);
    } else {
      const t = st.token ?? {};
      parts.push(
        h('p', { id: 'acl-state' }, api.getToken() ? 'The registry knows this token.' : 'No token set: requests use the anonymous token.'),
        defList([
          ['Accessor ID', h('code', {}, t.AccessorID ?? '')],
          ['Description', t.Description || '(none)'],
          ['Policies', (t.Policies ?? []).map((p) => p.Name || p.ID).join(', ') || 'none'],
          ['Local', t.Local ? 'yes' : 'no'],
        ]),
      );
    }
    if (st.kind === 'disabled' || st.kind === 'absent') {
      replace(status, parts);
      return;
    }
    parts.push(
      h(
        'p',
        { id: 'acl-kv-write' },
        writable ? 'Key/Value: this token may write at the root, so edit controls are shown.' : 'Key/Value: read only; edit controls are hidden.',
      ),
    );
    replace(status, parts);
  };

  replace(view.el, view.heading(title), form, status);
  showStatus();
}
