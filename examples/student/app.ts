// The example student page: sign-in (Supabase Auth's password grant, or a pasted access token),
// balance, packages (bought through hosted Checkout), the purchase polled after the redirect
// back, recent ledger entries in words (ledger-words.ts), what the student can spend and what
// expires when (balance.ts), spend controls, a metered AI job priced before it starts, with
// progress and cancel, the latest calls through the AI gateway (ai-calls.ts), where the credits
// went and how long they last (usage.ts), the organisations that fund the student (orgs.ts),
// and the balance and lots at an earlier time (as-of.ts). Everything goes through the typed
// client over supabase-js, but for the gateway's own routes (ask.ts, ai-calls.ts: plain fetch
// with the student's token as the API key).
/// <reference lib="dom" />
import { createClient, type SupabaseClient } from '@supabase/supabase-js';
import {
  type AutoRecharge,
  type BillingClient,
  createBillingClient,
  type CreditPackage,
  isBillingError,
  type Job,
  type LedgerEntry,
  type SpendCap,
} from '../../client/mod.ts';
import { jobPrice, money, type RateCard, roundedCredits } from './credits.ts';
import { bonusText, got, packageName, studentMessage } from './messages.ts';
import { invitationNotice, invitationToken, showOrgs } from './orgs.ts';
import { showUsage } from './usage.ts';
import { refreshBalance } from './balance.ts';
import { entryWords } from './ledger-words.ts';
import { askStreaming } from './ask.ts';
import { showAiCalls } from './ai-calls.ts';
import { buyGift, giftText, wireRedeem } from './codes.ts';
import { followPlan, showPlans } from './plans.ts';
import { wireAsOf } from './as-of.ts';
import { apiBase } from './api-base.ts';

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const store = globalThis.sessionStorage;
const params = new URLSearchParams(location.search);

// The page is told where the API is by the server that serves it (api-base.ts), or by ?api= (and
// ?key= for a project's publishable key); both are kept for the tab, so they survive the round
// trip through Checkout.
for (const name of ['api', 'key']) if (params.get(name)) store.setItem(name, params.get(name) as string);
const api = apiBase(
  store.getItem('api'),
  document.querySelector<HTMLMetaElement>('meta[name="scholarlink-api"]')?.content,
);
const apiKey = store.getItem('key') ?? 'local-anon-key';
const isLocalStack = /^http:\/\/(127\.0\.0\.1|localhost)[:/]/.test(api);

// Supabase Auth's session lives in this tab's storage; supabase-js refreshes it.
const auth = createClient(api, apiKey, {
  auth: { storage: store, persistSession: true, autoRefreshToken: true, detectSessionInUrl: false },
});

/** The student's client: a pasted token wins (the local stack without Auth), else the Auth session. */
async function signedInClient(): Promise<SupabaseClient | null> {
  const pasted = store.getItem('token');
  if (pasted) return createClient(api, apiKey, { accessToken: () => Promise.resolve(pasted) });
  const { data } = await auth.auth.getSession();
  return data.session ? auth : null;
}

/** The student's access token, for the AI gateway (its API key): a pasted one, else the session's. */
async function accessToken(): Promise<string | null> {
  return store.getItem('token') ?? (await auth.auth.getSession()).data.session?.access_token ?? null;
}

/**
 * The student's latest calls through the gateway, read with their token (its API key). A stream
 * is settled just after its last byte: a call still answering is read again a moment later.
 */
async function refreshAiCalls(tries = 5) {
  const token = await accessToken();
  if (!token || !(await showAiCalls(api, token, $('ai-calls'))) || tries <= 1) return;
  setTimeout(() => refreshAiCalls(tries - 1).catch(() => {}), 1000);
}

/** The ask box: the hold while the answer streams, then the exact charge; the balance after. */
function wireAsk(billing: BillingClient) {
  $('ask').onclick = async () => {
    const token = await accessToken();
    if (!token) return;
    const status = $('ask-status'), answer = $('ask-answer');
    $<HTMLButtonElement>('ask').disabled = true;
    answer.textContent = '';
    status.textContent = 'Asking…';
    try {
      await askStreaming(api, token, $<HTMLTextAreaElement>('ask-prompt').value, {
        held: (credits) => status.textContent = `Holding up to ${roundedCredits(credits)} credits while it answers…`,
        text: (more) => answer.textContent += more,
        charged: (credits, t) =>
          status.textContent =
            `Charged ${credits} credits (${t.input} tokens in, ${t.output} out); the rest was released.`,
      });
      await refreshBalance(billing);
      await refreshLedger(billing);
    } catch (err) {
      status.textContent = err instanceof Error ? err.message : 'The AI could not answer.';
    } finally {
      $<HTMLButtonElement>('ask').disabled = false;
      // Answered, failed or refused, the call is on the list.
      await refreshAiCalls().catch(() => {});
    }
  };
}

