// The flagd-rs dashboard: a framework-free ES module over the server's own JSON API
// (docs/API.md). The session cookie authenticates; every write sends the session's CSRF token
// (X-CSRF-Token) and the version it was based on (If-Match). Pages re-read what they show when
// the server's event stream (/ui/events) says an environment moved.

const main = document.getElementById('main');
const notice = document.getElementById('notice');
let session = null; // {actor, role, environments, csrfToken}
let events = null;
let refresh = null; // re-reads the current page's data (live updates)
let poll = null;
let pending = null; // a notice for the page being navigated to // the flag page's propagation poll (acknowledgements arrive without an event)

// ---- DOM helpers: text only, never HTML from data ----
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else if (name === 'value') { el.defaultValue = String(value); el.value = value; }
    else if (name === 'checked') el.checked = value;
    else el.setAttribute(name, value === true ? '' : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}
function show(...nodes) {
  if (poll) { clearInterval(poll); poll = null; }
  main.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));
}
function say(message, kind = 'error') { notice.className = kind; notice.textContent = message || ''; }
function ago(seconds) {
  if (seconds === null || seconds === undefined) return 'never';
  const s = Math.max(0, Math.round(Date.now() / 1000 - seconds));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}
function when(seconds) { return seconds ? new Date(seconds * 1000).toLocaleString() : '—'; }
const enc = encodeURIComponent;

