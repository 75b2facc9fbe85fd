// What each member spent of an organisation's credits, for its owner or admin: one folded line a
// member that opens on what the school paid for them over the last 30 days (credits, requests,
// the models, a bar a day as on the student's own chart, and an allowance's runway). A member's
// summary is fetched when their line is first opened, so a school of hundreds asks for none
// until someone reads one.
/// <reference lib="dom" />
import type { BillingClient, OrgMember, UsageSummary } from '../../client/mod.ts';
import { roundedCredits } from './credits.ts';
import { got } from './messages.ts';
import { drawBars } from './usage.ts';

const plural = (n: number, word: string) => `${n} ${word}${n === 1 ? '' : 's'}`;

/** The summary in words: totals, the three costliest models, and the runway when there is one. */
export function memberUsageWords(summary: UsageSummary): string[] {
  if (summary.totals.requests === 0) return ['Nothing paid for in the last 30 days.'];
  const lines = [`${roundedCredits(summary.totals.credits)} credits, ${plural(summary.totals.requests, 'request')}`];
  lines.push(summary.models.slice(0, 3).map((m) => `${m.model}: ${roundedCredits(m.credits)}`).join(' · '));
  if (summary.runway) lines.push(`Their allowance lasts about ${plural(summary.runway.days, 'day')} at this pace.`);
  return lines;
}

function render(body: HTMLElement, summary: UsageSummary) {
  const chart = document.createElement('div');
  chart.className = 'bars mini';
  chart.setAttribute('role', 'img');
  drawBars(chart, summary);
  body.replaceChildren(
    ...memberUsageWords(summary).map((line, i) => {
      const p = document.createElement('p');
      p.textContent = line;
      if (i > 0) p.className = 'muted';
      return p;
    }),
  );
  if (summary.totals.requests > 0) body.append(chart);
}

/** The members' usage part of an admin's organisation view. */
export function memberUsage(billing: BillingClient, orgId: string, members: OrgMember[]): HTMLElement {
  const part = document.createElement('div');
  part.dataset.testid = 'member-usage';
  const title = document.createElement('h4');
  title.textContent = 'Each member, last 30 days';
  part.append(title);
  for (const m of members) {
    const line = document.createElement('details');
    line.className = 'member-usage';
    line.dataset.member = m.user_id;
    const name = document.createElement('summary');
    name.textContent = m.email ?? m.user_id;
    const body = document.createElement('div');
    body.textContent = 'Loading…';
    line.append(name, body);
    line.addEventListener('toggle', async () => {
      if (!line.open || line.dataset.loaded) return;
      line.dataset.loaded = 'loading';
      try {
        render(body, await got(billing.memberUsageSummary(orgId, m.user_id)));
        line.dataset.loaded = 'true';
      } catch {
        delete line.dataset.loaded; // opening it again retries
        body.textContent = 'Could not load their usage. Close and open to try again.';
      }
    });
    part.append(line);
  }
  return part;
}
