// The morning email's text, from a daily_revenue row's metrics.
import assert from 'node:assert/strict';
import { render } from '../../supabase/functions/notify/notifications.ts';

Deno.test('the daily report names the day, GMV, net revenue, take rate, users, conversion and outstanding credits', () => {
  const { subject, text } = render('daily_report', {
    day: '2026-11-21',
    metrics: {
      by_currency: [{ currency: 'usd', gmv_cents: 1_399_800, net_revenue_cents: 297_200, take_rate: 0.212316 }],
      users: { active: 4, paying: 3 },
      conversion: { checkout_rate: 0.75 },
      credits: { outstanding: '31313.6' },
    },
  });
  assert.equal(subject, 'ScholarLink daily report, 2026-11-21');
  assert.equal(
    text,
    [
      'Numbers for 2026-11-21 (UTC).',
      'USD: GMV $13,998.00, net revenue $2,972.00, take rate 21.23%',
      'Active users 4, paying 3; checkout conversion 75.0%.',
      'Outstanding credits: 31313.6.',
    ].join('\n'),
  );
});

Deno.test('a day without payments says so rather than showing nothing', () => {
  const { text } = render('daily_report', {
    day: '2026-11-20',
    metrics: { by_currency: [], users: { active: 0, paying: 0 } },
  });
  assert.match(text, /No payments\./);
  assert.match(text, /checkout conversion n\/a/);
});