// ---- API ----
class ApiError extends Error {
  constructor(status, body) {
    const error = (body && body.error) || {};
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.code = error.code;
    this.path = error.path;
    this.problems = error.problems || [];
  }
  describe() {
    // The problems, each with its JSON path, say it all when there are any.
    if (this.problems.length) {
      return this.problems.map((p) => `${p.severity || 'error'} at ${p.path || p.flag || '(document)'}: ${p.message || JSON.stringify(p)}`).join('\n');
    }
    return this.path ? `${this.message} (at ${this.path})` : this.message;
  }
}
let writing = 0; // writes in flight: their own live events are not someone else's change
async function api(method, path, body, { ifMatch } = {}) {
  if (method === 'GET') return request(method, path, body, { ifMatch });
  writing += 1;
  try { return await request(method, path, body, { ifMatch }); } finally { writing -= 1; }
}
async function request(method, path, body, { ifMatch } = {}) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') headers['X-CSRF-Token'] = session ? session.csrfToken : '';
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (ifMatch) headers['If-Match'] = ifMatch;
  const response = await fetch(path, {
    method, headers, credentials: 'same-origin',
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  if (response.status === 401 && !path.startsWith('/ui/session')) {
    signedOut('Your session ended (signed out or idle too long): sign in again.');
    throw new ApiError(401, json);
  }
  if (!response.ok) throw new ApiError(response.status, json);
  return { json, etag: response.headers.get('ETag') };
}

// ---- session ----
async function start() {
  document.getElementById('sign-out').addEventListener('click', signOut);
  window.addEventListener('hashchange', route);
  try {
    const { json } = await api('GET', '/ui/session');
    if (json) signedIn(json); else signInPage();
  } catch {
    signInPage();
  }
}
// Background requests (live updates, the propagation poll) keep the server's session alive, so
// the page itself ends a session nobody has touched for the idle time.
let lastActivity = Date.now();
for (const name of ['pointerdown', 'keydown', 'input']) {
  document.addEventListener(name, () => { lastActivity = Date.now(); }, { capture: true, passive: true });
}
setInterval(() => {
  if (session && session.idleTimeout && Date.now() - lastActivity > session.idleTimeout * 1000) {
    api('DELETE', '/ui/session').catch(() => {});
    signedOut(`Signed out after ${Math.round(session.idleTimeout / 60) || 1} min without activity.`);
  }
}, 5000);
function signedIn(info) {
  session = info;
  lastActivity = Date.now();
  document.getElementById('nav').hidden = false;
  const scope = info.environments ? `, ${info.environments.join(', ')} only` : '';
  document.getElementById('who').textContent = `${info.actor} (${info.role}${scope})`;
  connectEvents();
  route();
}
function signedOut(message) {
  session = null;
  if (events) { events.close(); events = null; }
  document.getElementById('nav').hidden = true;
  signInPage();
  if (message) say(message, 'info');
}
async function signOut() {
  try { await api('DELETE', '/ui/session'); } catch (e) { /* the cookie is gone either way */ }
  signedOut('Signed out.');
}
function signInPage() {
  refresh = null;
  const token = h('input', { id: 'token', type: 'password', autocomplete: 'off', required: true });
  const error = h('p', { class: 'error', id: 'sign-in-error', role: 'alert' });
  const form = h('form', { class: 'signin', onsubmit: async (event) => {
    event.preventDefault();
    error.textContent = '';
    try {
      const { json } = await api('POST', '/ui/session', { token: token.value });
      token.value = '';
      say('');
      signedIn(json);
    } catch (e) {
      error.textContent = e.describe ? e.describe() : String(e);
    }
  } },
  h('h1', {}, 'Sign in'),
  h('p', { class: 'muted' }, 'Paste an admin token (flagctl token create, or the one the server printed at first start). It is exchanged for a session cookie and not kept by the browser.'),
  h('div', { class: 'field' }, h('label', { for: 'token' }, 'Admin token'), token),
  h('p', {}, h('button', { class: 'primary', type: 'submit', id: 'sign-in' }, 'Sign in')),
  error);
  show(form);
  token.focus();
}

// ---- live updates ----
function connectEvents() {
  if (events) events.close();
  const live = document.getElementById('live');
  events = new EventSource('/ui/events');
  events.onopen = () => { live.textContent = 'live'; live.classList.add('on'); };
  events.onerror = async () => {
    live.textContent = 'reconnecting…';
    live.classList.remove('on');
    // The stream also ends when the session does: find out which.
    const response = await fetch('/ui/session', { credentials: 'same-origin' }).catch(() => null);
    if (response && response.status === 204 && session) {
      signedOut('Your session ended (signed out, idle too long, or its token was revoked): sign in again.');
    }
  };
  events.addEventListener('environment-deleted', (event) => {
    let data = {};
    try { data = JSON.parse(event.data); } catch { return; }
    if (currentEnvironment() === data.environment) {
      pending = `Environment ${data.environment} was deleted.`;
      location.hash = '#/';
    } else if (refresh) refresh({});
  });
  events.addEventListener('version', (event) => {
    let data = {};
    try { data = JSON.parse(event.data); } catch { return; }
    // A write of ours in flight re-renders its page when it completes.
    if (refresh && !writing) refresh(data);
  });
}

// ---- routing ----
function hashParts() {
  return location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
}
function currentEnvironment() {
  try {
    const parts = hashParts();
    return parts[0] === 'e' ? parts[1] : null;
  } catch { return null; }
}
function route() {
  if (!session) return;
  say(pending || '', 'info');
  pending = null;
  let parts;
  try {
    parts = hashParts();
  } catch {
    refresh = null;
    show(h('p', { class: 'error' }, 'This address is malformed.'), h('p', {}, h('a', { href: '#/' }, 'Environments')));
    return;
  }
  if (parts[0] === 'e' && parts[1] && parts[2] === 'f' && parts[3]) return flagPage(parts[1], parts[3]);
  if (parts[0] === 'e' && parts[1]) return flagsPage(parts[1]);
  if (parts[0] === 'audit') return auditPage();
  return environmentsPage();
}
function failed(e) { say(e.describe ? e.describe() : String(e)); }
// A page that could not load: its message instead of the previous page's content.
function pageFailed(e) {
  refresh = null;
  show(h('p', { class: 'error', role: 'alert' }, e.describe ? e.describe() : String(e)),
    h('p', {}, h('a', { href: '#/' }, 'Environments')));
}

// ---- environments ----
async function environmentsPage() {
  refresh = null;
  refresh = () => environmentsPage();
  try {
    const { json } = await api('GET', '/api/v1/environments');
    show(h('h1', {}, 'Environments'),
      h('table', {}, h('thead', {}, h('tr', {}, h('th', {}, 'Environment'), h('th', {}, 'Version'))),
        h('tbody', {}, json.environments.map((e) => h('tr', {},
          h('td', {}, h('a', { href: `#/e/${enc(e.name)}` }, e.name)),
          h('td', {}, e.version))))));
  } catch (e) { failed(e); }
}

// ---- flags of an environment ----
const filters = { environment: null, search: '', state: 'all', stale: false, rollout: false };
function isStale(flag) {
  const month = Date.now() / 1000 - 30 * 86400;
  return flag.lastEvaluated === null ? flag.createdAt < month : flag.lastEvaluated < month;
}
async function flagsPage(env) {
  refresh = null;
  let listing;
  try { ({ json: listing } = await api('GET', `/api/v1/environments/${enc(env)}/flags`)); } catch (e) { return pageFailed(e); }
  if (filters.environment !== env) Object.assign(filters, { environment: env, search: '', state: 'all', stale: false, rollout: false });
  const body = h('tbody', { id: 'flag-rows' });
  const fill = () => {
    const term = filters.search.toLowerCase();
    const rows = listing.flags.filter((f) =>
      (!term || f.key.toLowerCase().includes(term) || (f.description || '').toLowerCase().includes(term))
      && (filters.state === 'all' || (filters.state === 'enabled') === f.enabled)
      && (!filters.stale || isStale(f))
      && (!filters.rollout || (f.rolloutPercentage !== null && f.rolloutPercentage > 0 && f.rolloutPercentage < 100)));
    body.replaceChildren(...rows.map((f) => h('tr', { 'data-key': f.key },
      h('td', {}, h('a', { href: `#/e/${enc(env)}/f/${enc(f.key)}` }, f.key)),
      h('td', {}, h('span', { class: `badge ${f.enabled ? 'on' : 'off'}`, 'data-state': f.state }, f.enabled ? 'on' : 'off')),
      h('td', {}, f.defaultVariant ?? '—'),
      h('td', { 'data-rollout': f.rolloutPercentage ?? '' }, f.rolloutPercentage === null ? '—' : `${f.rolloutPercentage}%`),
      h('td', {}, f.version),
      h('td', {}, `${ago(f.updatedAt)} by ${f.updatedBy || '?'}`),
      h('td', {}, ago(f.lastEvaluated)))));
    count.textContent = `${rows.length} of ${listing.flags.length} flags`;
  };
  const count = h('span', { class: 'muted', role: 'status' });
  const search = h('input', { id: 'search', type: 'search', value: filters.search,
    oninput: (e) => { filters.search = e.target.value; fill(); } });
  const state = h('select', { id: 'state-filter', onchange: (e) => { filters.state = e.target.value; fill(); } },
    ['all', 'enabled', 'disabled'].map((s) => h('option', { value: s, selected: filters.state === s }, s)));
  const stale = h('input', { id: 'stale-filter', type: 'checkbox', checked: filters.stale,
    onchange: (e) => { filters.stale = e.target.checked; fill(); } });
  const rollout = h('input', { id: 'rollout-filter', type: 'checkbox', checked: filters.rollout,
    onchange: (e) => { filters.rollout = e.target.checked; fill(); } });
  const newKey = h('input', { id: 'new-key', required: true, pattern: '[A-Za-z0-9_.\\-]+' });
  const create = h('form', { class: 'row', onsubmit: async (event) => {
    event.preventDefault();
    const key = newKey.value.trim();
    if (key === '.' || key === '..') return say(`${key} cannot be a flag key.`);
    try {
      await api('PUT', `/api/v1/environments/${enc(env)}/flags/${enc(key)}`,
        { state: 'DISABLED', variants: { on: true, off: false }, defaultVariant: 'off' }, { ifMatch: '"0"' });
      location.hash = `#/e/${enc(env)}/f/${enc(key)}`;
    } catch (e) {
      if (e.status === 412) say(`Flag ${key} already exists in ${env}.`);
      else failed(e);
    }
  } }, h('label', { for: 'new-key' }, 'New boolean flag'), newKey, h('button', { type: 'submit', id: 'create' }, 'Create'));
  show(h('h1', {}, `Flags in ${env}`, ' ', h('span', { class: 'muted' }, `version ${listing.version}`)),
    h('div', { class: 'filters' },
      h('label', {}, 'Search', search),
      h('label', {}, 'State', state),
      h('label', { class: 'row' }, stale, 'Stale (30 days)'),
      h('label', { class: 'row' }, rollout, 'In a partial rollout'),
      count),
    h('table', { class: 'flags' }, h('thead', {}, h('tr', {}, ['Flag', 'State', 'Default', 'Rollout', 'Version', 'Last change', 'Last evaluated'].map((t) => h('th', {}, t)))), body),
    h('section', {}, create));
  fill();
  refresh = async (event) => {
    if (event && event.environment && event.environment !== env) return;
    try {
      ({ json: listing } = await api('GET', `/api/v1/environments/${enc(env)}/flags`));
      main.querySelector('h1 .muted').textContent = `version ${listing.version}`;
      fill();
    } catch (e) { failed(e); }
  };
}

// ---- one flag ----
// Whether the page holds input the user has not saved (a live update must not wipe it): a
// field being typed in, or one whose value differs from what the page rendered.
function unsaved() {
  const active = document.activeElement;
  if (active && main.contains(active) && ['INPUT', 'TEXTAREA'].includes(active.tagName) && active.type !== 'checkbox') return true;
  return [...main.querySelectorAll('input, textarea')].some((el) =>
    el.type !== 'checkbox' && el.value !== el.defaultValue);
}
const ROLLOUT_CONFIRM_ABOVE = 50; // percentage points of change that ask for confirmation
// JSON with object keys sorted, as flagctl prints values (serde_json's maps are sorted).
function canonical(value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`;
  }
  return JSON.stringify(value ?? null);
}
function leaves(value, prefix, out) {
  if (value && typeof value === 'object' && !Array.isArray(value) && Object.keys(value).length) {
    for (const key of Object.keys(value)) leaves(value[key], prefix ? `${prefix}.${key}` : key, out);
  } else {
    out.set(prefix, value ?? null);
  }
  return out;
}
// The readable per-leaf diff `flagctl flag history` prints (flag-cli/src/output.rs `diff`):
// `~ path: before → after`, `+ path: value`, `- path: value`.
function leafDiff(before, after) {
  const old = leaves(before, '', new Map());
  const now = leaves(after, '', new Map());
  const keys = [...new Set([...old.keys(), ...now.keys()])].sort();
  const lines = [];
  for (const key of keys) {
    const label = key || '(value)';
    const a = old.has(key) ? canonical(old.get(key)) : undefined;
    const b = now.has(key) ? canonical(now.get(key)) : undefined;
    if (a !== undefined && b !== undefined && a !== b) lines.push(h('span', { class: 'change' }, `~ ${label}: ${a} → ${b}\n`));
    else if (a !== undefined && b === undefined && a !== 'null') lines.push(h('span', { class: 'del' }, `- ${label}: ${a}\n`));
    else if (a === undefined && b !== undefined && b !== 'null') lines.push(h('span', { class: 'add' }, `+ ${label}: ${b}\n`));
  }
  return h('pre', { class: 'diff' }, lines.length ? lines : 'no change');
}
const pretty = (value) => JSON.stringify(value ?? null, null, 2);

async function flagPage(env, key) {
  refresh = null;
  const path = `/api/v1/environments/${enc(env)}/flags/${enc(key)}`;
  let view; let etag;
  try { ({ json: view, etag } = await api('GET', path)); } catch (e) { return pageFailed(e); }
  let opened = view; // what the user is editing against (updated by our own saves)
  const conflict = h('div', { id: 'conflict', role: 'alert' });
  // A write based on `etag`; a 412 shows who changed the flag since and how.
  async function write(method, url, body, { quiet = false } = {}) {
    try {
      const result = await api(method, url, body, { ifMatch: etag });
      say('');
      conflict.replaceChildren();
      return result;
    } catch (e) {
      if (e.status === 412) {
        const { json: now } = await api('GET', path);
        conflict.replaceChildren(h('p', { class: 'error' },
          `This flag was changed by ${now.updatedBy || 'someone'} since you opened it (version ${view.version} → ${now.version}). Your change was not saved. Reload to edit the current version.`),
        leafDiff(opened.flag, now.flag),
        h('button', { type: 'button', onclick: () => flagPage(env, key) }, 'Reload'));
      } else if (!quiet) {
        failed(e);
      }
      throw e;
    }
  }
  const flag = view.flag;
  const enabled = flag.state === 'ENABLED';
  const toggle = h('button', { id: 'toggle', type: 'button', 'aria-pressed': enabled ? 'true' : 'false', class: enabled ? 'primary' : '',
    onclick: async () => {
      try { await write('PATCH', path, { state: enabled ? 'DISABLED' : 'ENABLED' }); flagPage(env, key); } catch { /* shown */ }
    } }, enabled ? 'Enabled — click to disable' : 'Disabled — click to enable');
  const variants = Object.keys(flag.variants || {});
  const defaultSelect = h('select', { id: 'default-variant', onchange: async (e) => {
    try { await write('PATCH', path, { defaultVariant: e.target.value }); flagPage(env, key); } catch { /* shown */ }
  } }, variants.map((v) => h('option', { value: v, selected: v === flag.defaultVariant }, v)));

  // Rollout (boolean flags): slider and number in 0.01 % steps.
  let rolloutSection = null;
  if (view.type === 'boolean') {
    let current = 0;
    try {
      const { json } = await api('GET', `/api/v1/environments/${enc(env)}/flags`);
      const row = json.flags.find((f) => f.key === key);
      current = row && row.rolloutPercentage !== null ? row.rolloutPercentage : 0;
    } catch { /* shown as 0 */ }
    const number = h('input', { id: 'rollout-value', type: 'number', min: 0, max: 100, step: 0.01, value: current });
    const slider = h('input', { id: 'rollout', type: 'range', min: 0, max: 100, step: 0.01, value: current,
      'aria-label': 'Rollout percentage', oninput: (e) => { number.value = e.target.value; } });
    number.addEventListener('input', () => { slider.value = number.value; });
    const apply = h('button', { id: 'apply-rollout', type: 'button', onclick: async () => {
      const percentage = Math.round(Number(number.value) * 100) / 100;
      if (number.value.trim() === '' || !(percentage >= 0 && percentage <= 100)) {
        return say('The rollout is a percentage from 0 to 100 (in steps of 0.01).');
      }
      if (Math.abs(percentage - current) > ROLLOUT_CONFIRM_ABOVE
        && !window.confirm(`Change the rollout of ${key} from ${current}% to ${percentage}%?`)) return;
      try { await write('POST', `${path}/rollout`, { percentage }); flagPage(env, key); } catch { /* shown */ }
    } }, 'Apply rollout');
    rolloutSection = h('section', {}, h('h2', {}, 'Rollout'),
      h('div', { class: 'row' }, h('label', { for: 'rollout-value' }, 'Share served the true variant (%)'), slider, number, apply),
      h('p', { class: 'muted', id: 'rollout-note' }, `Now ${current}%. Changes of more than ${ROLLOUT_CONFIRM_ABOVE} points ask for confirmation. Sticky per targeting key.`));
  }

  // Targeting: validated by the server on save; errors and warnings by JSON path.
  const targeting = h('textarea', { id: 'targeting', 'aria-describedby': 'targeting-result', spellcheck: 'false' });
  targeting.value = flag.targeting ? pretty(flag.targeting) : '{}';
  targeting.defaultValue = targeting.value; // as last saved or loaded: see `unsaved`
  const targetingResult = h('div', { id: 'targeting-result', role: 'status' });
  const saveTargeting = h('button', { id: 'save-targeting', type: 'button', onclick: async () => {
    targetingResult.replaceChildren();
    let parsed;
    try { parsed = JSON.parse(targeting.value || '{}'); } catch (e) {
      targetingResult.replaceChildren(h('p', { class: 'error' }, `Not JSON: ${e.message}`));
      return;
    }
    try {
      // Strict unless the user accepts warnings: a rule flagd would only warn about (a branch
      // that is not a variant, an unknown operator) is almost always a mistake.
      // The whole flag with the new rule (a merge patch would merge the two rules' objects).
      const body = { ...view.flag, targeting: parsed };
      if (view.description && body.description === undefined) body.description = view.description;
      const { json, etag: tag } = await write('PUT', allowWarnings.checked ? path : `${path}?strict=true`, body, { quiet: true });
      // Our own write: the page is at its version now (the live update must not call it a
      // concurrent change).
      targeting.defaultValue = targeting.value;
      view = { ...view, version: json.version, flag: body };
      opened = view;
      const header = document.getElementById('flag-version');
      if (header) header.textContent = `version ${json.version}, ${view.type || 'mixed'}`;
      etag = tag || `"${json.version}"`;
      const warnings = json.warnings || [];
      targetingResult.replaceChildren(h('p', {}, 'Saved.'),
        ...warnings.map((w) => h('p', { class: 'warning' }, `warning at ${w.path || ''}: ${w.message || JSON.stringify(w)}`)));
    } catch (e) {
      if (e.status !== 412) {
        const onlyWarnings = e.problems && e.problems.length && e.problems.every((p) => p.severity === 'warning');
        targetingResult.replaceChildren(h('p', { class: 'error', id: 'targeting-error' }, `Not saved.\n${e.describe ? e.describe() : String(e)}`),
          onlyWarnings ? h('p', { class: 'muted' }, 'flagd accepts rules with warnings; tick "Save even with warnings" to save it anyway.') : null);
      }
    }
  } }, 'Validate and save targeting');
  const allowWarnings = h('input', { id: 'allow-warnings', type: 'checkbox' });

  const ramp = h('section', { id: 'ramp' });
  const clients = h('section', { id: 'propagation' });
  const history = h('section', { id: 'history' });
  show(h('p', {}, h('a', { href: `#/e/${enc(env)}` }, `← flags in ${env}`)),
    h('h1', {}, key, ' ', h('span', { class: 'muted', id: 'flag-version' }, `version ${view.version}, ${view.type || 'mixed'}`)),
    conflict,
    h('section', {}, h('div', { class: 'row' }, toggle,
      h('label', { for: 'default-variant' }, 'Default variant'), defaultSelect),
    h('p', { class: 'muted' }, `Last change ${ago(view.updatedAt)} by ${view.updatedBy || '?'}`)),
    rolloutSection,
    h('section', {}, h('h2', {}, h('label', { for: 'targeting' }, 'Targeting (JsonLogic)')), targeting,
      h('p', { class: 'row' }, saveTargeting, h('label', { class: 'row' }, allowWarnings, 'Save even with warnings (flagd accepts them)')),
      targetingResult),
    ramp, clients, history);

  async function loadSide() {
    await Promise.all([rampPanel(env, view, ramp, () => flagPage(env, key)), clientsPanel(env, view, clients), historyPanel(env, key, history)]);
  }
  loadSide();
  // SDKs acknowledge a version after the event that announced it: re-read the panel meanwhile.
  poll = setInterval(() => { if (session) clientsPanel(env, view, clients); }, 5000);
  refresh = async (event) => {
    if (event && event.environment && event.environment !== env) return;
    try {
      const { json: now } = await api('GET', path);
      if (now.version !== view.version) {
        if (unsaved()) {
          say(`${key} was changed by ${now.updatedBy || 'someone'} (version ${now.version}); saving will show the conflict.`, 'info');
        } else {
          return flagPage(env, key);
        }
      }
      loadSide();
    } catch (e) { failed(e); }
  };
}

