// The inspector: fallback-web (fallback-core compiled to WebAssembly) answers in the browser.
import init, { validate, match, diff } from '/ui/fallback_web.js';

const $ = (id) => document.getElementById(id);
let stored = null; // the stored config's text, or null when storage holds none

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  for (const c of children) node.append(c);
  return node;
}

function findings(list, className) {
  const ul = el('ul', { class: className });
  for (const p of list) ul.append(el('li', {}, el('code', {}, p.path), ' ', p.message));
  return ul;
}

function showValidation() {
  const out = $('validation');
  out.replaceChildren();
  const text = $('config-input').value;
  if (!text.trim()) { out.append(el('p', { class: 'muted' }, 'Paste or upload a config.')); return; }
  const v = JSON.parse(validate(text));
  if (v.valid) {
    out.append(el('p', { class: 'verdict ok', id: 'verdict' }, 'Valid: the filter would load this config.'));
  } else {
    const n = v.problems.length;
    out.append(el('p', { class: 'verdict bad', id: 'verdict' },
      `Invalid (${n} problem${n === 1 ? '' : 's'}): export would refuse it, and a filter keeps its last good config.`));
    out.append(findings(v.problems, 'problems'));
  }
  if (v.warnings.length) {
    out.append(el('p', { class: 'muted' }, 'Warnings:'));
    out.append(findings(v.warnings, 'warnings'));
  }
}

function showMatch(event) {
  event.preventDefault();
  const out = $('match-result');
  out.replaceChildren();
  const request = {
    method: $('match-method').value,
    url: $('match-url').value,
    headers: $('match-headers').value.split('\n'),
    client_ip: $('match-ip').value,
    ignore_plugins: $('match-ignore').value.split(',').map((s) => s.trim()).filter(Boolean),
    now_ms: Date.now(),
  };
  const r = JSON.parse(match($('config-input').value, JSON.stringify(request)));
  if (r.error) { out.append(el('pre', { class: 'bad', id: 'match-error' }, r.error)); return; }
  const a = r.answer;
  const dl = el('dl', { class: 'answer' });
  const item = (name, value, id) => { dl.append(el('dt', {}, name), el('dd', { id }, String(value))); };
  item('route', a.route ?? '(none)', 'match-route');
  if ('service' in a) item('service', a.service ?? '(none)', 'match-service');
  if ('upstream_url' in a) item('upstream', a.upstream_url, 'match-upstream');
  if ('upstream_host' in a) item('Host upstream', a.upstream_host, 'match-host');
  if (a.response) item('answered by a plugin', `${a.response.status} ${JSON.stringify(a.response.body)}`, 'match-response');
  if ('status' in a) item('status', a.status, 'match-status');
  if (a.location) item('location', a.location, 'match-location');
  if (a.message) item('message', a.message, 'match-message');
  if (a.upstream_headers) item('headers added upstream', JSON.stringify(a.upstream_headers), 'match-headers-added');
  out.append(dl, el('p', { class: 'muted' }, 'The JSON answer of fallback-companion match:'), el('pre', { id: 'match-json' }, JSON.stringify(a)));
  if (r.warnings.length) out.append(el('p', { class: 'muted' }, 'The filter skips:'), findings(r.warnings, 'warnings'));
}

function showDiff() {
  const out = $('diff-result');
  out.replaceChildren();
  if (stored === null) { out.append(el('p', { class: 'bad' }, 'Storage holds no config to compare with.')); return; }
  const d = JSON.parse(diff(stored, $('config-input').value));
  if (d.error) { out.append(el('pre', { class: 'bad', id: 'diff-error' }, d.error)); return; }
  if (d.empty) { out.append(el('p', { class: 'ok', id: 'diff-empty' }, 'No change: the same routes, services, plugins and consumers.')); return; }
  const table = el('table', { id: 'diff-table' });
  table.append(el('thead', {}, el('tr', {}, el('th', {}, 'kind'), el('th', {}, 'added'), el('th', {}, 'removed'), el('th', {}, 'changed'))));
  const body = el('tbody');
  for (const kind of ['services', 'routes', 'plugins', 'consumers']) {
    const k = d[kind];
    body.append(el('tr', {}, el('td', {}, kind), el('td', { class: 'ok' }, k.added.join(', ')),
      el('td', { class: 'bad' }, k.removed.join(', ')), el('td', {}, k.changed.join(', '))));
  }
  table.append(body);
  out.append(table);
}

async function loadStored() {
  const summary = $('stored-summary');
  try {
    const response = await fetch('/ui/config.json', { credentials: 'same-origin', cache: 'no-store' });
    if (response.status === 404) {
      stored = null;
      summary.textContent = 'Storage holds no config yet: paste or upload one.';
      return;
    }
    if (!response.ok) throw new Error(`${response.status} ${await response.text()}`);
    stored = await response.text();
    let pretty = stored;
    try { pretty = JSON.stringify(JSON.parse(stored), null, 2); } catch (_) { /* shown as stored */ }
    $('config-input').value = pretty;
    summary.textContent = `The stored config (${stored.length} bytes) is loaded below; edit it, paste another or upload a file.`;
    showValidation();
  } catch (e) {
    summary.textContent = `Cannot load the stored config: ${e.message}`;
    summary.className = 'bad';
  }
}

async function main() {
  try {
    await init({ module_or_path: '/ui/fallback_web_bg.wasm' });
  } catch (e) {
    $('engine').textContent = `The inspector's WebAssembly module did not load: ${e.message}`;
    $('engine').className = 'bad';
    return;
  }
  $('engine').textContent = 'Inspector ready (fallback-core in WebAssembly).';
  $('engine').id = 'engine-ready';
  $('validate-button').addEventListener('click', showValidation);
  $('match-form').addEventListener('submit', showMatch);
  $('diff-button').addEventListener('click', showDiff);
  $('reload-stored').addEventListener('click', loadStored);
  $('config-file').addEventListener('change', async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    $('config-input').value = await file.text();
    showValidation();
  });
  await loadStored();
  document.body.dataset.ready = 'true';
}

main();
