// The caller's network address, for per-address limits (rate limits, checkout velocity). Only
// a header the platform sets, overwriting whatever the client sent, is trusted: on hosted
// Supabase that is Cloudflare's `cf-connecting-ip`. X-Forwarded-For is never read: its leftmost
// entry is whatever the client wrote. Without the trusted header every request shares one
// bucket, `unknown`, so a misconfiguration makes limits tighter, never bypassable.
import type { Context } from 'hono';
import { z } from 'zod';
import { parseEnv } from '../env.ts';
import { log } from '../log.ts';
import { count } from '../metrics.ts';

export const ClientAddressEnvSchema = z.object({
  CLIENT_IP_HEADER: z.string().trim().toLowerCase()
    .regex(/^[a-z0-9-]+$/, 'must be one header name')
    .refine(
      (h) => h !== 'x-forwarded-for' && h !== 'forwarded',
      'the client writes that header; name one the platform sets',
    )
    .default('cf-connecting-ip'),
});
export type ClientAddressEnv = z.infer<typeof ClientAddressEnvSchema>;

let env: ClientAddressEnv | undefined;
/** The address settings, parsed on first use and cached. */
export const clientAddressEnv = (): ClientAddressEnv => (env ??= parseEnv(ClientAddressEnvSchema));

/** The one bucket shared by every request that arrives without the trusted header. */
export const unknownAddress = 'unknown';

const ipv4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/** The 8 groups of an IPv6 address (WHATWG URL parsing validates it), or null. */
function ipv6Groups(value: string): string[] | null {
  let host: string;
  try {
    host = new URL(`http://[${value}]/`).hostname.slice(1, -1);
  } catch {
    return null;
  }
  const [head, tail] = host.split('::');
  const h = head ? head.split(':') : [];
  const t = tail ? tail.split(':') : [];
  const groups = tail === undefined ? h : [...h, ...Array(8 - h.length - t.length).fill('0'), ...t];
  return groups.length === 8 ? groups : null;
}

/**
 * One address as a limit key: IPv4 as is; IPv6 as its /64, because one subscriber is routinely
 * given a whole /64 and could otherwise rotate through 2^64 addresses; an IPv4-mapped IPv6
 * address as its IPv4. Null for anything that is not an address.
 * @example normalizeAddress('2001:db8:1:2:3:4:5:6') // '2001:db8:1:2::/64'
 */
export function normalizeAddress(value: string): string | null {
  const v = value.trim();
  if (ipv4.test(v)) return v;
  if (!v.includes(':') || v.length > 45) return null;
  const g = ipv6Groups(v);
  if (!g) return null;
  if (g.slice(0, 5).every((x) => x === '0') && g[5] === 'ffff') {
    const [a, b] = [parseInt(g[6], 16), parseInt(g[7], 16)];
    return `${a >> 8}.${a & 255}.${b >> 8}.${b & 255}`;
  }
  return `${g.slice(0, 4).join(':')}::/64`;
}

let warned = false;

/**
 * The client's address from the platform's header (`CLIENT_IP_HEADER`), normalized; `unknown`
 * when the header is missing or not an address. If a proxy appends to the header, the last
 * entry (the one the nearest proxy wrote) is taken, never the first.
 * @example const ip = clientAddress(c) // '203.0.113.7'
 */
export function clientAddress(c: Context): string {
  const raw = c.req.header(clientAddressEnv().CLIENT_IP_HEADER);
  const address = raw ? normalizeAddress(raw.split(',').at(-1) ?? '') : null;
  if (address) return address;
  count('client_address_missing');
  if (!warned) {
    warned = true; // once per instance: a deployment without the header would log on every request
    log.warn('no client address: requests share one limit bucket', { header: clientAddressEnv().CLIENT_IP_HEADER });
  }
  return unknownAddress;
}

/**
 * clientAddress, or null when it is unknown: a rule per address skips such a request rather than
 * put every one of them in one shared budget.
 * @example checkVelocity(userId, knownClientAddress(c), priceCents)
 */
export function knownClientAddress(c: Context): string | null {
  const address = clientAddress(c);
  return address === unknownAddress ? null : address;
}