async function rampPanel(env, view, into, reload) {
  const key = view.key;
  // A start form being filled in is left alone by live updates.
  if (into.contains(document.activeElement) || [...into.querySelectorAll('input')].some((el) => el.value !== el.defaultValue)) return;
  const base = `/api/v1/environments/${enc(env)}/flags/${enc(key)}/ramp`;
  let ramp = null;
  try {
    // The environment's ramps, newest first: the flag's latest (a flag never ramped has none).
    const { json } = await api('GET', `/api/v1/environments/${enc(env)}/ramps`);
    ramp = json.ramps.find((r) => r.flag === key) || null;
  } catch (e) { return failed(e); }
  const act = (what) => async () => {
    try { await api('POST', `${base}/${what}`, {}); say(''); reload(); } catch (e) { failed(e); }
  };
  const steps = h('input', { id: 'ramp-steps', value: '1,5,25,50,100' });
  const interval = h('input', { id: 'ramp-interval', value: '30m', size: 6 });
  // A boolean flag ramps its true variant; other flags name the variant.
  const variant = view.type === 'boolean' ? null
    : h('select', { id: 'ramp-variant' }, Object.keys(view.flag.variants || {}).map((v, i, all) =>
      h('option', { value: v, selected: v === (all.find((n) => n !== view.flag.defaultVariant) ?? v) }, v)));
  const startForm = h('form', { class: 'row', onsubmit: async (event) => {
    event.preventDefault();
    const list = steps.value.split(',').map((s) => s.trim()).filter((s) => s !== '').map(Number);
    if (!list.length || list.some((n) => !Number.isFinite(n))) {
      return say('Steps are percentages separated by commas, for example 1,5,25,50,100.');
    }
    const body = { steps: list, interval: interval.value.trim() };
    if (variant) body.variant = variant.value;
    try { await api('POST', base, body); say(''); reload(); } catch (e) { failed(e); }
  } }, h('label', { for: 'ramp-steps' }, 'Steps (%)'), steps, h('label', { for: 'ramp-interval' }, 'every'), interval,
  variant ? [h('label', { for: 'ramp-variant' }, 'variant'), variant] : null,
  h('button', { type: 'submit', id: 'ramp-start' }, 'Start ramp'));
  const open = ramp && (ramp.state === 'active' || ramp.state === 'paused');
  const parts = [h('h2', {}, 'Ramp')];
  if (ramp) {
    parts.push(h('p', {}, h('span', { id: 'ramp-state', class: 'badge' }, ramp.state), ' ',
      `step ${ramp.currentStep + 1} of ${ramp.steps.length}: ${ramp.currentPercentage ?? '—'}%`,
      ramp.nextPercentage !== null && ramp.nextPercentage !== undefined && ramp.state === 'active' ? `, next ${ramp.nextPercentage}% at ${when(ramp.nextAt)}` : ''),
    h('progress', { max: 100, value: ramp.currentPercentage ?? 0, 'aria-label': 'Ramp progress' }));
    if (ramp.abortReason) parts.push(h('p', { class: 'error' }, ramp.abortReason));
    for (const evidence of (ramp.analysis && ramp.analysis.measurements) || []) {
      parts.push(h('p', { class: 'muted' }, `step ${evidence.step + 1}: ${JSON.stringify(evidence.measurement)}`));
    }
  }
  if (open) {
    parts.push(h('div', { class: 'row' },
      ramp.state === 'active' ? h('button', { id: 'ramp-pause', type: 'button', onclick: act('pause') }, 'Pause')
        : h('button', { id: 'ramp-resume', type: 'button', onclick: act('resume') }, 'Resume'),
      h('button', { id: 'ramp-abort', type: 'button', class: 'danger', onclick: async () => {
        if (window.confirm(`Abort the ramp of ${key} and restore the rollout from before it?`)) await act('abort')();
      } }, 'Abort')));
  } else {
    parts.push(startForm);
  }
  into.replaceChildren(...parts);
}

