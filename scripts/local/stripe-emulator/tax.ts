// Stripe Tax, as far as this project needs it: with `automatic_tax[enabled]=true` a session,
// subscription or invoice is taxed at one rate for every address (config.taxBps; Stripe's
// depends on the customer's address and the account's registrations). Prices here carry no
// tax_behavior, which Stripe treats as exclusive: the tax is added on top of the amount.
import type Stripe from 'stripe';
import { type FormObject, obj, str } from './form.ts';
import { config } from './state.ts';

/** The tax on `amountCents` when automatic tax is on, rounded half up as Stripe rounds per total. */
export function taxOn(amountCents: number, automaticTax: boolean): number {
  return automaticTax ? Math.round((amountCents * config.taxBps) / 10_000) : 0;
}

/** A request's `automatic_tax[enabled]` form field, as Stripe reads it. */
export function automaticTaxRequested(form: FormObject): boolean {
  return str(obj(form.automatic_tax).enabled) === 'true';
}

/** The `automatic_tax` block Stripe returns once it has computed tax (or was not asked to). */
export function automaticTaxBlock(enabled: boolean): Stripe.Checkout.Session.AutomaticTax {
  return {
    enabled,
    liability: enabled ? { type: 'self' } : null,
    provider: enabled ? 'stripe' : null,
    status: enabled ? 'complete' : null,
  };
}

/** The taxes Stripe lists on an invoice (and each line) for `tax` cents on `taxable` cents. */
export function invoiceTaxes(tax: number, taxable: number): Stripe.Invoice.TotalTax[] {
  if (tax === 0) return [];
  return [{
    amount: tax,
    tax_behavior: 'exclusive',
    tax_rate_details: { tax_rate: 'txr_emulator' },
    taxability_reason: 'standard_rated',
    taxable_amount: taxable,
    type: 'tax_rate_details',
  }];
}
