// supabase-js against the local stand-ins for Supabase Auth and the Data API, as a web app uses
// them: password sign-in whose token the functions accept, the user, refresh and sign-out; and
// reads of the billing_api views that RLS limits to the signed-in user's rows.
import assert from 'node:assert/strict';
import { createClient, type SupabaseClient } from '@supabase/supabase-js';
import { createBillingClient } from '../../client/mod.ts';
import { fund, must, supabaseUrl, testDb } from '../support/helpers.ts';

const client = () =>
  createClient(supabaseUrl, 'local-anon-key', { auth: { persistSession: false, autoRefreshToken: false } });

async function passwordUser(password: string, confirmed = true) {
  const email = `sjs-${crypto.randomUUID().slice(0, 8)}@example.com`;
  const [{ id }] = await testDb`
    insert into auth.users (id, email, encrypted_password, email_confirmed_at)
    values (gen_random_uuid(), ${email}, extensions.crypt(${password}, extensions.gen_salt('bf')),
            ${confirmed ? new Date() : null})
    returning id`;
  return { id: id as string, email };
}

async function signedIn(password = 'a long passphrase') {
  const user = await passwordUser(password);
  const supabase = client();
  const { data, error } = await supabase.auth.signInWithPassword({ email: user.email, password });
  assert.equal(error, null);
  assert.ok(data.session);
  return { ...user, supabase, session: data.session };
}

const ledgerIds = async (supabase: SupabaseClient) => {
  const { data, error, count } = await supabase.schema('billing_api').from('ledger_entries')
    .select('id', { count: 'exact' }).order('id');
  assert.equal(error, null);
  return { ids: (data ?? []).map((r) => String(r.id)), count };
};

Deno.test('a password sign-in gives a session the functions accept; getUser answers for it', async () => {
  const alice = await signedIn();
  assert.equal(alice.session.user.id, alice.id);
  assert.equal(alice.session.user.email, alice.email);
  const { data } = await alice.supabase.auth.getUser();
  assert.equal(data.user?.id, alice.id);
  await fund(alice.id, '12.25');
  const balance = await must(createBillingClient(alice.supabase).balance());
  assert.equal(balance.available, '12.25');
  const [row] = await testDb`select last_sign_in_at from auth.users where id = ${alice.id}`;
  assert.ok(row.last_sign_in_at, 'the sign-in is recorded as Supabase Auth records it');
});

Deno.test('a wrong password and an unconfirmed email are refused with Supabase Auth codes', async () => {
  const user = await passwordUser('right one');
  const wrong = await client().auth.signInWithPassword({ email: user.email, password: 'wrong one' });
  assert.equal(wrong.error?.status, 400);
  assert.equal(wrong.error?.code, 'invalid_credentials');
  const pending = await passwordUser('right one', false);
  const unconfirmed = await client().auth.signInWithPassword({ email: pending.email, password: 'right one' });
  assert.equal(unconfirmed.error?.code, 'email_not_confirmed');
});

Deno.test('RLS: each user reads only their own balance and ledger rows from billing_api; anon reads nothing', async () => {
  const [alice, bob] = [await signedIn(), await signedIn()];
  await fund(alice.id, '3.5');
  await fund(alice.id, '1.25');
  await fund(bob.id, '9');
  const mine = await ledgerIds(alice.supabase);
  const [{ n }] = await testDb`select count(*)::int as n from billing.entries where id::text = any(${mine.ids})`;
  assert.equal(mine.ids.length, 2);
  assert.equal(mine.count, 2, 'Prefer: count=exact counts under RLS too');
  assert.equal(n, 2);
  const theirs = await ledgerIds(bob.supabase);
  assert.equal(theirs.ids.length, 1);
  assert.ok(!theirs.ids.some((id) => mine.ids.includes(id)));

  const balance = await alice.supabase.schema('billing_api').from('balance')
    .select('user_id, available::text').single();
  assert.deepEqual(balance.data, { user_id: alice.id, available: '4.750000000000000000' });
  // Filtering for another user's row is no way around the policy.
  const peek = await alice.supabase.schema('billing_api').from('balance').select('*').eq('user_id', bob.id);
  assert.deepEqual(peek.data, []);

  const anon = await client().schema('billing_api').from('ledger_entries').select('*');
  assert.equal(anon.status, 401);
  assert.equal(anon.error?.code, '42501', 'anon has no grant on billing_api');
  const hidden = await alice.supabase.schema('billing').from('entries').select('*');
  assert.equal(hidden.status, 406);
  assert.equal(hidden.error?.code, 'PGRST106', 'only the exposed schemas answer');
});

Deno.test('a refresh token works once; signing out revokes the session', async () => {
  const alice = await signedIn();
  const first = alice.session.refresh_token;
  const refreshed = await alice.supabase.auth.refreshSession();
  assert.equal(refreshed.error, null);
  assert.notEqual(refreshed.data.session?.refresh_token, first);
  const replay = await client().auth.refreshSession({ refresh_token: first });
  assert.equal(replay.error?.code, 'refresh_token_not_found');

  const current = refreshed.data.session?.refresh_token ?? '';
  assert.equal((await alice.supabase.auth.signOut()).error, null);
  const after = await client().auth.refreshSession({ refresh_token: current });
  assert.equal(after.error?.code, 'refresh_token_not_found');
});
