// "Your credits at an earlier time": the student picks a date and time (their own clock) and sees
// the balance and every lot as they stood then (GET /credits/balance?at=, /credits/lots?at=; exact,
// from the ledger: docs/credit-lots.md § As of); left empty, as they are now. Each lot says where
// it came from, what was left of it, when it expires, and, when it may pay for some models only,
// which ("only for: essay-tutor, gpt-4o-mini*").
/// <reference lib="dom" />
import type { Balance, BillingClient, Lot } from '../../client/mod.ts';
import { roundedCredits } from './credits.ts';
import { table } from './dom.ts';
import { entryWords } from './ledger-words.ts';
import { got } from './messages.ts';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

/**
 * Which models a lot may pay for, in words; '' when it pays for any (`applies_to` null).
 * @example appliesToText({ applies_to: ['essay-tutor', 'gpt-4o-mini*'] }) // 'only for: essay-tutor, gpt-4o-mini*'
 */
export function appliesToText(lot: Pick<Lot, 'applies_to'>): string {
  const models = lot.applies_to;
  if (models === undefined || models === null) return '';
  return models.length ? `only for: ${models.join(', ')}` : 'for no model';
}

/**
 * A `datetime-local` value (the reader's own clock, no offset) as the instant the API takes, in
 * UTC; null when empty or not a time.
 * @example localInstant('2026-11-03T18:30') // '2026-11-03T17:30:00.000Z' in Paris
 */
export function localInstant(value: string): string | null {
  if (!value) return null;
  const at = new Date(value); // a date-time without an offset is the local time
  return Number.isNaN(at.getTime()) ? null : at.toISOString();
}

const day = (iso: string) =>
  new Date(iso).toLocaleDateString(undefined, { day: 'numeric', month: 'short', year: 'numeric' });

/** A lot as a row: where from, when, how much, what was left, its expiry, and what it may pay for. */
export function lotRow(lot: Lot): string[] {
  const notes = [lot.frozen ? 'on hold: its payment is disputed' : '', appliesToText(lot)].filter(Boolean);
  return [
    entryWords({ kind: lot.source, amount: lot.amount, reference: null, model: null }),
    day(lot.granted_at),
    roundedCredits(lot.amount),
    roundedCredits(lot.remaining),
    lot.expires_at ? day(lot.expires_at) : 'never',
    notes.join(' · '),
  ];
}

function render(at: string | null, b: Balance, lots: Lot[], more: boolean) {
  const when = at ? `On ${new Date(at).toLocaleString()}` : 'Now';
  // What was held (an answer running then) is said only when something was.
  const held = /[1-9]/.test(b.held)
    ? `, ${roundedCredits(b.held)} held while an answer ran, ${roundedCredits(b.available)} available`
    : '';
  $('as-of-balance').textContent = `${when}: ${roundedCredits(b.balance)} credits${held}.`;
  $('as-of-balance').dataset.balance = b.balance;
  const box = $('as-of-lots');
  if (lots.length === 0) {
    box.replaceChildren(
      Object.assign(document.createElement('p'), {
        className: 'muted',
        textContent: at ? 'You had no credits yet then.' : 'You have no credits yet.',
      }),
    );
    return;
  }
  const t = table(['From', 'Added', 'Credits', 'Left', 'Expires', 'Notes'], lots.map(lotRow), 'as-of-lots');
  lots.forEach((lot, i) => (t.rows[i + 1].dataset.lot = lot.id));
  box.replaceChildren(t);
  if (more) {
    box.append(
      Object.assign(document.createElement('p'), {
        className: 'muted',
        textContent: `The ${lots.length} newest are shown.`,
      }),
    );
  }
}

/** What the view needs of the page: its error box, shown beside the button, and cleared. */
export interface AsOfPage {
  fail: (err: unknown, retry?: () => void, near?: HTMLElement) => void;
  clear: () => void;
}

/** Wires the form: the balance and lots at the picked time (or now), or what went wrong beside it. */
export function wireAsOf(billing: BillingClient, page: AsOfPage) {
  const button = $<HTMLButtonElement>('as-of-show');
  const input = $<HTMLInputElement>('as-of-at');
  const note = $('as-of-note');
  $<HTMLFormElement>('as-of-form').onsubmit = async (event) => {
    event.preventDefault();
    page.clear();
    const at = localInstant(input.value);
    // What is to come is not in the ledger yet (the API would refuse it: 400 on `at`).
    note.hidden = !(at && Date.parse(at) > Date.now());
    if (!note.hidden) return;
    button.disabled = true;
    try {
      const q = at ? { at } : {};
      const [b, lots] = await Promise.all([got(billing.balance(q)), got(billing.lots({ ...q, limit: 50 }))]);
      render(at, b, lots.items, lots.next_cursor !== null);
    } catch (err) {
      page.fail(err, undefined, button);
    } finally {
      button.disabled = false;
    }
  };
}
