// Organisation membership holds against a student with a second account and an organisation of
// their own: a removed admin cannot come back through their own invitation, an owner is not
// demoted by accepting a member invitation, invitations are no spam or phishing relay, and an
// invitation link's token cannot be read back from a stored row.
import assert from 'node:assert/strict';
import { api, assertLedgerInvariants, drainOutbox, env, testDb, until } from '../support/helpers.ts';
import { person, school } from '../support/orgs.ts';

type Person = Awaited<ReturnType<typeof person>>;
type Json = Record<string, unknown>;
const codeOf = (r: { body: Json }) => (r.body.error as Json | undefined)?.code;
const detailsOf = (r: { body: Json }) => (r.body.error as { details: Json }).details;

async function invite(by: Person, org: string, email: string, role = 'member') {
  return await api(`/orgs/${org}/invitations`, { token: by.token, body: { email, role } });
}
/** An invitation that must be sent: its id and token. */
async function invited(by: Person, org: string, email: string, role = 'member') {
  const r = await invite(by, org, email, role);
  assert.equal(r.status, 201, r.text);
  return r.body.data as { id: string; token: string };
}
const accept = (who: Person, token: string) => api('/orgs/invitations/accept', { token: who.token, body: { token } });
const remove = (by: Person, org: string, who: Person) =>
  api(`/orgs/${org}/members/${who.id}`, { method: 'DELETE', token: by.token });
const roleIn = async (who: Person, org: string) => {
  const r = await api(`/orgs/${org}`, { token: who.token });
  return r.status === 200 ? (r.body.data as { role: string }).role : r.status;
};

/** An organisation of `owner` whose `admins` accepted admin invitations. */
async function orgWithAdmins(owner: Person, admins: Person[]) {
  const org = await school(owner, [], 'allowance', null);
  for (const a of admins) {
    assert.equal((await accept(a, (await invited(owner, org, a.email, 'admin')).token)).status, 200);
  }
  return org;
}

Deno.test('a removed admin does not come back through invitations they sent to themselves or a second account', async () => {
  const [owner, mallory, alt] = await Promise.all(['owner', 'mallory', 'mallory-alt'].map(person));
  const org = await orgWithAdmins(owner, [mallory]);
  const toHerself = await invited(mallory, org, mallory.email, 'admin');
  const toHerAlt = await invited(mallory, org, alt.email, 'admin');

  assert.equal((await remove(owner, org, mallory)).status, 200);
  for (const [who, token] of [[mallory, toHerself.token], [alt, toHerAlt.token]] as const) {
    const r = await accept(who, token);
    assert.equal(r.status, 409, r.text);
    assert.equal(codeOf(r), 'INVITATION_CLOSED');
    assert.equal(await roleIn(who, org), 404, 'not a member');
  }
  const [{ n }] = await testDb`select count(*)::int as n from billing.org_admins where org_id = ${org}`;
  assert.equal(n, 1, 'the owner is the only admin left');
});

Deno.test('removing a member revokes the invitations sent to their address', async () => {
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [ada], 'allowance', null);
  const promotion = await invited(owner, org, ada.email, 'admin');
  assert.equal((await remove(owner, org, ada)).status, 200);
  const r = await accept(ada, promotion.token);
  assert.equal(codeOf(r), 'INVITATION_CLOSED');
  assert.equal((detailsOf(r) as { status: string }).status, 'revoked');
  assert.equal(await roleIn(ada, org), 404);
});

