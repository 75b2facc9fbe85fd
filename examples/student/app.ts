// The example student page: balance, packages (bought through hosted Checkout), the purchase
// polled after the redirect back, recent ledger entries, and a metered AI job with progress
// and cancel. Everything goes through the typed client over supabase-js.
/// <reference lib="dom" />
import { createClient } from '@supabase/supabase-js';
import {
  type AutoRecharge,
  type BillingClient,
  createBillingClient,
  isBillingError,
  type Job,
  type SpendCap,
} from '../../client/mod.ts';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const store = globalThis.sessionStorage;
const params = new URLSearchParams(location.search);

// Locally the page is told where the API is (?api=) and takes a pasted token; both are kept
// for the tab, so they survive the round trip through Checkout.
if (params.get('api')) store.setItem('api', params.get('api') as string);
const api = store.getItem('api') ?? 'http://127.0.0.1:54321';

/** 9990.5 → "9,990.5": credits are decimal strings, grouped without ever becoming floats. */
function formatCredits(amount: string): string {
  const [whole, fraction] = amount.split('.');
  const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
  return fraction ? `${grouped}.${fraction}` : grouped;
}

/**
 * For reading, not for sums: rounded half up to 2 decimals with string arithmetic (the API and
 * the CSV keep every digit); "less than 0.01" rather than a misleading 0.
 * @example roundedCredits('-0.021') // '-0.02'
 */
function roundedCredits(amount: string): string {
  const negative = amount.startsWith('-');
  const [whole, fraction = ''] = amount.replace(/^-/, '').split('.');
  const cents = BigInt(whole + (fraction + '00').slice(0, 2)) + (Number(fraction[2] ?? '0') >= 5 ? 1n : 0n);
  if (cents === 0n && /[1-9]/.test(fraction)) return `${negative ? '-' : ''}less than 0.01`;
  const text = cents.toString().padStart(3, '0');
  const formatted = formatCredits(
    `${text.slice(0, -2)}.${text.slice(-2)}`.replace(/\.00$/, '').replace(/(\.\d)0$/, '$1'),
  );
  return `${negative ? '-' : ''}${formatted}`;
}

/** What each kind of ledger entry means, in a student's words. */
const entryWords: Record<string, string> = {
  purchase: 'Bought credits',
  promo_grant: 'Bonus credits',
  adjustment: 'Added by support',
  usage: 'AI usage',
  debit: 'Charge',
  hold_capture: 'AI job charged',
  refund_reversal: 'Refunded payment taken back',
  dispute_reversal: 'Disputed payment taken back',
  expiry: 'Credits expired',
};
const money = (cents: number, currency: string) =>
  new Intl.NumberFormat(undefined, { style: 'currency', currency }).format(cents / 100);

function show(id: 'error' | 'notice', text: string | null) {
  const el = $(id);
  (id === 'error' ? $('error-text') : el).textContent = text ?? '';
  el.hidden = !text;
}

/** Back to the sign-in form: the token is forgotten (and with it every error it caused). */
function signOut() {
  store.removeItem('token');
  location.assign(`${location.origin}${location.pathname}`);
}

function fail(err: unknown) {
  const text = isBillingError(err)
    ? `${err.message} (${err.code}${err.requestId ? `, request ${err.requestId}` : ''})`
    : String(err);
  show('error', text);
  // A token that is bad or expired will not get better: offer the way back.
  $('sign-in-again').hidden = !(isBillingError(err) && err.status === 401);
}

async function refreshBalance(billing: BillingClient) {
  const b = await billing.balance();
  $('balance').textContent = roundedCredits(b.balance);
  $('available').textContent = roundedCredits(b.available);
  $('held').textContent = roundedCredits(b.held);
  const expiring = $('expiring');
  expiring.hidden = !b.expiring;
  if (b.expiring) {
    expiring.textContent = `${formatCredits(b.expiring.amount)} credits expire on ${
      new Date(b.expiring.at).toLocaleDateString()
    }.`;
  }
}

const periodWord = { day: 'Today', week: 'This week', month: 'This month' } as const;

