// The flagd-rs dashboard: a framework-free ES module over the server's own JSON API
// (docs/API.md). The session cookie authenticates; every write sends the session's CSRF token
// (X-CSRF-Token) and the version it was based on (If-Match). Pages re-read what they show when
// the server's event stream (/ui/events) says an environment moved.

const main = document.getElementById('main');
const notice = document.getElementById('notice');
let session = null; // {actor, role, environments, csrfToken}
let events = null;
let refresh = null; // re-reads the current page's data (live updates)
let poll = null; // the flag page's propagation poll (acknowledgements arrive without an event)

// ---- DOM helpers: text only, never HTML from data ----
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else if (name === 'value') el.value = value;
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
    const lines = [this.path ? `${this.message} (at ${this.path})` : this.message];
    for (const p of this.problems) lines.push(`${p.path || p.flag || ''}: ${p.message || JSON.stringify(p)}`);
    return lines.join('\n');
  }
}
async function api(method, path, body, { ifMatch } = {}) {
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
    signedIn(json);
  } catch {
    signInPage();
  }
}
function signedIn(info) {
  session = info;
  document.getElementById('nav').hidden = false;
  document.getElementById('who').textContent = `${info.actor} (${info.role})`;
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
  events.onerror = () => { live.textContent = 'reconnecting…'; live.classList.remove('on'); };
  events.addEventListener('version', (event) => {
    let data = {};
    try { data = JSON.parse(event.data); } catch { return; }
    if (refresh) refresh(data);
  });
}

// ---- routing ----
function route() {
  if (!session) return;
  say('');
  const parts = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  if (parts[0] === 'e' && parts[1] && parts[2] === 'f' && parts[3]) return flagPage(parts[1], parts[3]);
  if (parts[0] === 'e' && parts[1]) return flagsPage(parts[1]);
  if (parts[0] === 'audit') return auditPage();
  return environmentsPage();
}
function failed(e) { say(e.describe ? e.describe() : String(e)); }

// ---- environments ----
async function environmentsPage() {
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
const filters = { search: '', state: 'all', stale: false, rollout: false };
function isStale(flag) {
  const month = Date.now() / 1000 - 30 * 86400;
  return flag.lastEvaluated === null ? flag.createdAt < month : flag.lastEvaluated < month;
}
async function flagsPage(env) {
  let listing;
  try { ({ json: listing } = await api('GET', `/api/v1/environments/${enc(env)}/flags`)); } catch (e) { return failed(e); }
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
    try {
      await api('PUT', `/api/v1/environments/${enc(env)}/flags/${enc(key)}`,
        { state: 'DISABLED', variants: { on: true, off: false }, defaultVariant: 'off' }, { ifMatch: '"0"' });
      location.hash = `#/e/${enc(env)}/f/${enc(key)}`;
    } catch (e) { failed(e); }
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
  const path = `/api/v1/environments/${enc(env)}/flags/${enc(key)}`;
  let view; let etag;
  try { ({ json: view, etag } = await api('GET', path)); } catch (e) { return failed(e); }
  const opened = view; // what the user is editing against
  const conflict = h('div', { id: 'conflict', role: 'alert' });
  // A write based on `etag`; a 412 shows who changed the flag since and how.
  async function write(method, url, body) {
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
      } else {
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
      if (!(percentage >= 0 && percentage <= 100)) return say('The rollout is a percentage from 0 to 100.');
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
  let baseline = targeting.value; // the targeting as last saved or loaded
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
      const { json, etag: tag } = await write('PUT', allowWarnings.checked ? path : `${path}?strict=true`, body);
      // Our own write: the page is at its version now (the live update must not call it a
      // concurrent change).
      baseline = targeting.value;
      view = { ...view, version: json.version, flag: body };
      etag = tag || `"${json.version}"`;
      const warnings = json.warnings || [];
      targetingResult.replaceChildren(h('p', {}, 'Saved.'),
        ...warnings.map((w) => h('p', { class: 'warning' }, `warning at ${w.path || ''}: ${w.message || JSON.stringify(w)}`)));
    } catch (e) {
      if (e.status !== 412) targetingResult.replaceChildren(h('p', { class: 'error', id: 'targeting-error' }, e.describe ? e.describe() : String(e)));
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
    await Promise.all([rampPanel(env, key, ramp, () => flagPage(env, key)), clientsPanel(env, view, clients), historyPanel(env, key, history)]);
  }
  loadSide();
  // SDKs acknowledge a version after the event that announced it: re-read the panel meanwhile.
  poll = setInterval(() => { if (session) clientsPanel(env, view, clients); }, 5000);
  refresh = async (event) => {
    if (event && event.environment && event.environment !== env) return;
    try {
      const { json: now } = await api('GET', path);
      if (now.version !== view.version) {
        const editing = document.activeElement === targeting || targeting.value !== baseline;
        if (editing) {
          say(`${key} was changed by ${now.updatedBy || 'someone'} (version ${now.version}); saving will show the conflict.`, 'info');
        } else {
          return flagPage(env, key);
        }
      }
      loadSide();
    } catch (e) { failed(e); }
  };
}

async function rampPanel(env, key, into, reload) {
  const base = `/api/v1/environments/${enc(env)}/flags/${enc(key)}/ramp`;
  let ramp = null;
  try { ({ json: ramp } = await api('GET', base)); } catch (e) { if (e.status !== 404) return failed(e); }
  const act = (what) => async () => {
    try { await api('POST', `${base}/${what}`, {}); reload(); } catch (e) { failed(e); }
  };
  const steps = h('input', { id: 'ramp-steps', value: '1,5,25,50,100' });
  const interval = h('input', { id: 'ramp-interval', value: '30m', size: 6 });
  const startForm = h('form', { class: 'row', onsubmit: async (event) => {
    event.preventDefault();
    const list = steps.value.split(',').map((s) => Number(s.trim()));
    try { await api('POST', base, { steps: list, interval: interval.value.trim() }); reload(); } catch (e) { failed(e); }
  } }, h('label', { for: 'ramp-steps' }, 'Steps (%)'), steps, h('label', { for: 'ramp-interval' }, 'every'), interval,
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
    into.replaceChildren(h('h2', {}, 'History'), ...json.changes.map((c) => h('details', {},
      h('summary', {}, `v${c.version} ${c.operation} by ${c.actor} ${ago(c.at)}${c.message ? ` — ${c.message}` : ''}`),
      leafDiff(c.before, c.after))));
  } catch (e) { failed(e); }
}

// ---- audit ----
async function auditPage() {
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
