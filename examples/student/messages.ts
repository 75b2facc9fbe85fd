// What the page says when something goes wrong, in a student's words: what happened and what to
// do next. Codes and request ids are for support: the page keeps them behind "Details".
import type { ApiError, BillingResult, CreditPackage } from '../../client/mod.ts';
import { creditsUp, formatCredits, roundedCredits } from './credits.ts';

/** A client answer's data, or its error thrown to the part of the page that asked for it. */
export async function got<T>(answer: Promise<BillingResult<T>>): Promise<T> {
  const { data, error } = await answer;
  if (error) throw error;
  return data;
}

/** A message for a student, with at most one way on (a link), and what support needs. */
export interface StudentMessage {
  text: string;
  action?: { label: string; href: string };
  /** For support, behind a "Details" disclosure: the code, the request id, the service's own words. */
  details: string;
}

/** `a − b` for non-negative decimal strings, exactly (no floats); '0' when b ≥ a. */
export function shortfall(a: string, b: string): string {
  const scale = Math.max((a.split('.')[1] ?? '').length, (b.split('.')[1] ?? '').length);
  const units = (s: string) => {
    const [whole, fraction = ''] = s.replace(/^-/, '').split('.');
    const n = BigInt(whole + fraction.padEnd(scale, '0'));
    return s.startsWith('-') ? -n : n;
  };
  const diff = units(a) - units(b);
  if (diff <= 0n) return '0';
  const text = diff.toString().padStart(scale + 1, '0');
  return scale ? `${text.slice(0, -scale)}.${text.slice(-scale)}`.replace(/\.?0+$/, '') : text;
}

const buyCredits = { label: 'Buy credits', href: '#buy' };

/** Where the page asked: the API's base URL and the page's own origin (which the API must allow). */
export interface Asked {
  api: string;
  origin: string;
}

/** What went wrong, for a student; `asked` names the address a request that got no answer went to. */
export function studentMessage(err: unknown, asked?: Asked): StudentMessage {
  if (!(err instanceof Error) || !('code' in err)) {
    return { text: 'Something went wrong. Please try again.', details: String(err) };
  }
  const e = err as ApiError;
  const details = [e.code, e.requestId ? `request ${e.requestId}` : '', e.message].filter(Boolean).join(' · ');
  switch (e.code) {
    case 'INSUFFICIENT_CREDITS': {
      const d = e.details ?? {};
      if (d.debt) {
        return {
          text: 'A refunded payment left your balance below zero: buy credits to continue.',
          action: buyCredits,
          details,
        };
      }
      const need = d.required && d.available ? shortfall(d.required, d.available) : null;
      const shown = need && need !== '0' ? creditsUp(need) : null;
      const text = shown
        ? `You need ${shown} more credit${shown === '1' ? '' : 's'}`
        : "You don't have enough credits for this";
      return { text, action: buyCredits, details };
    }
    case 'SPEND_CAP_REACHED': {
      const d = e.details;
      const when = d?.resets_at ? ` It resets on ${new Date(d.resets_at).toLocaleString()}.` : '';
      return {
        text: `This would go over your spending limit of ${roundedCredits(d?.cap ?? '0')} credits.${when}`,
        details,
      };
    }
    case 'UNAUTHORIZED':
      return { text: 'You have been signed out. Sign in again to continue.', details };
    case 'NETWORK_ERROR':
      // No answer at all: nothing listening there, or the browser refused it (an origin the API does not allow).
      return asked
        ? {
          text: `We couldn't reach ScholarLink at ${asked.api}. Check your connection and that ` +
            'ScholarLink is running at that address, then try again.',
          details: `${details} · ${asked.api} must answer and allow this page's origin ${asked.origin} ` +
            '(CORS_ALLOWED_ORIGINS); locally, ./scripts/dev prints the addresses',
        }
        : { text: "We couldn't reach ScholarLink. Check your connection and try again.", details };
    case 'RATE_LIMITED':
      return { text: 'That was a lot of requests at once. Wait a few seconds and try again.', details };
    case 'NO_SAVED_CARD':
      return { text: 'Auto-recharge needs a saved card: buy a package with "Keep my card" ticked first.', details };
    case 'CODE_NOT_FOUND':
      return { text: "We don't know that code. Check it (letters and digits, 20 of them) and try again.", details };
    case 'CODE_EXHAUSTED':
      return { text: 'This code has been used as many times as it allows.', details };
    case 'CODE_NOT_REDEEMABLE': {
      const reason = String(e.details?.reason ?? '');
      const words: Record<string, string> = {
        expired: 'This code has expired.',
        'not yet valid': 'This code is not valid yet.',
        'already redeemed': 'This code has already been redeemed.',
        'for students only': 'This code is for a student: organisation admins spend their own credits.',
      };
      return { text: words[reason] ?? 'This code cannot be redeemed right now.', details };
    }
    case 'CODE_ATTEMPTS_LIMIT': {
      const at = e.details?.retry_at ? ` after ${new Date(e.details.retry_at).toLocaleTimeString()}` : ' later';
      return { text: `Too many codes that don't exist were tried. Try again${at}.`, details };
    }
    case 'INVITATION_NOT_FOUND':
      return {
        text: 'This invitation is for another email address. Sign in with the address it was sent to.',
        details,
      };
    case 'INVITATION_CLOSED':
      return {
        text: 'This invitation can no longer be answered (it was answered, withdrawn or has expired).',
        details,
      };
    default:
      // A refused field reads as a sentence already ("amount must be greater than zero.").
      if (e.type === 'validation' && e.status === 400) return { text: e.message, details };
      return { text: 'Something went wrong on our side. Please try again in a moment.', details };
  }
}

/** A package by name, as a student reads it: "the Mini package". */
export const packageName = (id: string, packages: Pick<CreditPackage, 'id' | 'name'>[]) =>
  `the ${packages.find((p) => p.id === id)?.name ?? id} package`;

/**
 * A package's bonus in whole credits when it is whole; otherwise with its reason, the percent
 * it adds (1,249.5 is 5% of 24,990), so a half credit does not look like a mistake.
 * @example bonusText({ credits: '24990', bonus_credits: '1249.5' }) // '+ 1,249.5 bonus credits (5% extra)'
 */
export function bonusText(p: Pick<CreditPackage, 'credits' | 'bonus_credits'>): string {
  if (!/[1-9]/.test(p.bonus_credits)) return '';
  const [whole, fraction = ''] = p.bonus_credits.split('.');
  const isWhole = !/[1-9]/.test(fraction);
  const amount = isWhole ? formatCredits(whole) : roundedCredits(p.bonus_credits);
  const hundredths = (BigInt(whole) * 10_000n + BigInt((fraction + '00').slice(0, 2)) * 100n) /
    BigInt(p.credits.split('.')[0] || '1');
  const percent = hundredths % 100n === 0n ? `${hundredths / 100n}%` : null;
  return isWhole || !percent ? `+ ${amount} bonus credits` : `+ ${amount} bonus credits (${percent} extra)`;
}