function renderCaps(caps: SpendCap[]) {
  const cap = caps.find((c) => c.model === null);
  $('cap-status').textContent = cap
    ? `${periodWord[cap.period]}: ${formatCredits(cap.spent)} of ${formatCredits(cap.cap)} credits spent (resets ${
      new Date(cap.resets_at).toLocaleString()
    }).`
    : 'No limit set.';
  $('cap-remove').hidden = !cap;
  if (cap) $<HTMLSelectElement>('cap-period').value = cap.period;
}

function wireCaps(billing: BillingClient) {
  const save = async (amount: string | null) => {
    show('error', null);
    try {
      renderCaps(
        await billing.setCap({ period: $<HTMLSelectElement>('cap-period').value as SpendCap['period'], amount }),
      );
    } catch (err) {
      fail(err);
    }
  };
  $('cap-save').onclick = () => save($<HTMLInputElement>('cap-amount').value.trim());
  $('cap-remove').onclick = () => save(null);
}

function renderAutoRecharge(a: AutoRecharge) {
  const reasons: Record<string, string> = {
    card_declined: 'your bank declined the last recharge',
    authentication_required: 'your bank asked to confirm the last recharge',
  };
  $('recharge-status').textContent = a.enabled
    ? `On: the ${a.package_id} package when available falls below ${formatCredits(a.threshold ?? '0')} credits.`
    : a.disabled_reason
    ? `Off: ${reasons[a.disabled_reason] ?? a.disabled_reason}. Buy credits above, then turn it on again.`
    : a.card_saved
    ? 'Off.'
    : 'Off. To use it, buy a package with "Keep my card for auto-recharge" ticked.';
  $('recharge-on').hidden = a.enabled;
  $('recharge-off').hidden = !a.enabled;
}

function wireAutoRecharge(billing: BillingClient) {
  const set = async (enabled: boolean) => {
    show('error', null);
    try {
      renderAutoRecharge(
        await billing.setAutoRecharge(
          enabled
            ? {
              enabled,
              package_id: $<HTMLSelectElement>('recharge-package').value,
              threshold: $<HTMLInputElement>('recharge-threshold').value.trim(),
            }
            : { enabled },
        ),
      );
    } catch (err) {
      fail(err);
    }
  };
  $('recharge-on').onclick = () => set(true);
  $('recharge-off').onclick = () => set(false);
}

async function refreshLedger(billing: BillingClient) {
  const { entries } = await billing.ledger({ limit: 10 });
  const list = $('ledger');
  list.replaceChildren();
  if (entries.length === 0) {
    list.innerHTML = '<li class="muted">No activity yet: buy a package to start.</li>';
    return;
  }
  for (const e of entries) {
    const li = document.createElement('li');
    li.textContent = `${new Date(e.created_at).toLocaleString()} · ${entryWords[e.kind] ?? e.kind} · ${
      e.amount.startsWith('-') ? '' : '+'
    }${roundedCredits(e.amount)}`;
    list.append(li);
  }
}

async function showPackages(billing: BillingClient) {
  const packages = await billing.packages();
  $('recharge-package').replaceChildren(
    ...packages.map((p) => new Option(`${p.name} · ${money(p.price_cents, p.currency)}`, p.id)),
  );
  const box = $('packages');
  box.replaceChildren();
  if (packages.length === 0) box.innerHTML = '<span class="muted">No packages on sale right now.</span>';
  for (const p of packages) {
    const card = document.createElement('div');
    card.className = 'package';
    const bonus = p.bonus_credits !== '0' ? ` + ${formatCredits(p.bonus_credits)} bonus` : '';
    card.innerHTML = `<strong></strong><div class="muted"></div>`;
    (card.querySelector('strong') as HTMLElement).textContent = `${p.name} · ${money(p.price_cents, p.currency)}`;
    (card.querySelector('.muted') as HTMLElement).textContent = `${formatCredits(p.credits)} credits${bonus}`;
    const buy = document.createElement('button');
    buy.textContent = 'Buy';
    buy.dataset.package = p.id;
    buy.onclick = async () => {
      buy.disabled = true;
      buy.textContent = 'Opening checkout…';
      try {
        const here = `${location.origin}${location.pathname}`;
        const session = await billing.startCheckout({
          package_id: p.id,
          success_url: here,
          cancel_url: `${here}?cancelled=1`,
          save_card: $<HTMLInputElement>('save-card').checked,
        })
          .done;
        if (session.url) location.assign(session.url);
      } catch (err) {
        fail(err);
        buy.disabled = false;
        buy.textContent = 'Buy';
      }
    };
    card.append(buy);
    box.append(card);
  }
}

