// Credit amounts: exact decimals, carried as strings in JSON, never JS floats.
import { z } from 'zod';
import { pgInt, pgText } from './pg-values.ts';

const positiveDecimal = /^(0|[1-9][0-9]{0,19})(\.[0-9]{1,18})?$/;

/**
 * A positive credit amount: a decimal string ("9990", "0.0075") or a safe JSON integer,
 * normalised to a string. At most 20 integer and 18 fractional digits.
 * @example CreditAmountSchema.parse('12.50') // '12.50'
 */
export const CreditAmountSchema = z
  .union([pgText(64), pgInt(1, Number.MAX_SAFE_INTEGER)])
  .transform(String)
  .pipe(
    z.string()
      // A negative amount is told so first, not that its digits are malformed.
      .refine((s) => !s.trim().startsWith('-'), { message: 'must be greater than zero', abort: true })
      .regex(positiveDecimal, 'must be a decimal string with at most 18 fractional digits')
      .refine((s) => /[1-9]/.test(s), 'must be greater than zero'),
  );

/**
 * The models credits may pay for: 1 to 20 model names or families (a family ends in `*`); null or
 * absent: any model. The ledger checks the same rule (billing.applies_to_of).
 * @example AppliesToSchema.parse(['essay-tutor', 'gpt-4o-mini*'])
 */
export const AppliesToSchema = z
  .array(pgText(101).regex(/^[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}\*?$/, 'must be a model name or a family ending in *'))
  .min(1).max(20).nullable();

/**
 * Postgres numeric text without insignificant zeros: "50.000000000000000000" → "50".
 * @example formatCredits('-0.500') // '-0.5'
 */
export function formatCredits(value: string): string {
  const trimmed = value.includes('.') ? value.replace(/0+$/, '').replace(/\.$/, '') : value;
  return trimmed === '-0' ? '0' : trimmed;
}
