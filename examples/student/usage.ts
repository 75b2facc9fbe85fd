// "Where your credits went": the last 30 days' charges as one bar a day (flex bars, so 30 of
// them fit a phone's width) on a credits axis (0, half and the busiest day) and a dates axis,
// with the busiest day's value in words; the models that cost most, and the runway in words.
// Bar heights and tick values are worked out on scaled BigInts, like every other amount here:
// no credit passes a float.
/// <reference lib="dom" />
import type { BillingClient, Runway, UsageSummary } from '../../client/mod.ts';
import { roundedCredits } from './credits.ts';
import { got } from './messages.ts';

/** An exact decimal string in millionths of a credit (finer digits do not change a bar). */
const micros = (s: string) => {
  const [whole, fraction = ''] = s.split('.');
  return BigInt(whole + (fraction + '000000').slice(0, 6));
};

/** How tall `amount`'s bar is, in percent of the tallest (`max`), at least 2 when non-zero. */
export function barPercent(amount: string, max: string): number {
  const m = micros(max);
  if (m === 0n || micros(amount) === 0n) return 0;
  return Math.max(2, Number((micros(amount) * 100n) / m));
}

/** The runway in a student's words; null is "no pace" (nothing spent in the last 7 days). */
export function runwayText(runway: Runway | null): string {
  if (!runway) return 'You have not used credits in the last 7 days.';
  if (runway.days === 0) return "At your last 7 days' pace your credits will not last a day.";
  return `At your last 7 days' pace your credits last about ${runway.days} day${runway.days === 1 ? '' : 's'}.`;
}

export const label = (day: string) =>
  new Date(`${day}T00:00:00Z`).toLocaleDateString('en-GB', { day: 'numeric', month: 'short', timeZone: 'UTC' });

/** Draws one bar a bucket into `chart` (a `.bars` element), named for screen readers. */
export function drawBars(chart: HTMLElement, summary: UsageSummary) {
  const max = summary.buckets.reduce((m, b) => (micros(b.credits) > micros(m) ? b.credits : m), '0');
  chart.replaceChildren(...summary.buckets.map((b) => {
    const bar = document.createElement('div');
    bar.className = 'bar';
    bar.style.height = `${barPercent(b.credits, max)}%`;
    bar.title = `${label(b.start)}: ${roundedCredits(b.credits)} credits`;
    return bar;
  }));
  chart.setAttribute(
    'aria-label',
    `Credits used per day, ${label(summary.from)} to today: ${roundedCredits(summary.totals.credits)} in all`,
  );
}

/** A micro-credit count back to a decimal string. */
const fromMicros = (n: bigint) => {
  const text = n.toString().padStart(7, '0');
  return `${text.slice(0, -6)}.${text.slice(-6)}`;
};

/**
 * The chart's axes and its caption: credits at 0, half and the busiest day's amount; the first,
 * middle and last dates; "the most, 70, on 24 Nov".
 */
export function axes(summary: UsageSummary) {
  const busiest = summary.buckets.reduce<UsageSummary['buckets'][number] | null>(
    (m, b) => (micros(b.credits) > micros(m?.credits ?? '0') ? b : m),
    null,
  );
  const top = micros(busiest?.credits ?? '0');
  const y = (top === 0n ? [0n] : [top, top / 2n, 0n]).map((n) => roundedCredits(fromMicros(n)));
  const days = summary.buckets.map((b) => b.start);
  const x = days.length ? [days[0], days[Math.floor(days.length / 2)], days.at(-1)!].map(label) : [];
  const caption = busiest
    ? `Credits used per day, ${label(summary.from)} to today: ${roundedCredits(summary.totals.credits)} in all; ` +
      `the most, ${roundedCredits(busiest.credits)}, on ${label(busiest.start)}.`
    : `No credits used from ${label(summary.from)} to today.`;
  return { y, x, caption };
}

/** Draws the summary into `section` (its #usage-chart with #usage-y and #usage-x, #usage-models and #runway). */
export function renderUsage(section: HTMLElement, summary: UsageSummary) {
  const find = (id: string) => section.querySelector<HTMLElement>(`#${id}`)!;
  find('runway').textContent = runwayText(summary.runway);
  drawBars(find('usage-chart'), summary);
  const { y, x, caption } = axes(summary);
  find('usage-y').replaceChildren(...y.map((t) => Object.assign(document.createElement('span'), { textContent: t })));
  find('usage-x').replaceChildren(...x.map((t) => Object.assign(document.createElement('span'), { textContent: t })));
  find('usage-caption').textContent = caption;
  const models = find('usage-models');
  models.replaceChildren(
    ...summary.models.slice(0, 5).map((m) => {
      const li = document.createElement('li');
      li.textContent = `${m.model}: ${roundedCredits(m.credits)} credits, ${m.requests} request${
        m.requests === 1 ? '' : 's'
      }`;
      return li;
    }),
  );
  if (summary.models.length === 0) models.innerHTML = '<li class="muted">Nothing used in the last 30 days.</li>';
}

/** Loads the last 30 days and draws them. */
export async function showUsage(billing: BillingClient, section: HTMLElement) {
  renderUsage(section, await got(billing.usageSummary()));
}