/** The AI job's model and answer length: what the page asks for and prices. */
const job = { model: 'gpt-4o-mini', maxTokens: 256 };

function show(id: 'error' | 'notice', text: string | null) {
  const el = $(id);
  (id === 'error' ? $('error-text') : el).textContent = text ?? '';
  el.hidden = !text;
  if (id === 'error') {
    $('error-action').hidden = $('error-details').hidden = true;
    if (!text) $('retry').hidden = $('sign-in-again').hidden = true;
  }
}

/**
 * Signs out and back to the sign-in form: the Auth session ends (its refresh token stops
 * working) and everything this tab kept about the student is forgotten, even when Auth cannot
 * be reached; only where the API is stays.
 */
async function signOut() {
  if (!store.getItem('token')) await auth.auth.signOut().catch(() => {});
  for (const name of Object.keys(store)) if (name !== 'api' && name !== 'key') store.removeItem(name);
  location.assign(`${location.origin}${location.pathname}`);
}

/** Where the error box lives when no button caused the error: under the page's title. */
const errorHome = document.createComment('error box');

/**
 * Shows what went wrong in a student's words, with a way on: a link when there is one ("Buy
 * credits"), "Sign in again" for a bad or expired token (401, which will not get better), and
 * "Try again" when `retry` is given. The code and request id stay behind "Details" for support.
 * The box appears next to the button that caused it (`near`), so a phone shows it where the
 * student is looking, not at the top of a long page.
 */
function fail(err: unknown, retry?: () => void, near?: HTMLElement) {
  const box = $('error');
  if (!errorHome.parentNode) box.before(errorHome);
  if (near) (near.closest('.row, form') ?? near).after(box);
  else errorHome.after(box);
  const message = studentMessage(err, { api, origin: location.origin });
  show('error', message.text);
  $('error-action').hidden = !message.action;
  if (message.action) {
    $<HTMLAnchorElement>('error-link').textContent = message.action.label;
    $<HTMLAnchorElement>('error-link').href = message.action.href;
  }
  $('error-details').hidden = false;
  $('error-details-text').textContent = message.details;
  const signedOut = isBillingError(err) && err.status === 401;
  $('sign-in-again').hidden = !signedOut;
  $('retry').hidden = signedOut || !retry;
  if (retry) $('retry').onclick = retry;
}

const periodWord = { day: 'Today', week: 'This week', month: 'This month' } as const;