async function clientsPanel(env, view, into) {
  try {
    const { json } = await api('GET', `/api/v1/environments/${enc(env)}/clients`);
    const caught = json.clients.filter((c) => c.ackedVersion !== null && c.ackedVersion >= view.version).length;
    into.replaceChildren(h('h2', {}, 'Propagation'),
      h('p', { id: 'propagation-summary' }, `${caught} of ${json.clients.length} connected SDKs have acknowledged version ${view.version} or later (environment at ${json.version}).`),
      json.clients.length ? h('table', {}, h('thead', {}, h('tr', {}, ['Client', 'SDK', 'Acked version', 'Lag'].map((t) => h('th', {}, t)))),
        h('tbody', {}, json.clients.map((c) => h('tr', {}, h('td', {}, c.clientId || c.tokenName || c.session),
          h('td', {}, `${c.sdk || '?'} ${c.sdkVersion || ''}`), h('td', {}, c.ackedVersion ?? '—'), h('td', {}, c.lag ?? '—'))))) : '');
  } catch (e) { failed(e); }
}

async function historyPanel(env, key, into) {
  try {
    const { json } = await api('GET', `/api/v1/audit?environment=${enc(env)}&flag=${enc(key)}&limit=20`);
    // Each diff is computed when its entry is opened (flags can be large).
    into.replaceChildren(h('h2', {}, 'History'), ...json.changes.map((c) => {
      const entry = h('details', {}, h('summary', {}, `v${c.version} ${c.operation} by ${c.actor} ${ago(c.at)}${c.message ? ` — ${c.message}` : ''}`));
      entry.addEventListener('toggle', () => {
        if (entry.open && entry.childElementCount === 1) entry.append(leafDiff(c.before, c.after));
      });
      return entry;
    }));
  } catch (e) { failed(e); }
}

