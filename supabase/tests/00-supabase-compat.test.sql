-- The local bootstrap behaves as a hosted Supabase database does: roles, auth helpers, grants.
begin;
select plan(10);

select has_role('anon', 'the anon role exists');
select has_role('authenticated', 'the authenticated role exists');
select ok((select rolbypassrls from pg_roles where rolname = 'service_role'), 'service_role bypasses RLS');
select ok((select rolcanlogin from pg_roles where rolname = 'authenticator'), 'authenticator can log in');

set local request.jwt.claims = '{"sub": "6a4a7e5e-9a52-4b9a-8d1c-1f0f6b3a2c11", "role": "authenticated", "email": "a@example.com"}';
select is(auth.uid(), '6a4a7e5e-9a52-4b9a-8d1c-1f0f6b3a2c11'::uuid, 'auth.uid() reads sub from request.jwt.claims');
select is(auth.role(), 'authenticated', 'auth.role() reads role from request.jwt.claims');
select is(auth.jwt() ->> 'email', 'a@example.com', 'auth.jwt() returns the claims');

set local request.jwt.claims = '';
select is(auth.uid(), null, 'auth.uid() is null without claims');

-- as anon
set local role anon;
select throws_ok('select count(*) from auth.users', '42501', null, 'anon cannot read auth.users');
reset role;

-- as authenticated
set local role authenticated;
select throws_ok('select count(*) from auth.users', '42501', null, 'authenticated cannot read auth.users');
reset role;

select * from finish();
rollback;
