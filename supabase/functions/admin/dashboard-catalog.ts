// The dashboard's Packages and plans section (docs/pricing.md § Packages and plans): what is on
// sale and what was, each item's versions, and forms to create one, change one (a new version)
// and retire one; every change asks why (kept in the audit). Joined into dashboard-page.ts's one
// <style>/<script> (its CSP nonce); the script is a section of dashboard-script.ts's kind, run
// with the page's helpers, and sends an Idempotency-Key with each create or change.
/// <reference lib="dom" />
import type { DashboardKit } from './dashboard-script.ts';

export const catalogStyle = `
.catalog-form { display: flex; flex-wrap: wrap; gap: .4rem; align-items: end; margin: .6rem 0; }
.catalog-form label { display: flex; flex-direction: column; font-size: .8rem; color: #556; }
.catalog-form input, .catalog-form select { width: 7.5rem; }
#catalog td { overflow-wrap: anywhere; }
.retired { color: #778; }
`;

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

type Version = {
  version: number;
  price_cents: number;
  currency: string;
  interval?: string | null;
  credits: string;
  bonus_credits?: string;
  rollover?: string | null;
  rollover_limit?: string | null;
  purchases?: number;
  live_subscriptions?: number;
};
type Item = { id: string; name: string; version: number; active: boolean; versions: Version[] };
type Catalog = {
  packages: Item[];
  plans: Item[];
  changes: { at: string; action: string; item: string; item_id: string; version: number; reason: string }[];
};

/** Fills the Packages and plans section (served as text: everything it uses is inside). */
export function catalogScript({ $, get, send, esc, credits, money, fmtInt, showError }: DashboardKit): void {
  function versionRows(item: Item, kind: string) {
    return item.versions.map((v) =>
      '<tr' + (v.version === item.version ? '' : ' class="retired"') + '><td>v' + v.version +
      '</td><td class="nowrap">' +
      money(v.price_cents, v.currency) + (v.interval ? ' a ' + esc(v.interval) : '') + '</td><td>' +
      credits(v.credits) +
      (Number(v.bonus_credits) > 0 ? ' + ' + credits(v.bonus_credits ?? '0') + ' bonus' : '') +
      (v.rollover && v.rollover !== 'none'
        ? '<br><span class="muted">rollover ' + esc(v.rollover.replaceAll('_', ' ')) + ' ' + esc(v.rollover_limit) +
          '</span>'
        : '') +
      '</td><td class="muted">' +
      (kind === 'package'
        ? fmtInt.format(v.purchases ?? 0) + ' sold'
        : fmtInt.format(v.live_subscriptions ?? 0) + ' live') +
      '</td></tr>'
    ).join('');
  }
  function catalogItems(items: Item[], kind: string) {
    if (items.length === 0) return '<p class="muted">None.</p>';
    return '<div class="cards"><table><tr><th>' + kind +
      '</th><th>version</th><th>price</th><th>credits</th><th></th></tr>' +
      items.map((i) =>
        '<tr data-' + kind + '="' + esc(i.id) + '" data-version="' + i.version + '" data-active="' + i.active +
        '"><td rowspan="' + (i.versions.length + 1) + '">' + esc(i.id) + '<br><span class="muted">' + esc(i.name) +
        (i.active ? '' : ', retired') + '</span>' +
        (i.active ? '<br><button data-retire="' + kind + 's" data-id="' + esc(i.id) + '">Retire</button>' : '') +
        '</td></tr>' + versionRows(i, kind)
      ).join('') + '</table></div>';
  }
  async function loadCatalog() {
    const c = (await get<{ data: Catalog }>('./catalog')).data;
    $('catalog').innerHTML = '<h2>Packages</h2>' + catalogItems(c.packages, 'package') + '<h2>Plans</h2>' +
      catalogItems(c.plans, 'plan') + '<h2>Changes</h2><div class="cards"><table>' +
      c.changes.slice(0, 10).map((x) =>
        '<tr><td class="nowrap">' + esc(x.at.slice(0, 16).replace('T', ' ')) + '</td><td>' + esc(x.action) +
        '</td><td>' +
        esc(x.item + ' ' + x.item_id + ' v' + x.version) + '</td><td>' + esc(x.reason) + '</td></tr>'
      ).join('') + '</table></div>';
  }
  async function saveCatalog(e: SubmitEvent) {
    e.preventDefault();
    const form = $<HTMLFormElement>('catalog-form');
    const named = (name: string) => form.elements.namedItem(name) as HTMLInputElement | HTMLSelectElement;
    const kind = named('kind').value, create = named('action').value === 'create';
    const body: Record<string, string | number> = {};
    for (const el of Array.from(form.querySelectorAll<HTMLInputElement | HTMLSelectElement>('input, select'))) {
      if (el.value === '' || el.name === 'kind' || el.name === 'action' || (!create && el.name === 'id')) continue;
      if (kind === 'packages' && ['interval', 'rollover', 'rollover_limit'].includes(el.name)) continue;
      if (kind === 'plans' && el.name === 'bonus_credits') continue;
      body[el.name] = el.name === 'price_cents' ? Number(el.value) : el.value;
    }
    const id = encodeURIComponent(named('id').value);
    try {
      await send(create ? './' + kind : './' + kind + '/' + id + '/versions', body, {
        'idempotency-key': crypto.randomUUID(),
      });
      form.reset();
      await loadCatalog();
    } catch (err) {
      showError(err);
    }
  }
  async function retireItem(e: MouseEvent) {
    const b = (e.target as Element).closest<HTMLButtonElement>('button[data-retire]');
    if (!b) return;
    const reason = prompt('Why retire ' + b.dataset.id + '? (kept in the audit)');
    if (!reason) return;
    try {
      await send('./' + b.dataset.retire + '/' + encodeURIComponent(b.dataset.id ?? '') + '/retire', { reason });
      await loadCatalog();
    } catch (err) {
      showError(err);
    }
  }
  $('catalog').onclick = retireItem;
  $<HTMLFormElement>('catalog-form').onsubmit = saveCatalog;
  loadCatalog().catch(showError);
}
