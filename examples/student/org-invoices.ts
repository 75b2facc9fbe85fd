// Paying by invoice, in an owner's or admin's view of an organisation: ask for a package on a
// Stripe invoice (PO number, net terms, where it is made out to), and the invoices so far with
// their status, amounts (tax apart), due date and the links Stripe gives (pay online, PDF).
/// <reference lib="dom" />
import type { BillingClient, CreditPackage, Org, OrgInvoice } from '../../client/mod.ts';
import { roundedCredits } from './credits.ts';
import { type Act, el, money, table } from './dom.ts';

const field = (label: string, attrs: Record<string, string> = {}) =>
  el('input', '', { 'aria-label': label, placeholder: label, ...attrs });

/** "12.00 USD + 1.20 tax", or the amount alone before Stripe has taxed it. */
function amountText(i: OrgInvoice): string {
  const tax = i.tax_cents ? ` + ${money(i.tax_cents, i.currency)} tax` : '';
  return `${money(i.amount_cents, i.currency)}${tax}`;
}

function invoiceTable(invoices: OrgInvoice[], packages: CreditPackage[]) {
  const name = (id: string) => packages.find((p) => p.id === id)?.name ?? id;
  const t = table(
    ['Requested', 'For', 'PO number', 'Status', 'Amount', 'Due', 'Invoice'],
    invoices.map((i) => [
      i.created_at.slice(0, 10),
      `${name(i.package_id)} × ${i.quantity} (${roundedCredits(i.credits)} credits)`,
      i.po_number ?? '—',
      i.status,
      amountText(i),
      i.due_at?.slice(0, 10) ?? '—',
      '',
    ]),
    'org-invoices',
  );
  invoices.forEach((i, n) => {
    const cell = t.rows[n + 1].cells[6];
    if (i.hosted_invoice_url && i.status === 'open') {
      cell.append(el('a', 'Pay', { href: i.hosted_invoice_url, target: '_blank', rel: 'noopener' }), ' ');
    }
    if (i.invoice_pdf) cell.append(el('a', 'PDF', { href: i.invoice_pdf, target: '_blank', rel: 'noopener' }));
  });
  return t;
}

/** The request form and the organisation's invoices. */
export function invoicePart(
  billing: BillingClient,
  org: Org,
  packages: CreditPackage[],
  invoices: OrgInvoice[],
  act: Act,
) {
  const part = el('div', '', { 'data-testid': 'org-invoice' });
  const form = el('form', '', { class: 'row' });
  const pkg = el('select', '', { 'aria-label': 'package to invoice' });
  pkg.append(...packages.map((p) => new Option(`${p.name} · ${money(p.price_cents, p.currency)}`, p.id)));
  const quantity = field('packages', { type: 'number', min: '1', max: '100', value: '1' });
  const po = field('PO number', { maxlength: '64' });
  const terms = el('select', '', { 'aria-label': 'payment terms' });
  terms.append(...[15, 30, 45, 60, 90].map((d) => new Option(`Net ${d} days`, String(d), d === 30, d === 30)));
  const line1 = field('address', { required: '' });
  const city = field('city', { required: '' });
  const postal = field('postal code', { required: '' });
  const country = field('country', { value: 'US', maxlength: '2', required: '' });
  const send = el('button', 'Request invoice', { class: 'secondary' });
  form.append(pkg, quantity, po, terms, line1, city, postal, country, send);
  form.onsubmit = (e) => {
    e.preventDefault();
    act(
      send,
      () =>
        billing.requestOrgInvoice(org.id, {
          package_id: pkg.value,
          quantity: Number(quantity.value) || 1,
          ...(po.value.trim() ? { po_number: po.value.trim() } : {}),
          days_until_due: Number(terms.value),
          billing_address: {
            line1: line1.value.trim(),
            city: city.value.trim(),
            postal_code: postal.value.trim(),
            country: country.value.trim().toUpperCase(),
          },
        }),
      // Stripe sends it to the requester's own confirmed address (docs/api.md, orgs).
      'Invoice sent to your confirmed email address: the credits arrive once it is paid.',
    );
  };
  part.append(el('h4', 'Pay by invoice'), form);
  part.append(
    invoices.length ? invoiceTable(invoices, packages) : el('p', 'No invoices yet.', { class: 'muted' }),
  );
  return part;
}
