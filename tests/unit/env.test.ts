import assert from 'node:assert/strict';
import { BaseEnvSchema, parseEnv } from '../../supabase/functions/_shared/env.ts';

const good = {
  SUPABASE_URL: 'http://127.0.0.1:54321',
  SUPABASE_DB_URL: 'postgresql://postgres:s3cret-value@127.0.0.1:54322/postgres',
  CORS_ALLOWED_ORIGINS: 'http://localhost:3000, https://app.example.org',
};

Deno.test('parseEnv returns typed values and splits the CORS allowlist', () => {
  const env = parseEnv(BaseEnvSchema, good);
  assert.deepEqual(env.CORS_ALLOWED_ORIGINS, ['http://localhost:3000', 'https://app.example.org']);
  assert.equal(env.DB_POOL_MAX, 10);
});

Deno.test('a missing variable stops start-up naming the variable', () => {
  const { SUPABASE_DB_URL: _, ...rest } = good;
  assert.throws(() => parseEnv(BaseEnvSchema, rest), /SUPABASE_DB_URL is missing/);
});

Deno.test('a malformed variable is named but its value never appears in the error', () => {
  const secret = 'mysql://root:hunter2-do-not-print@db';
  try {
    parseEnv(BaseEnvSchema, { ...good, SUPABASE_DB_URL: secret });
    assert.fail('expected an error');
  } catch (err) {
    const message = (err as Error).message;
    assert.match(message, /SUPABASE_DB_URL is invalid/);
    assert.ok(!message.includes('hunter2'), 'the value leaked into the error');
  }
});

Deno.test('a wildcard CORS origin is refused', () => {
  assert.throws(
    () => parseEnv(BaseEnvSchema, { ...good, CORS_ALLOWED_ORIGINS: '*' }),
    /CORS_ALLOWED_ORIGINS is invalid/,
  );
});
