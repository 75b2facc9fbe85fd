'use client';
// /credits: the student signs in (your app's Supabase Auth; here email and password), then sees
// their balance, the packages with their prices (bought through Stripe Checkout), and an AI
// answer streamed through /api/ask.
import { type FormEvent, useEffect, useState } from 'react';
import type { Session } from '@supabase/supabase-js';
import type { Balance, CreditPackage } from '@scholarlink/billing-client';
import { browserClients, buyCredits, confirmPurchase } from '../../lib/billing';

const price = (p: CreditPackage) =>
  new Intl.NumberFormat('en', { style: 'currency', currency: p.currency })
    .format(p.price_cents / 100);

// One Supabase client for the page (two would share one session's storage).
const { supabase, billing } = browserClients(
  process.env.NEXT_PUBLIC_SUPABASE_URL!,
  process.env.NEXT_PUBLIC_SUPABASE_ANON_KEY!,
);

export default function CreditsPage() {
  const [session, setSession] = useState<Session | null>(null);
  const [balance, setBalance] = useState<Balance | null>(null);
  const [packages, setPackages] = useState<CreditPackage[]>([]);
  const [notice, setNotice] = useState('');
  const [answer, setAnswer] = useState('');

  // supabase-js keeps the session (in localStorage) and refreshes its token.
  useEffect(() => {
    supabase.auth.getSession().then(({ data }) => setSession(data.session));
    const { data } = supabase.auth.onAuthStateChange((_event, s) => setSession(s));
    return () => data.subscription.unsubscribe();
  }, []);

  const refresh = async () => {
    const [b, p] = await Promise.all([billing.balance(), billing.packages()]);
    if (b.error) setNotice(b.error.message);
    if (b.data) setBalance(b.data);
    if (p.data) setPackages(p.data.items);
  };
  const userId = session?.user.id;
  useEffect(() => {
    if (!userId) return;
    const sessionId = new URLSearchParams(location.search).get('session_id');
    if (sessionId) history.replaceState(null, '', location.pathname); // a reload does not poll again
    (sessionId ? confirmPurchase(billing, sessionId).then(setNotice) : Promise.resolve()).then(refresh);
  }, [userId]);

  const signIn = async (e: FormEvent<HTMLFormElement>) => {
    e.preventDefault();
    const form = new FormData(e.currentTarget);
    const { error } = await supabase.auth.signInWithPassword({
      email: String(form.get('email')),
      password: String(form.get('password')),
    });
    setNotice(error ? error.message : '');
  };

  const ask = async (prompt: string) => {
    const token = (await supabase.auth.getSession()).data.session?.access_token;
    const res = await fetch('/api/ask', {
      method: 'POST',
      headers: {
        authorization: `Bearer ${token}`,
        'content-type': 'application/json',
      },
      body: JSON.stringify({ prompt }),
    });
    if (!res.ok || !res.body) {
      return setNotice(
        (await res.json()).error?.message ?? 'The AI could not answer.',
      );
    }
    setAnswer('');
    // Server-sent events: each `data:` line a chunk; the answer's text is in choices[0].delta.content.
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    for (let rest = '';;) {
      const { done, value } = await reader.read();
      if (done) break;
      const lines = (rest + value).split('\n');
      rest = lines.pop() ?? '';
      for (const line of lines) {
        if (!line.startsWith('data: ') || line === 'data: [DONE]') continue;
        const text = JSON.parse(line.slice(6)).choices?.[0]?.delta?.content;
        if (text) setAnswer((a) => a + text);
      }
    }
    await refresh();
  };

  if (!session) {
    return (
      <main>
        <h1>Sign in</h1>
        <form onSubmit={signIn}>
          <input name='email' type='email' placeholder='Email' required />
          <input
            name='password'
            type='password'
            placeholder='Password'
            required
          />
          <button type='submit'>Sign in</button>
        </form>
        {notice && <p role='alert'>{notice}</p>}
      </main>
    );
  }
  return (
    <main>
      <h1>Your credits: {balance?.available ?? '…'}</h1>
      <p>
        Signed in as {session.user.email} <button onClick={() => supabase.auth.signOut()}>Sign out</button>{' '}
        <a href='/chat'>Chat with the AI</a>
      </p>
      {notice && <p role='status'>{notice}</p>}
      {packages.map((p) => (
        <button
          key={p.id}
          onClick={() =>
            buyCredits(billing, p.id, `${location.origin}/credits`).then(
              setNotice,
            )}
        >
          Buy {p.name}: {p.credits} credits{Number(p.bonus_credits) > 0 && ` + ${p.bonus_credits} bonus`} for {price(p)}
        </button>
      ))}
      <form
        onSubmit={(e) => {
          e.preventDefault();
          ask(String(new FormData(e.currentTarget).get('prompt')));
        }}
      >
        <input name='prompt' defaultValue='What is a prime number?' />
        <button type='submit'>Ask</button>
      </form>
      <p>{answer}</p>
    </main>
  );
}
