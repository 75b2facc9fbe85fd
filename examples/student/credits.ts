// Credit amounts for reading, and a job's price from the rate card: exact decimal strings in,
// string arithmetic (scaled BigInts) throughout, so no amount ever passes through a float.

/** 9990.5 → "9,990.5": grouped, every digit kept. */
export function formatCredits(amount: string): string {
  const [whole, fraction] = amount.split('.');
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return fraction ? `${grouped}.${fraction}` : grouped;
}

/**
 * For reading, not for sums: rounded half up to 2 decimals and grouped (the API and the CSV keep
 * every digit); "less than 0.01", without a sign, rather than a misleading 0.
 * @example roundedCredits('-1234.567') // '-1,234.57'
 */
export function roundedCredits(amount: string): string {
  const negative = amount.startsWith('-');
  const [whole, fraction = ''] = amount.replace(/^-/, '').split('.');
  const cents = BigInt(whole + (fraction + '00').slice(0, 2)) + (Number(fraction[2] ?? '0') >= 5 ? 1n : 0n);
  if (cents === 0n && /[1-9]/.test(fraction)) return 'less than 0.01';
  const text = cents.toString().padStart(3, '0');
  const formatted = formatCredits(
    `${text.slice(0, -2)}.${text.slice(-2)}`.replace(/\.00$/, '').replace(/(\.\d)0$/, '$1'),
  );
  return `${negative && cents !== 0n ? '-' : ''}${formatted}`;
}

/**
 * For "you need N more": rounded up to 2 decimals and grouped, so it never says less than is
 * needed (0.6534 → "0.66", 1.001 → "1.01", 2 → "2").
 * @example creditsUp('0.6534') // '0.66'
 */
export function creditsUp(amount: string): string {
  const [whole, fraction = ''] = amount.split('.');
  const cents = BigInt(whole + (fraction + '00').slice(0, 2)) + (/[1-9]/.test(fraction.slice(2)) ? 1n : 0n);
  const text = cents.toString().padStart(3, '0');
  return formatCredits(`${text.slice(0, -2)}.${text.slice(-2)}`.replace(/\.00$/, '').replace(/(\.\d)0$/, '$1'));
}

/** The exact sum of decimal strings (negatives allowed), trailing zeros trimmed. */
export function sumCredits(...amounts: string[]): string {
  const scale = Math.max(0, ...amounts.map((a) => (a.split('.')[1] ?? '').length));
  let total = 0n;
  for (const a of amounts) {
    const [whole, fraction = ''] = a.replace(/^-/, '').split('.');
    const n = BigInt(whole + fraction.padEnd(scale, '0'));
    total += a.startsWith('-') ? -n : n;
  }
  const sign = total < 0n ? '-' : '';
  const text = (total < 0n ? -total : total).toString().padStart(scale + 1, '0');
  return sign + (scale ? `${text.slice(0, -scale)}.${text.slice(-scale)}`.replace(/\.?0+$/, '') : text);
}

/** 999, 'usd' → "$9.99" in the reader's locale (cents are integers: no credit amount passes here). */
export const money = (cents: number, currency: string) =>
  new Intl.NumberFormat(undefined, { style: 'currency', currency }).format(cents / 100);

/** A non-negative decimal string as digits and a scale: '0.15' → { digits: 15n, scale: 2 }. */
function decimal(s: string): { digits: bigint; scale: number } {
  const [whole, fraction = ''] = s.split('.');
  return { digits: BigInt(whole + fraction), scale: fraction.length };
}

function decimalText(digits: bigint, scale: number): string {
  const text = digits.toString().padStart(scale + 1, '0');
  return scale === 0 ? text : `${text.slice(0, -scale)}.${text.slice(-scale)}`;
}

/** A model's current rate card, as billing_api.rate_cards has it (numbers read as text). */
export interface RateCard {
  usd_per_million_input: string;
  usd_per_million_output: string;
  markup: string;
}

/**
 * The most an ai_completion job can cost: what it holds while it runs, priced as the jobs
 * function prices it (every prompt byte a token plus 16 for the chat framing, and max_tokens
 * out; credits = USD × 1,000). It then pays for the tokens it used and the rest is released.
 * @example jobPrice(card, 'Hi', 256) // '0.15…'
 */
export function jobPrice(card: RateCard, prompt: string, maxTokens: number): string {
  const inputTokens = BigInt(new TextEncoder().encode(prompt).length + 16);
  const input = decimal(card.usd_per_million_input);
  const output = decimal(card.usd_per_million_output);
  const markup = decimal(card.markup);
  const scale = Math.max(input.scale, output.scale);
  const usdMicros = inputTokens * input.digits * 10n ** BigInt(scale - input.scale) +
    BigInt(maxTokens) * output.digits * 10n ** BigInt(scale - output.scale);
  // USD per million tokens × tokens × markup / 1,000,000 × 1,000 credits per USD.
  return decimalText(usdMicros * markup.digits, scale + markup.scale + 3);
}