// ---- audit ----
async function auditPage() {
  refresh = null;
  const env = h('input', { id: 'audit-environment' });
  const flag = h('input', { id: 'audit-flag' });
  const rows = h('tbody');
  const load = async () => {
    const query = new URLSearchParams({ limit: '100' });
    if (env.value.trim()) query.set('environment', env.value.trim());
    if (flag.value.trim()) query.set('flag', flag.value.trim());
    try {
      const { json } = await api('GET', `/api/v1/audit?${query}`);
      rows.replaceChildren(...json.changes.map((c) => h('tr', {}, h('td', {}, when(c.at)), h('td', {}, c.environment),
        h('td', {}, c.flag ?? '—'), h('td', {}, c.operation), h('td', {}, c.actor), h('td', {}, c.message ?? ''))));
    } catch (e) { failed(e); }
  };
  show(h('h1', {}, 'Audit log'),
    h('form', { class: 'filters', onsubmit: (e) => { e.preventDefault(); load(); } },
      h('label', {}, 'Environment', env), h('label', {}, 'Flag', flag), h('button', { type: 'submit' }, 'Filter')),
    h('table', {}, h('thead', {}, h('tr', {}, ['When', 'Environment', 'Flag', 'Operation', 'Actor', 'Message'].map((t) => h('th', {}, t)))), rows));
  refresh = () => load();
  load();
}

start();
