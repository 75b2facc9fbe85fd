// Live mode refuses an unsafe configuration: each setting is named with why, never its value,
// by liveModeProblems (readiness's live_config check) and by ./scripts/env-check.
import assert from 'node:assert/strict';
import { liveModeProblems } from '../../supabase/functions/_shared/live-config.ts';

const safe = {
  STRIPE_MODE: 'live',
  AI_PROVIDER: 'openai',
  CORS_ALLOWED_ORIGINS: 'https://app.scholarlink.example',
  BILLING_PAGE_URL: 'https://app.scholarlink.example/billing',
  CHECKOUT_SUCCESS_URL: 'https://app.scholarlink.example/paid',
  CHECKOUT_CANCEL_URL: 'https://app.scholarlink.example/cancelled',
  CHECKOUT_REDIRECT_ORIGINS: 'https://app.scholarlink.example',
  PROVIDER_ONBOARDING_RETURN_URL: 'https://app.scholarlink.example/providers/done',
  PROVIDER_ONBOARDING_REFRESH_URL: 'https://app.scholarlink.example/providers/again',
};
const named = (env: Record<string, string | undefined>) => liveModeProblems(env).map((p) => p.variable);

Deno.test('a safe live configuration has no problem; test mode is never refused', () => {
  assert.deepEqual(liveModeProblems(safe), []);
  assert.deepEqual(liveModeProblems({ STRIPE_MODE: 'test', AI_PROVIDER: 'local' }), []);
});

Deno.test('live mode refuses AI_PROVIDER=local, and the default (unset) that means local', () => {
  assert.deepEqual(named({ ...safe, AI_PROVIDER: 'local' }), ['AI_PROVIDER']);
  assert.deepEqual(named({ ...safe, AI_PROVIDER: undefined }), ['AI_PROVIDER']);
});

Deno.test('live mode refuses no CORS origin, and an unset or loopback billing page', () => {
  assert.deepEqual(named({ ...safe, CORS_ALLOWED_ORIGINS: ' , ' }), ['CORS_ALLOWED_ORIGINS']);
  assert.deepEqual(named({ ...safe, BILLING_PAGE_URL: undefined }), ['BILLING_PAGE_URL']);
  for (const host of ['127.0.0.1:54330', 'localhost', '[::1]:3000']) {
    assert.deepEqual(named({ ...safe, BILLING_PAGE_URL: `https://${host}/` }), ['BILLING_PAGE_URL'], host);
  }
});

Deno.test('live mode refuses every URL it gives out that is not https, and redirect origins likewise', () => {
  for (const name of Object.keys(safe).filter((n) => n.endsWith('_URL'))) {
    assert.deepEqual(named({ ...safe, [name]: 'http://app.scholarlink.example/x' }), [name]);
  }
  assert.deepEqual(named({ ...safe, CHECKOUT_REDIRECT_ORIGINS: 'https://a.example,http://b.example' }), [
    'CHECKOUT_REDIRECT_ORIGINS',
  ]);
  assert.deepEqual(named({ ...safe, STRIPE_API_BASE: 'http://127.0.0.1:12111', FAILPOINTS: 'x' }), [
    'STRIPE_API_BASE',
    'FAILPOINTS',
  ]);
});

Deno.test('a problem names the variable and why, never its value', () => {
  const values = {
    ...safe,
    BILLING_PAGE_URL: 'http://secret-host.example/p',
    CHECKOUT_SUCCESS_URL: 'not a url s3cr3t',
  };
  const text = JSON.stringify(liveModeProblems(values));
  assert.ok(!text.includes('secret-host') && !text.includes('s3cr3t'), text);
});

Deno.test('./scripts/env-check --env-file in live mode exits 1 naming AI_PROVIDER=local and each unsafe URL, never a value', async () => {
  const root = new URL('../../', import.meta.url).pathname;
  const file = await Deno.makeTempFile({ suffix: '.env' });
  const settings = { ...safe, AI_PROVIDER: 'local', CHECKOUT_SUCCESS_URL: 'http://127.0.0.1:9/never-shown' };
  await Deno.writeTextFile(file, Object.entries(settings).map(([k, v]) => `${k}=${v}\n`).join(''));
  try {
    const out = await new Deno.Command(`${root}scripts/env-check`, {
      args: ['--function', 'jobs', '--env-file', file],
      clearEnv: true,
      env: { PATH: Deno.env.get('PATH') ?? '/usr/bin:/bin', HOME: Deno.env.get('HOME') ?? '/tmp' },
      stdout: 'piped',
      stderr: 'piped',
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assert.equal(out.code, 1, text);
    assert.match(text, /platform +required +SUPABASE_URL/, "the platform's variables are taken as provided");
    assert.match(text, /UNSAFE +AI_PROVIDER is local/);
    assert.match(text, /UNSAFE +CHECKOUT_SUCCESS_URL points at a loopback address/);
    assert.ok(!text.includes('never-shown'), 'no value is printed');
  } finally {
    await Deno.remove(file);
  }
});
