// Sign in with supabase-js, then: the balance (the credits function, through the package),
// the balance and ledger read straight from the billing_api views (RLS shows only the user's
// own rows), buying a package through Checkout, and spending credits on a call through the
// metered AI gateway (a browser never reports usage: the gateway charges what the provider
// reported; a product's own server reports other usage with a server key).
import type { Session } from '@supabase/supabase-js';
import type { ApiError, Balance, CreditPackage } from '@scholarlink/billing-client';
import { type FormEvent, useCallback, useEffect, useState } from 'react';
import { billing, billingApi, supabase } from './supabase.ts';

/** A ledger row as the view gives it; numerics selected `::text` so they stay exact. */
interface LedgerRow {
  id: number;
  created_at: string;
  kind: string;
  amount: string;
  balance_after: string;
}

/** An exact decimal string without trailing zeros ("100.500000" → "100.5"); never through a float. */
const exact = (s: string) => (s.includes('.') ? s.replace(/\.?0+$/, '') : s);

// The client answers { data, error } as supabase-js does; a refusal is an error, never a throw.
const describe = (e: ApiError | Error) => ('code' in e ? `${e.code}: ${e.message}` : e.message);

export function App() {
  const [session, setSession] = useState<Session | null>(null);
  useEffect(() => {
    supabase.auth.getSession().then(({ data }) => setSession(data.session));
    const { data } = supabase.auth.onAuthStateChange((_event, s) => setSession(s));
    return () => data.subscription.unsubscribe();
  }, []);
  return session ? <Wallet email={session.user.email ?? ''} /> : <SignIn />;
}

function SignIn() {
  const [error, setError] = useState('');
  async function submit(e: FormEvent<HTMLFormElement>) {
    e.preventDefault();
    const form = new FormData(e.currentTarget);
    const { error } = await supabase.auth.signInWithPassword({
      email: String(form.get('email')),
      password: String(form.get('password')),
    });
    setError(error ? error.message : '');
  }
  return (
    <form id='sign-in' onSubmit={submit}>
      <h1>Sign in</h1>
      <input id='email' name='email' type='email' placeholder='Email' required />
      <input id='password' name='password' type='password' placeholder='Password' required />
      <button type='submit'>Sign in</button>
      {error && <p id='sign-in-error' role='alert'>{error}</p>}
    </form>
  );
}

function Wallet({ email }: { email: string }) {
  const [balance, setBalance] = useState<Balance | null>(null);
  const [viewBalance, setViewBalance] = useState<string | null>(null);
  const [ledger, setLedger] = useState<LedgerRow[] | null>(null);
  const [packages, setPackages] = useState<CreditPackage[]>([]);
  const [error, setError] = useState('');

  const refresh = useCallback(async () => {
    try {
      const [fromFunction, fromView, entries] = await Promise.all([
        billing.balance(),
        billingApi().from('balance').select('available::text').maybeSingle(),
        billingApi().from('ledger_entries')
          .select('id, created_at, kind, amount::text, balance_after::text')
          .order('id', { ascending: false })
          .limit(20),
      ]);
      if (fromFunction.error) return setError(describe(fromFunction.error));
      if (fromView.error) throw new Error(fromView.error.message);
      if (entries.error) throw new Error(entries.error.message);
      setBalance(fromFunction.data);
      setViewBalance(exact(fromView.data?.available ?? '0'));
      setLedger(entries.data as LedgerRow[]);
      setError('');
    } catch (e) {
      setError(describe(e instanceof Error ? e : new Error(String(e))));
    }
  }, []);
  useEffect(() => {
    refresh();
    billing.packages().then(({ data, error }) => (error ? setError(describe(error)) : setPackages(data.items)));
  }, [refresh]);

  async function buy(packageId: string) {
    const { data, error } = await billing.startCheckout({ package_id: packageId, success_url: location.href }).done;
    if (error) return setError(describe(error));
    if (data.url) location.assign(data.url);
  }
  async function askAi() {
    // OpenAI's Chat Completions shape; the student's own token is the API key (supabase-js sends it).
    const { error } = await supabase.functions.invoke('ai/v1/chat/completions', {
      body: { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Give me one tip for my essay.' }] },
    });
    if (error) return setError(describe(error));
    await refresh();
  }

  return (
    <main data-ready={ledger !== null}>
      <header>
        Signed in as <span id='who'>{email}</span>{' '}
        <button id='sign-out' type='button' onClick={() => supabase.auth.signOut()}>Sign out</button>
      </header>
      {error && <p id='error' role='alert'>{error}</p>}
      <section>
        <h2>Credits</h2>
        <p>
          Available: <strong id='available'>{balance?.available ?? '…'}</strong> (held {balance?.held ?? '…'})
        </p>
        <p>
          From the <code>billing_api.balance</code> view: <span id='view-available'>{viewBalance ?? '…'}</span>
        </p>
        <button id='ask-ai' type='button' onClick={askAi}>Ask the AI (metered by the gateway)</button>
      </section>
      <section>
        <h2>Buy credits</h2>
        {packages.map((p) => (
          <button key={p.id} type='button' data-package={p.id} onClick={() => buy(p.id)}>
            {p.name}: {p.credits} credits for {(p.price_cents / 100).toFixed(2)} {p.currency.toUpperCase()}
          </button>
        ))}
      </section>
      <section>
        <h2>Ledger</h2>
        <table id='ledger'>
          <tbody>
            {ledger?.map((r) => (
              <tr key={r.id} data-entry={r.id}>
                <td>{new Date(r.created_at).toLocaleString()}</td>
                <td>{r.kind}</td>
                <td className='amount'>{exact(r.amount)}</td>
                <td>{exact(r.balance_after)}</td>
              </tr>
            ))}
          </tbody>
        </table>
        {ledger?.length === 0 && <p>No activity yet.</p>}
      </section>
    </main>
  );
}
