import assert from 'node:assert/strict';
import { isTcpSession, type PostgresProcesses, sessionsCpu } from '../../bench/request-path/procfs.ts';

// Process titles as `ps` shows them for the local stack's cluster (Postgres 15, pgbouncer, pg_cron).
const pooled = 'postgres: postgres postgres 127.0.0.1(41682) idle';
const pooledBusy = 'postgres: postgres postgres 127.0.0.1(41714) SELECT';
const cronJob = 'postgres: postgres postgres [local] SELECT';
const autovacuum = 'postgres: autovacuum worker postgres';

Deno.test('request-path counts the pooler’s server connections as the sessions, not the cluster’s other work', () => {
  assert.ok(isTcpSession(pooled));
  assert.ok(isTcpSession(pooledBusy));
  assert.ok(isTcpSession('postgres: supabase_admin postgres ::1(5000) idle in transaction'));
  for (
    const other of [
      cronJob,
      autovacuum,
      'postgres: autovacuum launcher',
      'postgres: checkpointer',
      'postgres: walwriter',
      'postgres: background writer',
      'postgres: pg_cron launcher',
      '/usr/lib/postgresql/15/bin/postgres -D /work/x/.local/pg/data',
    ]
  ) assert.equal(isTcpSession(other), false, other);
});

Deno.test('a session’s CPU in the window counts; autovacuum, a cron job and a session that started in the window do not', () => {
  const before: PostgresProcesses = new Map([
    [10, { cpu: 5.0, title: pooled }],
    [11, { cpu: 7.0, title: pooledBusy }],
    [20, { cpu: 0.5, title: autovacuum }],
    [30, { cpu: 1.0, title: pooled }], // ends in the window: its time moves to the postmaster's reaped fields
  ]);
  const after: PostgresProcesses = new Map([
    [10, { cpu: 6.5, title: pooledBusy }],
    [11, { cpu: 7.25, title: pooled }],
    [20, { cpu: 3.5, title: autovacuum }],
    [40, { cpu: 2.0, title: cronJob }],
    [41, { cpu: 0.75, title: pooled }],
  ]);
  assert.equal(sessionsCpu(before, after), 1.75);
});
