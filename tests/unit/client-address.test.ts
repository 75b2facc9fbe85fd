// The trusted client address: only the platform's header, normalized; never X-Forwarded-For.
import assert from 'node:assert/strict';
import { Hono } from 'hono';
import {
  clientAddress,
  ClientAddressEnvSchema,
  normalizeAddress,
  unknownAddress,
} from '../../supabase/functions/_shared/http/client-address.ts';
import { parseEnv } from '../../supabase/functions/_shared/env.ts';

const app = new Hono();
app.get('/', (c) => c.text(clientAddress(c)));
const addressOf = async (headers: Record<string, string>) => await (await app.request('/', { headers })).text();

Deno.test('the address comes from cf-connecting-ip (the default), never from X-Forwarded-For', async () => {
  assert.equal(
    await addressOf({ 'cf-connecting-ip': '203.0.113.7', 'x-forwarded-for': '198.51.100.1' }),
    '203.0.113.7',
  );
  assert.equal(await addressOf({ 'x-forwarded-for': '198.51.100.1' }), unknownAddress);
  assert.equal(await addressOf({ 'x-real-ip': '198.51.100.1' }), unknownAddress);
});

Deno.test('without the trusted header, or with garbage in it, every request shares the one unknown bucket', async () => {
  assert.equal(await addressOf({}), unknownAddress);
  for (const junk of ['', 'not-an-ip', '999.1.1.1', '1.2.3', '<script>', 'fe80::1::2', '1.2.3.4 OR 1=1']) {
    assert.equal(await addressOf({ 'cf-connecting-ip': junk }), unknownAddress, junk);
  }
});

Deno.test('IPv6 clients are limited by their /64; IPv4-mapped addresses as IPv4; a list takes its last entry', async () => {
  assert.equal(normalizeAddress('2001:db8:1:2:3:4:5:6'), '2001:db8:1:2::/64');
  assert.equal(normalizeAddress('2001:DB8:1:2:ffff::1'), '2001:db8:1:2::/64', 'the same /64, another host');
  assert.equal(normalizeAddress('2001:db8::1'), '2001:db8:0:0::/64');
  assert.equal(normalizeAddress('::ffff:203.0.113.9'), '203.0.113.9');
  assert.equal(normalizeAddress(' 192.0.2.1 '), '192.0.2.1');
  assert.equal(await addressOf({ 'cf-connecting-ip': '198.51.100.1, 203.0.113.7' }), '203.0.113.7');
});

Deno.test('CLIENT_IP_HEADER defaults to cf-connecting-ip and refuses headers the client writes', () => {
  assert.equal(parseEnv(ClientAddressEnvSchema, {}).CLIENT_IP_HEADER, 'cf-connecting-ip');
  assert.equal(parseEnv(ClientAddressEnvSchema, { CLIENT_IP_HEADER: 'X-Real-IP' }).CLIENT_IP_HEADER, 'x-real-ip');
  assert.throws(() => parseEnv(ClientAddressEnvSchema, { CLIENT_IP_HEADER: 'X-Forwarded-For' }), /CLIENT_IP_HEADER/);
  assert.throws(() => parseEnv(ClientAddressEnvSchema, { CLIENT_IP_HEADER: 'a b' }), /CLIENT_IP_HEADER/);
});