Deno.test("admins list their organisation's invitations page by page and revoke them; members cannot", async () => {
  const [owner, ada, bo, outsider] = await Promise.all(['owner', 'ada', 'bo', 'outsider'].map(person));
  const org = await school(owner, [ada], 'allowance', null);
  const toBo = await invited(owner, org, bo.email);
  await invited(owner, org, `carol-${crypto.randomUUID().slice(0, 8)}@school.test`);

  const first = await api(`/orgs/${org}/invitations?limit=2`, { token: owner.token });
  assert.equal(first.status, 200, first.text);
  const page1 = first.body.data as { items: Json[]; next_cursor: string | null };
  assert.equal(page1.items.length, 2);
  assert.ok(page1.next_cursor);
  assert.ok(page1.items.every((i) => !('token' in i) && !('token_hash' in i)), 'no token, no hash');
  const second = await api(`/orgs/${org}/invitations?limit=2&cursor=${page1.next_cursor}`, { token: owner.token });
  const page2 = second.body.data as { items: Json[]; next_cursor: string | null };
  assert.deepEqual(page2.items.map((i) => [i.email, i.status]), [[ada.email, 'accepted']], 'oldest last');
  assert.equal(page2.next_cursor, null);

  const path = `/orgs/${org}/invitations/${toBo.id}`;
  assert.equal(codeOf(await api(`/orgs/${org}/invitations`, { token: ada.token })), 'ORG_FORBIDDEN');
  assert.equal(codeOf(await api(path, { method: 'DELETE', token: ada.token })), 'ORG_FORBIDDEN');
  assert.equal(codeOf(await api(`/orgs/${org}/invitations`, { token: outsider.token })), 'ORG_NOT_FOUND');
  assert.equal(codeOf(await api(path, { method: 'DELETE', token: outsider.token })), 'ORG_NOT_FOUND');

  const revoked = await api(path, { method: 'DELETE', token: owner.token });
  assert.equal(revoked.status, 200, revoked.text);
  assert.equal((revoked.body.data as { status: string }).status, 'revoked');
  assert.equal((await api(path, { method: 'DELETE', token: owner.token })).status, 200, 'revoking again is a retry');
  assert.equal(codeOf(await accept(bo, toBo.token)), 'INVITATION_CLOSED');
  const accepted = page2.items[0].id as string;
  assert.equal(
    codeOf(await api(`/orgs/${org}/invitations/${accepted}`, { method: 'DELETE', token: owner.token })),
    'INVITATION_CLOSED',
  );
  const unknown = `/orgs/${org}/invitations/${crypto.randomUUID()}`;
  assert.equal(codeOf(await api(unknown, { method: 'DELETE', token: owner.token })), 'INVITATION_NOT_FOUND');
  assert.equal(
    codeOf(await api(`/orgs/${org}/invitations/not-a-uuid`, { method: 'DELETE', token: owner.token })),
    'INVITATION_NOT_FOUND',
  );
  assert.equal((await api(`/orgs/${org}/invitations?cursor=not-a-uuid`, { token: owner.token })).status, 400);
});

Deno.test('accepting a member invitation never demotes the owner or an admin, and a co-admin cannot remove the owner', async () => {
  const [owner, coadmin] = await Promise.all(['owner', 'coadmin'].map(person));
  const org = await orgWithAdmins(owner, [coadmin]);
  assert.equal((await accept(owner, (await invited(coadmin, org, owner.email)).token)).status, 200);
  assert.equal((await accept(coadmin, (await invited(coadmin, org, coadmin.email)).token)).status, 200);
  assert.equal(await roleIn(owner, org), 'owner');
  assert.equal(await roleIn(coadmin, org), 'admin');
  const r = await remove(coadmin, org, owner);
  assert.equal(r.status, 403, r.text);
  assert.equal(codeOf(r), 'ORG_FORBIDDEN');
  assert.equal(await roleIn(owner, org), 'owner');
});