function renderCaps(caps: SpendCap[]) {
  const cap = caps.find((c) => c.model === null);
  $('cap-status').textContent = cap
    ? `${periodWord[cap.period]}: ${roundedCredits(cap.spent)} of ${roundedCredits(cap.cap)} credits spent (resets ${
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
      const period = $<HTMLSelectElement>('cap-period').value as SpendCap['period'];
      renderCaps((await got(billing.setCap({ period, amount }))).items);
    } catch (err) {
      fail(err, undefined, $('cap-save'));
    }
  };
  $('cap-save').onclick = () => save($<HTMLInputElement>('cap-amount').value.trim());
  $('cap-remove').onclick = () => save(null);
}

/** The packages on sale, once loaded: the page names them ("the Mini package"), never by id. */
let onSale: CreditPackage[] = [];
let lastRecharge: AutoRecharge | null = null;

function renderAutoRecharge(a: AutoRecharge) {
  lastRecharge = a;
  const reasons: Record<string, string> = {
    card_declined: 'your bank declined the last recharge',
    authentication_required: 'your bank asked to confirm the last recharge',
  };
  $('recharge-status').textContent = a.enabled
    ? `On: ${packageName(a.package_id ?? '', onSale)} when available falls below ${
      roundedCredits(a.threshold ?? '0')
    } credits.`
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
        await got(billing.setAutoRecharge(
          enabled
            ? {
              enabled,
              package_id: $<HTMLSelectElement>('recharge-package').value,
              threshold: $<HTMLInputElement>('recharge-threshold').value.trim(),
            }
            : { enabled },
        )),
      );
    } catch (err) {
      fail(err, undefined, $(enabled ? 'recharge-on' : 'recharge-off'));
    }
  };
  $('recharge-on').onclick = () => set(true);
  $('recharge-off').onclick = () => set(false);
}

/** Who paid an entry, when it was not the student: their organisation, by name. */
async function payers(billing: BillingClient, entries: LedgerEntry[]): Promise<Map<string, string>> {
  if (entries.every((e) => e.paid_by === 'self')) return new Map();
  const { items } = await got(billing.orgs());
  return new Map(items.map((o) => [o.id, o.name]));
}

async function refreshLedger(billing: BillingClient) {
  const { items: entries } = await got(billing.ledger({ limit: 10 }));
  const orgNames = await payers(billing, entries);
  const list = $('ledger');
  list.replaceChildren();
  if (entries.length === 0) {
    list.innerHTML = '<li class="muted">No activity yet: buy a package to start.</li>';
    return;
  }
  for (const e of entries) {
    const li = document.createElement('li');
    const shown = roundedCredits(e.amount.replace(/^-/, ''));
    // The words say which way a tiny amount went; otherwise a sign does.
    const sign = shown === 'less than 0.01' ? '' : e.amount.startsWith('-') ? '−' : '+';
    const paidBy = e.paid_by === 'self' ? '' : ` · paid by ${orgNames.get(e.paid_by.org_id) ?? 'your organisation'}`;
    li.textContent = `${new Date(e.created_at).toLocaleString()} · ${entryWords(e)} · ${sign}${shown}${paidBy}`;
    list.append(li);
  }
}

async function showPackages(billing: BillingClient) {
  const { items: packages } = await got(billing.packages());
  onSale = packages;
  if (lastRecharge) renderAutoRecharge(lastRecharge);
  $('recharge-package').replaceChildren(
    ...packages.map((p) => new Option(`${p.name} · ${money(p.price_cents, p.currency)}`, p.id)),
  );
  const box = $('packages');
  box.replaceChildren();
  if (packages.length === 0) box.innerHTML = '<span class="muted">No packages on sale right now.</span>';
  for (const p of packages) {
    const card = document.createElement('div');
    card.className = 'package';
    const bonus = bonusText(p) ? ` ${bonusText(p)}` : '';
    card.innerHTML = `<strong></strong><div class="muted"></div>`;
    (card.querySelector('strong') as HTMLElement).textContent = `${p.name} · ${money(p.price_cents, p.currency)}`;
    (card.querySelector('.muted') as HTMLElement).textContent = `${roundedCredits(p.credits)} credits${bonus}`;
    const buy = document.createElement('button');
    buy.textContent = 'Buy';
    buy.dataset.package = p.id;
    buy.onclick = async () => {
      buy.disabled = true;
      buy.textContent = 'Opening checkout…';
      try {
        const here = `${location.origin}${location.pathname}`;
        const session = await got(
          billing.startCheckout({
            package_id: p.id,
            success_url: here,
            cancel_url: `${here}?cancelled=1`,
            save_card: $<HTMLInputElement>('save-card').checked,
          }).done,
        );
        if (session.url) location.assign(session.url);
      } catch (err) {
        fail(err, undefined, buy);
        buy.disabled = false;
        buy.textContent = 'Buy';
      }
    };
    const give = document.createElement('button');
    give.className = 'secondary';
    give.textContent = 'Give';
    give.dataset.gift = p.id;
    give.onclick = async () => {
      give.disabled = true;
      try {
        await buyGift(billing, p.id);
      } catch (err) {
        fail(err, undefined, give);
        give.disabled = false;
      }
    };
    card.append(buy, give);
    box.append(card);
  }
}

/** Back from Checkout: the purchase is polled until Stripe's answer is in (webhooks may lag). */
async function followPurchase(billing: BillingClient, sessionId: string) {
  show('notice', 'Confirming your payment…');
  for (let i = 0; i < 30; i++) {
    const p = await got(billing.purchase(sessionId));
    if (p.status === 'paid' && p.gift) {
      show('notice', giftText(p) ?? 'Payment received: your gift code is on its way by email.');
      return;
    }
    if (p.status === 'paid') {
      const bonus = bonusText(p) ? ` ${bonusText(p)}` : '';
      show('notice', `Payment received: ${roundedCredits(p.credits)} credits${bonus} added.`);
      return;
    }
    if (p.status !== 'pending') {
      show('notice', null);
      show('error', 'The payment did not go through: nothing was charged.');
      return;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
  show('notice', 'Your payment is still being confirmed; the balance will update shortly.');
}

/** A job's state in a student's words. */
const jobWords: Record<Job['status'], string> = {
  queued: 'Waiting to start',
  processing: 'Working',
  completed: 'Done',
  failed: 'Failed: the held credits were released',
  cancelled: 'Cancelled: you pay only for what it used',
};

/** The job's price, from the model's rate card (read through the Data API), shown before it starts. */
async function wirePrice(supabase: SupabaseClient) {
  const { data, error } = await supabase.schema('billing_api').from('rate_cards')
    .select('usd_per_million_input::text, usd_per_million_output::text, markup::text')
    .eq('model', job.model).maybeSingle<RateCard>();
  if (error || !data) {
    $('job-price').textContent = 'The price could not be loaded.';
    throw new Error(error?.message ?? `no rate card for ${job.model}`);
  }
  const prompt = $<HTMLTextAreaElement>('prompt');
  const render = () => {
    const most = jobPrice(data, prompt.value, job.maxTokens);
    $('job-price').textContent = `Costs at most ${
      roundedCredits(most)
    } credits: that much is held while it runs, you pay for what it uses, and the rest is released.`;
  };
  prompt.oninput = render;
  render();
}

function wireJobs(billing: BillingClient) {
  const start = $<HTMLButtonElement>('start-job');
  const cancel = $<HTMLButtonElement>('cancel-job');
  const bar = $<HTMLProgressElement>('job-progress');
  const status = $('job-status');
  let running: { id: string; abort: AbortController; held: string } | null = null;
  const render = (j: Job) => {
    bar.value = j.progress;
    status.textContent = j.status === 'processing' ? `${jobWords[j.status]} · ${j.progress}%` : jobWords[j.status];
  };
  start.onclick = async () => {
    show('error', null);
    start.disabled = true;
    bar.hidden = false;
    bar.value = 0;
    $('job-result').textContent = '';
    const pending = billing.createJob({
      type: 'ai_completion',
      input: { model: job.model, prompt: $<HTMLTextAreaElement>('prompt').value, max_tokens: job.maxTokens },
    });
    status.textContent = 'Starting…';
    try {
      const accepted = await got(pending.done);
      running = { id: accepted.job_id, abort: new AbortController(), held: '' };
      cancel.hidden = false;
      status.textContent = jobWords.queued;
      running.held = (await refreshBalance(billing)).held; // the job's price is now held
      const done = await got(billing.watchJob(accepted.job_id, { signal: running.abort.signal, onProgress: render }));
      render(done);
      if (done.status === 'completed') {
        $('job-result').textContent = String((done.result as { text?: string })?.text ?? '');
      }
      await Promise.all([refreshBalance(billing), refreshLedger(billing)]);
    } catch (err) {
      if (!(isBillingError(err) && err.code === 'ABORTED')) {
        fail(err, undefined, start);
        // Refused (402: not enough credits, or over the limit): it never started.
        if (!running) {
          status.textContent = 'Not started';
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
      const { held } = running;
      const cancelled = await got(billing.cancelJob(running.id));
      running.abort.abort();
      render(cancelled);
      // A running job's hold waits for its worker's report (what the provider already answered
      // is charged): the balance is read again until the hold is freed (at most 30 s).
      for (let i = 0; i < 30 && (await refreshBalance(billing)).held === held; i++) {
        await new Promise((r) => setTimeout(r, 1_000));
      }
      await refreshLedger(billing);
    } catch (err) {
      fail(err, undefined, cancel);
    } finally {
      cancel.disabled = false;
    }
  };
}

/** The sign-in form: Supabase Auth's password grant, or (locally, without Auth) a pasted token. */
function showSignIn() {
  $('signin').hidden = false;
  $<HTMLFormElement>('password-form').onsubmit = async (e) => {
    e.preventDefault();
    show('error', null);
    const button = $<HTMLButtonElement>('sign-in');
    button.disabled = true;
    const { error } = await auth.auth.signInWithPassword({
      email: $<HTMLInputElement>('email').value.trim(),
      password: $<HTMLInputElement>('password').value,
    });
    button.disabled = false;
    if (!error) return location.reload();
    // A project without Supabase Auth (a bare local stack) answers 404, or nothing at all.
    const unavailable = error.status === 404 || error.name === 'AuthRetryableFetchError';
    show('error', unavailable ? 'Password sign-in is not available here: paste an access token below.' : error.message);
  };
  $<HTMLFormElement>('token-form').onsubmit = (e) => {
    e.preventDefault();
    store.setItem('token', $<HTMLInputElement>('token').value.trim());
    location.reload();
  };
}

/** What each part shows when it could not be loaded, instead of "…" or "Loading…" forever. */
const unavailable = {
  balance: () => ['spendable', 'balance', 'available', 'held'].forEach((id) => $(id).textContent = '—'),
  packages: () => $('packages').textContent = 'Packages could not be loaded.',
  ledger: () => $('ledger').innerHTML = '<li class="muted">Activity could not be loaded.</li>',
  caps: () => $('cap-status').textContent = 'The limit could not be loaded.',
  recharge: () => $('recharge-status').textContent = 'Auto-recharge could not be loaded.',
  price: () => {},
  usage: () => $('runway').textContent = 'Your usage could not be loaded.',
  aiCalls: () => $('ai-calls').textContent = 'Your AI calls could not be loaded.',
  plans: () => $('plan-body').textContent = 'Plans could not be loaded.',
  orgs: () => {
    $('orgs').hidden = false;
    $('orgs').querySelector('.orgs-body')!.textContent = 'Organisations could not be loaded.';
  },
};

/** Loads every part at once; a part that fails says so, and the first failure can be retried. */
async function loadAll(billing: BillingClient, supabase: SupabaseClient) {
  show('error', null);
  const parts = {
    balance: () => refreshBalance(billing),
    packages: () => showPackages(billing),
    ledger: () => refreshLedger(billing),
    caps: () => got(billing.caps()).then((caps) => renderCaps(caps.items)),
    recharge: () => got(billing.autoRecharge()).then(renderAutoRecharge),
    price: () => wirePrice(supabase),
    orgs: () => showOrgs(billing, $('orgs'), fail),
    usage: () => showUsage(billing, $('usage')),
    aiCalls: () => refreshAiCalls(),
    plans: () => showPlans(billing, $('plan-body'), fail, (text) => show('notice', text)),
  };
  const names = Object.keys(parts) as (keyof typeof parts)[];
  const results = await Promise.allSettled(names.map((name) => parts[name]()));
  results.forEach((r, i) => r.status === 'rejected' && unavailable[names[i]]());
  const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (!failed) return;
  fail(failed.reason, () => loadAll(billing, supabase));
  // Signed out (a bad or expired token): nothing below can work until the student signs in again.
  $('app').hidden = isBillingError(failed.reason) && failed.reason.status === 401;
}

async function main() {
  $('sign-out').onclick = signOut;
  $('sign-in-again').onclick = signOut;
  $('standin-note').hidden = !isLocalStack;
  const supabase = await signedInClient();
  if (!supabase) {
    showSignIn();
    // From an invitation's link: which organisation invites them, and to sign in first.
    const token = invitationToken();
    if (token) $('signin').prepend(await invitationNotice(createBillingClient(auth), token));
    document.body.dataset.ready = 'true';
    return;
  }
  const billing = createBillingClient(supabase);
  $('app').hidden = false;
  $('sign-out').hidden = false;
  wireJobs(billing);
  wireAsk(billing);
  wireCaps(billing);
  wireAutoRecharge(billing);
  wireRedeem(billing, (text) => show('notice', text), fail, () => loadAll(billing, supabase));
  wireAsOf(billing, { fail, clear: () => show('error', null) });
  const sessionId = params.get('session_id');
  if (sessionId) await followPurchase(billing, sessionId).catch((err) => fail(err));
  if (params.get('plan')) await followPlan(billing, (text) => show('notice', text)).catch((err) => fail(err));
  // Hosted Checkout sends a student back here whether they cancelled or their card was declined.
  if (params.get('cancelled')) show('notice', 'Checkout ended without a payment: nothing was charged.');
  // Shown once: a reload must not announce the same payment again.
  if (sessionId || params.get('plan') || params.get('cancelled')) history.replaceState(null, '', location.pathname);
  await loadAll(billing, supabase);
  document.body.dataset.ready = 'true';
}

main();
