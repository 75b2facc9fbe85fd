// What the example page's views draw with: elements holding text only, tables, money, and
// the one way an admin's action runs (button disabled meanwhile, a notice once it is done).
/// <reference lib="dom" />
import type { BillingResult } from '../../client/mod.ts';

/** An element with text (never HTML: names and emails come from users). */
export function el<K extends keyof HTMLElementTagNameMap>(tag: K, text = '', attrs: Record<string, string> = {}) {
  const e = document.createElement(tag);
  e.textContent = text;
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

export function table(head: string[], rows: string[][], testId: string) {
  const t = el('table', '', { 'data-testid': testId });
  t.append(el('tr'));
  for (const h of head) t.rows[0].append(el('th', h));
  for (const r of rows) {
    const tr = el('tr');
    r.forEach((c, i) => tr.append(el('td', c, { 'data-label': head[i] })));
    t.append(tr);
  }
  return t;
}

export const money = (cents: number, currency: string) =>
  new Intl.NumberFormat(undefined, { style: 'currency', currency }).format(cents / 100);

/** Runs an admin's action from `button`, then shows `done` and draws the view again. */
export type Act = (
  button: HTMLButtonElement,
  run: () => Promise<BillingResult<unknown>>,
  done: string | (() => string),
) => Promise<void>;