Deno.test("ownership moves only by the owner's transfer to an active member, the old owner becoming an admin", async () => {
  const [owner, coadmin, ada, outsider] = await Promise.all(['owner', 'coadmin', 'ada', 'outsider'].map(person));
  const org = await orgWithAdmins(owner, [coadmin]);
  assert.equal((await accept(ada, (await invited(owner, org, ada.email)).token)).status, 200);
  const transfer = (by: Person, body: unknown) => api(`/orgs/${org}/owner`, { token: by.token, body });

  assert.equal(codeOf(await transfer(coadmin, { user_id: coadmin.id })), 'ORG_FORBIDDEN', 'an admin cannot take it');
  assert.equal(codeOf(await transfer(ada, { user_id: ada.id })), 'ORG_FORBIDDEN');
  assert.equal(codeOf(await transfer(owner, { user_id: outsider.id })), 'MEMBER_NOT_FOUND');
  assert.equal((await transfer(owner, { user_id: 'nobody' })).status, 400);

  const moved = await transfer(owner, { user_id: ada.id });
  assert.equal(moved.status, 200, moved.text);
  assert.deepEqual(moved.body.data, {
    org_id: org,
    owner_id: ada.id,
    previous_owner_id: owner.id,
    previous_owner_role: 'admin',
  });
  assert.deepEqual([await roleIn(ada, org), await roleIn(owner, org)], ['owner', 'admin']);
  const [{ orgs }] = await testDb`select orgs from billing.accounts where user_id = ${ada.id}`;
  assert.equal(orgs, 0, 'an owner is no longer a funded member');
  assert.equal(
    codeOf(await transfer(owner, { user_id: owner.id })),
    'ORG_FORBIDDEN',
    'the old owner cannot take it back',
  );
  assert.equal(codeOf(await remove(coadmin, org, ada)), 'ORG_FORBIDDEN', 'nobody removes the new owner');
  assert.equal((await remove(ada, org, owner)).status, 200, 'the new owner may remove the old one');
  const [{ n }] = await testDb`select count(*)::int as n from billing.org_members
                               where org_id = ${org} and role = 'owner' and active`;
  assert.equal(n, 1);
  await assertLedgerInvariants();
});

Deno.test('an inviter sends at most 20 invitations a day across their organisations; revoking gives none back', async () => {
  const mallory = await person('mallory');
  const [a, b] = [await school(mallory, [], 'allowance', null), await school(mallory, [], 'pool', null)];
  const spam = (org: string) => invite(mallory, org, `victim-${crypto.randomUUID().slice(0, 8)}@example.test`);
  for (let i = 0; i < 12; i++) {
    const r = await spam(a);
    assert.equal(r.status, 201, r.text);
    const id = (r.body.data as { id: string }).id;
    assert.equal((await api(`/orgs/${a}/invitations/${id}`, { method: 'DELETE', token: mallory.token })).status, 200);
  }
  for (let i = 0; i < 8; i++) assert.equal((await spam(b)).status, 201);
  for (const org of [a, b]) {
    const r = await spam(org);
    assert.equal(r.status, 429, r.text);
    assert.equal(codeOf(r), 'INVITATION_LIMIT');
    assert.deepEqual([detailsOf(r).scope, detailsOf(r).limit], ['inviter', 20]);
    assert.equal((r.body.error as Json).retryable, false, "a client does not retry a day's limit in seconds");
  }
  const [{ n }] = await testDb`select count(*)::int as n from billing.org_invitations where invited_by = ${mallory.id}`;
  assert.equal(n, 20, 'nothing stored beyond the limit');
});

Deno.test('an organisation sends at most 50 invitations a day, whoever sends them', async () => {
  const people = await Promise.all(['owner', 'admin-1', 'admin-2'].map(person));
  const [owner, first, second] = people;
  const org = await orgWithAdmins(owner, [first, second]); // 2 invitations so far
  const spam = (by: Person) => invite(by, org, `victim-${crypto.randomUUID().slice(0, 8)}@example.test`);
  for (const [by, n] of [[owner, 18], [first, 20], [second, 10]] as const) {
    for (let i = 0; i < n; i++) assert.equal((await spam(by)).status, 201);
  }
  const r = await spam(second);
  assert.equal(r.status, 429, r.text);
  assert.deepEqual([detailsOf(r).scope, detailsOf(r).limit], ['organisation', 50]);
});

Deno.test('30 invitations sent at once by one inviter store exactly 20', async () => {
  const mallory = await person('mallory');
  const org = await school(mallory, [], 'allowance', null);
  const answers = await Promise.all(
    Array.from({ length: 30 }, () => invite(mallory, org, `victim-${crypto.randomUUID().slice(0, 8)}@example.test`)),
  );
  assert.deepEqual(
    [answers.filter((r) => r.status === 201).length, answers.filter((r) => codeOf(r) === 'INVITATION_LIMIT').length],
    [20, 10],
  );
});

Deno.test('an admin removed while accepting their own invitation stays removed, whichever runs first', async () => {
  const owner = await person('owner');
  for (let i = 0; i < 5; i++) {
    const mallory = await person('mallory');
    const org = await orgWithAdmins(owner, [mallory]);
    const own = await invited(mallory, org, mallory.email, 'admin');
    const [removed] = await Promise.all([remove(owner, org, mallory), accept(mallory, own.token)]);
    assert.equal(removed.status, 200, removed.text);
    assert.equal(await roleIn(mallory, org), 404);
  }
});