/** Back from Checkout: the purchase is polled until Stripe's answer is in (webhooks may lag). */
async function followPurchase(billing: BillingClient, sessionId: string) {
  show('notice', 'Confirming your payment…');
  for (let i = 0; i < 30; i++) {
    const p = await billing.purchase(sessionId);
    if (p.status === 'paid') {
      // The server's decimal strings, shown as they are: no arithmetic on credits here.
      const bonus = p.bonus_credits !== '0' ? ` + ${formatCredits(p.bonus_credits)} bonus` : '';
      show('notice', `Payment received: ${formatCredits(p.credits)} credits${bonus} added.`);
      return;
    }
    if (p.status !== 'pending') {
      show('notice', null);
      show('error', `The payment did not go through (${p.status}).`);
      return;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
  show('notice', 'Your payment is still being confirmed; the balance will update shortly.');
}

function wireJobs(billing: BillingClient) {
  const start = $<HTMLButtonElement>('start-job');
  const cancel = $<HTMLButtonElement>('cancel-job');
  const bar = $<HTMLProgressElement>('job-progress');
  const status = $('job-status');
  let running: { id: string; abort: AbortController } | null = null;
  const render = (job: Job) => {
    bar.value = job.progress;
    status.textContent = `${job.status} · ${job.progress}%`;
  };
  start.onclick = async () => {
    show('error', null);
    start.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    $('job-result').textContent = '';
    const pending = billing.createJob({
      type: 'ai_completion',
      input: { model: 'gpt-4o-mini', prompt: $<HTMLTextAreaElement>('prompt').value, max_tokens: 256 },
    });
    status.textContent = 'queued';
    try {
      const accepted = await pending.done;
      running = { id: accepted.job_id, abort: new AbortController() };
      cancel.hidden = false;
      await refreshBalance(billing); // the job's estimate is now held
      const job = await billing.watchJob(accepted.job_id, { signal: running.abort.signal, onProgress: render });
      render(job);
      if (job.status === 'completed') {
        $('job-result').textContent = String((job.result as { text?: string })?.text ?? '');
      }
      await Promise.all([refreshBalance(billing), refreshLedger(billing)]);
    } catch (err) {
      if (!(isBillingError(err) && err.code === 'ABORTED')) {
        fail(err);
        // Refused (402: not enough credits, or over the limit) or failed: it is not queued.
        if (!running) {
          status.textContent = 'not started';
          bar.hidden = true;
        }
      }
    } finally {
      running = null;
      start.disabled = false;
      cancel.hidden = true;
    }
  };
  cancel.onclick = async () => {
    if (!running) return;
    cancel.disabled = true;
    try {
      const job = await billing.cancelJob(running.id);
      running.abort.abort();
      render(job);
      await refreshBalance(billing);
    } catch (err) {
      fail(err);
    } finally {
      cancel.disabled = false;
    }
  };
}

async function main() {
  const token = store.getItem('token');
  if (!token) {
    $('signin').hidden = false;
    $('sign-in').onclick = () => {
      store.setItem('token', $<HTMLInputElement>('token').value.trim());
      location.reload();
    };
    return;
  }
  const supabase = createClient(api, 'local-anon-key', { accessToken: () => Promise.resolve(token) });
  const billing = createBillingClient(supabase);
  $('app').hidden = false;
  $('sign-out').hidden = false;
  $('sign-out').onclick = signOut;
  $('sign-in-again').onclick = signOut;
  wireJobs(billing);
  wireCaps(billing);
  wireAutoRecharge(billing);
  try {
    const sessionId = params.get('session_id');
    if (sessionId) await followPurchase(billing, sessionId);
    if (params.get('cancelled')) show('notice', 'Checkout ended without a payment: nothing was charged.');
    // Shown once: a reload must not announce the same payment again.
    if (sessionId || params.get('cancelled')) history.replaceState(null, '', location.pathname);
    await Promise.all([
      refreshBalance(billing),
      showPackages(billing),
      refreshLedger(billing),
      billing.caps().then(renderCaps),
      billing.autoRecharge().then(renderAutoRecharge),
    ]);
  } catch (err) {
    fail(err);
  }
  document.body.dataset.ready = 'true';
}

main();
