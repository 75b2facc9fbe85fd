'use client';
// /credits: the signed-in student's balance, the packages (bought through Stripe Checkout), and an
// AI answer streamed through /api/ask. Sign-in itself is your app's Supabase Auth, as usual.
import { useEffect, useMemo, useState } from 'react';
import type { Balance, CreditPackage } from '@scholarlink/billing-client';
import { browserClients, buyCredits, confirmPurchase } from '../../lib/billing';

export default function CreditsPage() {
  const { supabase, billing } = useMemo(
    () =>
      browserClients(
        process.env.NEXT_PUBLIC_SUPABASE_URL!,
        process.env.NEXT_PUBLIC_SUPABASE_ANON_KEY!,
      ),
    [],
  );
  const [balance, setBalance] = useState<Balance | null>(null);
  const [packages, setPackages] = useState<CreditPackage[]>([]);
  const [notice, setNotice] = useState('');
  const [answer, setAnswer] = useState('');

  const refresh = async () => {
    const [b, p] = await Promise.all([billing.balance(), billing.packages()]);
    if (b.data) setBalance(b.data);
    if (p.data) setPackages(p.data.items);
  };
  useEffect(() => {
    const sessionId = new URLSearchParams(location.search).get('session_id');
    (sessionId ? confirmPurchase(billing, sessionId).then(setNotice) : Promise.resolve()).then(refresh);
  }, [billing]);

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

  return (
    <main>
      <h1>Your credits: {balance?.available ?? '…'}</h1>
      {notice && <p role='status'>{notice}</p>}
      {packages.map((p) => (
        <button
          key={p.id}
          onClick={() =>
            buyCredits(billing, p.id, `${location.origin}/credits`).then(
              setNotice,
            )}
        >
          Buy {p.name} ({p.credits} credits)
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