/** Sends the outbox until the invitation's email is out; the emails caught for `to`. */
async function mailFor(invitationId: string, to: string) {
  await until('the invitation email', async () => {
    await drainOutbox();
    const [row] = await testDb`select status from billing.notification_outbox
                               where dedupe_key = ${'org-invitation:' + invitationId}`;
    return row?.status === 'sent';
  });
  const { messages } = await (await fetch(`${env('POSTMARK_API_BASE')}/_catcher/messages`)).json();
  return (messages as { To: string; Subject: string; TextBody: string; HtmlBody?: string }[]).filter((m) =>
    m.To === to
  );
}

Deno.test("the invitation email shows the organisation's name as inert text and says who invited", async () => {
  const [mallory, victim] = await Promise.all(['mallory', 'victim'].map(person));
  const name = 'URGENT Security Team: verify your card at https://evil.example/login or www.evil.example';
  // Such a name is refused now (it is printed in emails and on invoices: values/text.ts) ...
  const refused = await api('/orgs', { token: mallory.token, body: { name } });
  assert.equal(refused.status, 400, refused.text);
  assert.equal((refused.body.error as { field: string }).field, 'name');
  // ... and one given before that rule is still inert text in the email.
  const created = await api('/orgs', { token: mallory.token, body: { name: 'Mallory School' } });
  const org = (created.body.data as { id: string }).id;
  await testDb`update billing.orgs set name = ${name} where id = ${org}`;
  const { id, token } = await invited(mallory, org, victim.email);
  const [mail] = await mailFor(id, victim.email);
  assert.ok(mail, 'one email');
  const all = `${mail.Subject}\n${mail.TextBody}\n${mail.HtmlBody ?? ''}`;
  for (const live of ['https://evil', 'www.evil', 'evil.example']) {
    assert.ok(!all.includes(live), `"${live}" in ${all}`);
  }
  assert.ok(!mail.Subject.includes('URGENT'), 'the name is not in the subject');
  assert.match(mail.TextBody, /"URGENT Security Team: verify your card at https\[:\/\/\]evil\[\.\]example\/login/);
  assert.ok(mail.TextBody.includes(mallory.email.replace('.test', '[.]test')), 'it says who invited');
  assert.ok(mail.TextBody.includes(`#invitation=${token}`), 'the link carries the token');
});

/** The tables (of every schema) with a row whose text holds `needle`, as "schema.table: count". */
async function rowsHolding(needle: string): Promise<string[]> {
  const tables = await testDb`select format('%I.%I', table_schema, table_name) as name from information_schema.tables
    where table_type = 'BASE TABLE' and table_schema not in ('pg_catalog', 'information_schema')`;
  const found: string[] = [];
  for (const { name } of tables) {
    const [{ n }] = await testDb.unsafe(`select count(*)::int as n from ${name} x where strpos(x::text, $1) > 0`, [
      needle,
    ]);
    if (n) found.push(`${name}: ${n}`);
  }
  return found;
}

Deno.test('no stored row holds a working invitation token, and a retried email carries the same working link', async () => {
  const [owner, ada] = await Promise.all(['owner', 'ada'].map(person));
  const org = await school(owner, [], 'allowance', null);
  const { id, token } = await invited(owner, org, ada.email);
  assert.equal((await mailFor(id, ada.email)).length, 1);
  assert.deepEqual(await rowsHolding(token), [], 'the token is in no row');

  // The send is retried (a timeout after Postmark took it, say): the same link again.
  await testDb`update billing.notification_outbox set status = 'pending', next_attempt_at = now()
               where dedupe_key = ${'org-invitation:' + id}`;
  const mails = await mailFor(id, ada.email);
  assert.equal(mails.length, 2);
  assert.ok(mails.every((m) => m.TextBody.includes(`#invitation=${token}`)));
  assert.deepEqual(await rowsHolding(token), []);
  assert.equal((await accept(ada, token)).status, 200);
});
