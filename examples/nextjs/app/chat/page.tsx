'use client';
// /chat: a chat with the AI (lib/chat.tsx and app/api/chat/route.ts), each turn paid from the
// signed-in student's credits through the metered gateway. Sign in on /credits first.
import { Chat } from '../../lib/chat';
import { browserClients } from '../../lib/billing';

const { supabase } = browserClients(
  process.env.NEXT_PUBLIC_SUPABASE_URL!,
  process.env.NEXT_PUBLIC_SUPABASE_ANON_KEY!,
);
const accessToken = async () => (await supabase.auth.getSession()).data.session?.access_token;

export default function ChatPage() {
  return (
    <main>
      <h1>Ask the AI</h1>
      <Chat token={accessToken} />
    </main>
  );
}
