// The metrics as CSV: one row per period, currency and product line.
type Line = { gmv_cents: number; net_revenue_cents: number; take_rate?: number | null };
type CurrencyMetrics = {
  currency: string;
  b2c_credits: Line;
  b2b_provider_fees: Line;
  gmv_cents: number;
  net_revenue_cents: number;
  take_rate: number | null;
  arpu_cents: number | null;
};
export type Metrics = {
  from: string;
  to: string;
  by_currency: CurrencyMetrics[];
  users: { active: number; paying: number; first_time_purchasers: number };
  conversion: { checkout_rate: number | null };
};

const header = [
  'period_start',
  'period_end',
  'currency',
  'product_line',
  'gmv_cents',
  'net_revenue_cents',
  'take_rate',
  'active_users',
  'paying_users',
  'arpu_cents',
  'checkout_rate',
];

const cell = (v: unknown) => (v === null || v === undefined ? '' : String(v));

export function metricsCsv(periods: Metrics[]): string {
  const rows = [header.join(',')];
  for (const m of periods) {
    for (const c of m.by_currency) {
      const lines: [string, Line, boolean][] = [
        ['b2c_credits', c.b2c_credits, false],
        ['b2b_provider_fees', c.b2b_provider_fees, false],
        ['all', c, true],
      ];
      for (const [name, l, all] of lines) {
        rows.push(
          [
            m.from,
            m.to,
            c.currency,
            name,
            l.gmv_cents,
            l.net_revenue_cents,
            l.take_rate,
            all ? m.users.active : null,
            all ? m.users.paying : null,
            all ? c.arpu_cents : null,
            all ? m.conversion.checkout_rate : null,
          ].map(cell).join(','),
        );
      }
    }
  }
  return rows.join('\r\n') + '\r\n';
}
