// The dashboard's Packages and plans section (docs/pricing.md § Packages and plans): what is on
// sale and what was, each item's versions, and forms to create one, change one (a new version)
// and retire one; every change asks why (kept in the audit). Joined into dashboard-page.ts's one
// <style>/<script> (its CSP nonce); the script uses the page's helpers ($, get, send, esc,
// credits, money, fmtInt) and sends an Idempotency-Key with each create or change.

export const catalogStyle = `
.catalog-form{display:flex;flex-wrap:wrap;gap:.4rem;align-items:end;margin:.6rem 0}
.catalog-form label{display:flex;flex-direction:column;font-size:.8rem;color:#556}.catalog-form input,.catalog-form select{width:7.5rem}
#catalog td{overflow-wrap:anywhere}.retired{color:#778}`;

const field = (label: string, name: string, extra = '') => `<label>${label}<input name="${name}"${extra}></label>`;

export const catalogSections = `
  <section class="wide"><h2>Packages and plans</h2><div id="catalog" data-testid="catalog"></div>
    <form id="catalog-form" class="catalog-form">
      <label>what<select name="kind"><option value="packages">package</option><option value="plans">plan</option></select></label>
      <label>action<select name="action"><option value="create">create</option><option value="change">new version</option></select></label>
      ${field('id', 'id', ' required')}${field('name', 'name')}${
  field('price (cents)', 'price_cents', ' inputmode="numeric"')
}
      ${field('currency', 'currency', ' placeholder="usd"')}${field('credits', 'credits')}${
  field('bonus (package)', 'bonus_credits')
}
      <label>interval (plan)<select name="interval"><option value="">–</option><option>month</option><option>year</option></select></label>
      <label>rollover (plan)<select name="rollover"><option value="">–</option><option>none</option><option>up_to_credits</option><option>up_to_share</option></select></label>
      ${field('rollover limit', 'rollover_limit')}${
  field('why', 'reason', ' required')
}<button id="catalog-save">Save</button>
    </form></section>`;

export const catalogScript = `
function versionRows(item, kind) {
  return item.versions.map((v) => '<tr' + (v.version === item.version ? '' : ' class="retired"') + '><td>v' + v.version + '</td><td class="nowrap">' +
    money(v.price_cents, v.currency) + (v.interval ? ' a ' + esc(v.interval) : '') + '</td><td>' + credits(v.credits) +
    (Number(v.bonus_credits) > 0 ? ' + ' + credits(v.bonus_credits) + ' bonus' : '') +
    (v.rollover && v.rollover !== 'none' ? '<br><span class="muted">rollover ' + esc(v.rollover.replaceAll('_', ' ')) + ' ' + esc(v.rollover_limit) + '</span>' : '') +
    '</td><td class="muted">' + (kind === 'package' ? fmtInt.format(v.purchases) + ' sold' : fmtInt.format(v.live_subscriptions) + ' live') +
    '</td></tr>').join('');
}
function catalogItems(items, kind) {
  if (items.length === 0) return '<p class="muted">None.</p>';
  return '<div class="cards"><table><tr><th>' + kind + '</th><th>version</th><th>price</th><th>credits</th><th></th></tr>' +
    items.map((i) => '<tr data-' + kind + '="' + esc(i.id) + '" data-version="' + i.version + '" data-active="' + i.active + '"><td rowspan="' +
      (i.versions.length + 1) + '">' + esc(i.id) + '<br><span class="muted">' + esc(i.name) + (i.active ? '' : ', retired') + '</span>' +
      (i.active ? '<br><button data-retire="' + kind + 's" data-id="' + esc(i.id) + '">Retire</button>' : '') + '</td></tr>' +
      versionRows(i, kind)).join('') + '</table></div>';
}
async function loadCatalog() {
  const c = (await get('./catalog')).data;
  $('catalog').innerHTML = '<h2>Packages</h2>' + catalogItems(c.packages, 'package') + '<h2>Plans</h2>' + catalogItems(c.plans, 'plan') +
    '<h2>Changes</h2><div class="cards"><table>' + c.changes.slice(0, 10).map((x) => '<tr><td class="nowrap">' +
      esc(x.at.slice(0, 16).replace('T', ' ')) + '</td><td>' + esc(x.action) + '</td><td>' + esc(x.item + ' ' + x.item_id + ' v' + x.version) +
      '</td><td>' + esc(x.reason) + '</td></tr>').join('') + '</table></div>';
}
const showError = (err) => { $('error').textContent = String(err.message || err); $('error').hidden = false; };
async function sendKeyed(path, body) {
  const res = await fetch(path, { method: 'POST', headers: { 'content-type': 'application/json', 'idempotency-key': crypto.randomUUID() },
    body: JSON.stringify(body) });
  if (res.status === 401) { location.assign('./dashboard'); throw new Error('Signed out'); }
  const json = await res.json();
  if (!res.ok) throw new Error(json.error ? json.error.code + ': ' + json.error.message : 'HTTP ' + res.status);
  return json.data;
}
async function saveCatalog(e) {
  e.preventDefault();
  const form = $('catalog-form'), kind = form.elements.kind.value, create = form.elements.action.value === 'create';
  const body = {};
  for (const el of form.querySelectorAll('input, select')) {
    if (el.value === '' || el.name === 'kind' || el.name === 'action' || (!create && el.name === 'id')) continue;
    if (kind === 'packages' && ['interval', 'rollover', 'rollover_limit'].includes(el.name)) continue;
    if (kind === 'plans' && el.name === 'bonus_credits') continue;
    body[el.name] = el.name === 'price_cents' ? Number(el.value) : el.value;
  }
  const id = encodeURIComponent(form.elements.id.value);
  try {
    await sendKeyed(create ? './' + kind : './' + kind + '/' + id + '/versions', body);
    form.reset();
    await loadCatalog();
  } catch (err) { showError(err); }
}
async function retireItem(e) {
  const b = e.target.closest('button[data-retire]');
  if (!b) return;
  const reason = prompt('Why retire ' + b.dataset.id + '? (kept in the audit)');
  if (!reason) return;
  try {
    await send('./' + b.dataset.retire + '/' + encodeURIComponent(b.dataset.id) + '/retire', { reason });
    await loadCatalog();
  } catch (err) { showError(err); }
}
$('catalog').onclick = retireItem;
$('catalog-form').onsubmit = saveCatalog;
loadCatalog().catch(showError);`;
