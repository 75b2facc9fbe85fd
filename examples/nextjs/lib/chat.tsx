'use client';
// The student's chat (useChat), its turns sent to the app's /api/chat with their access token. A
// turn the gateway refused shows its sentence; when it was for credits, with a link to buy more.
import { useChat } from '@ai-sdk/react';
import { DefaultChatTransport } from 'ai';
import { type FormEvent, useState } from 'react';

export function Chat(
  { token, api = '/api/chat', buyHref = '/credits' }: {
    /** The signed-in student's current access token (supabase-js refreshes it). */
    token: () => Promise<string | undefined>;
    api?: string;
    buyHref?: string;
  },
) {
  const [transport] = useState(() =>
    new DefaultChatTransport({
      api,
      // Signed out, no header: the route answers "Sign in first.", which the page shows.
      headers: async (): Promise<Record<string, string>> => {
        const t = await token();
        return t ? { authorization: `Bearer ${t}` } : {};
      },
    })
  );
  const { messages, sendMessage, status, error } = useChat({ transport });
  const [input, setInput] = useState('');
  const busy = status === 'submitted' || status === 'streaming';

  const send = (e: FormEvent<HTMLFormElement>) => {
    e.preventDefault();
    if (!input.trim() || busy) return;
    sendMessage({ text: input });
    setInput('');
  };

  return (
    <section aria-label='Chat'>
      {messages.map((m) => (
        <p key={m.id} data-role={m.role}>
          <strong>{m.role === 'user' ? 'You' : 'AI'}:</strong>{' '}
          {m.parts.map((p) => (p.type === 'text' ? p.text : '')).join('')}
        </p>
      ))}
      {error && (
        <p role='alert'>
          {error.message} {/not enough credits/i.test(error.message) && <a href={buyHref}>Buy credits</a>}
        </p>
      )}
      <form onSubmit={send}>
        <input value={input} onChange={(e) => setInput(e.target.value)} placeholder='Ask anything' />
        <button type='submit' disabled={busy}>Send</button>
      </form>
    </section>
  );
}
