// Provider prices against the pinned catalogue (@pydantic/genai-prices, pinned in import_map.json):
// what a routed model costs at its upstream by the catalogue, beside what billing.provider_prices
// holds, and the rate-card draft the catalogue's prices make at an operator's markup. Used by
// ./scripts/prices (scripts/local/prices.ts) and the dashboard's margins (GET /admin/provider-prices).
// A model the catalogue does not know is unknown, never $0.
import { calcPrice, findProvider } from '@pydantic/genai-prices';

/** The package and version the prices come from, as the import map pins it: '@pydantic/genai-prices@0.1.8'. */
export const catalogueSource = `@pydantic/genai-prices${pinnedVersion()}`;

function pinnedVersion(): string {
  try {
    const version = /genai-prices@(\d[^/]*)/.exec(import.meta.resolve('@pydantic/genai-prices'))?.[1];
    return version ? `@${version}` : '';
  } catch {
    return ''; // a runtime that cannot resolve specifiers: the package without its version
  }
}

/** The token kinds both sides price, per million tokens (the catalogue's key beside each). */
const kinds = [
  ['usd_per_million_input', 'input_mtok'],
  ['usd_per_million_cached_input', 'cache_read_mtok'],
  ['usd_per_million_output', 'output_mtok'],
  ['usd_per_million_cache_write', 'cache_write_mtok'],
  ['usd_per_million_cache_write_1h', 'cache_write_1h_mtok'],
] as const;
type Kind = typeof kinds[number][0];

/** Prices per million tokens as exact decimal strings; null: the kind's default (cached input and writes: input). */
export type TokenPrices = Record<Kind, string | null>;

/** What the catalogue says a model costs at one provider. */
export type CataloguePrice = TokenPrices & {
  provider: string;
  /** The catalogue's own id for the model (an alias such as claude-3-5-haiku resolves to it). */
  catalogue_model: string;
  source_url: string | null;
  /** Some kind costs more above a prompt length; the base price (the shortest prompts') is the one shown. */
  tiered: boolean;
};

/** A routed model as billing.provider_price_routes() answers it. */
export type Route = {
  model: string;
  upstream: string;
  kind: string;
  rate_card: TokenPrices & {
    markup: string;
    usd_per_million_reasoning: string | null;
    usd_per_image: string | null;
    usd_per_audio_second: string | null;
  };
  provider_price: (TokenPrices & { version: number; effective_from: string }) | null;
};

/**
 * same: the tables hold the catalogue's prices; changed: they differ; missing: the tables have
 * none (cost and margin unknown) and the catalogue has one; unknown: the catalogue has none.
 */
export type Verdict = 'same' | 'changed' | 'missing' | 'unknown';

export type Comparison = Route & { catalogue: CataloguePrice | null; verdict: Verdict };

/**
 * The catalogue's provider an upstream is: `openai`, `anthropic`, or an OpenAI-compatible host by
 * its own name (`openrouter`, `groq`, `together`, …) when the catalogue has a provider so named;
 * null for any other (a school's vLLM): never another provider's price for the same model name.
 */
export function catalogueProvider(upstream: string): string | null {
  return findProvider({ providerId: upstream })?.id === upstream ? upstream : null;
}

/** A JS number from the catalogue as a plain decimal string ('0.075', never '7.5e-2'). */
export function plainDecimal(n: number): string {
  if (!Number.isFinite(n) || n < 0) throw new Error(`not a price: ${n}`);
  const s = String(n);
  if (!/e/i.test(s)) return s;
  return n.toFixed(20).replace(/\.?0+$/, '');
}

type CatalogueNumber = number | { base: number; tiers: unknown[] } | undefined;

/**
 * The catalogue's price of `model` at `upstream`'s provider now; null when the catalogue has no
 * such provider, no such model, or no input price for it (unknown, never $0).
 * @example cataloguePrice('gpt-4o', 'openai')?.usd_per_million_input // '2.5'
 */
export function cataloguePrice(model: string, upstream: string, at = new Date()): CataloguePrice | null {
  const provider = catalogueProvider(upstream);
  if (provider === null) return null;
  let found: ReturnType<typeof calcPrice>;
  try {
    found = calcPrice({ input_tokens: 0, output_tokens: 0 }, model, { providerId: provider, timestamp: at });
  } catch {
    return null;
  }
  if (!found) return null;
  let tiered = false;
  const price = (key: string): string | null => {
    const v = found!.model_price[key] as CatalogueNumber;
    if (v === undefined) return null;
    if (typeof v === 'number') return plainDecimal(v);
    tiered = true;
    return plainDecimal(v.base);
  };
  const prices = Object.fromEntries(kinds.map(([ours, theirs]) => [ours, price(theirs)])) as TokenPrices;
  if (prices.usd_per_million_input === null) return null;
  // An embedding model answers vectors: no output price is an output of 0, as its card says.
  prices.usd_per_million_output ??= '0';
  return {
    ...prices,
    provider: found.provider.id,
    catalogue_model: found.model.id,
    source_url: found.provider.pricing_urls?.[0] ?? null,
    tiered,
  };
}

/** A price with its defaults applied (cached input and cache writes default to input). */
function effective(p: TokenPrices): Record<Kind, number> {
  const input = Number(p.usd_per_million_input);
  return {
    usd_per_million_input: input,
    usd_per_million_cached_input: Number(p.usd_per_million_cached_input ?? input),
    usd_per_million_output: Number(p.usd_per_million_output ?? 0),
    usd_per_million_cache_write: Number(p.usd_per_million_cache_write ?? input),
    usd_per_million_cache_write_1h: Number(p.usd_per_million_cache_write_1h ?? input),
  };
}

/** The kinds whose prices differ between two price lists, defaults applied. */
export function differingKinds(a: TokenPrices, b: TokenPrices): Kind[] {
  const x = effective(a), y = effective(b);
  return kinds.map(([k]) => k).filter((k) => x[k] !== y[k]);
}

/** Each routed model beside the catalogue's price at its upstream, with a verdict. */
export function compareRoutes(routes: Route[], at = new Date()): Comparison[] {
  return routes.map((r) => {
    const catalogue = cataloguePrice(r.model, r.upstream, at);
    const verdict: Verdict = catalogue === null
      ? 'unknown'
      : r.provider_price === null
      ? 'missing'
      : differingKinds(r.provider_price, catalogue).length
      ? 'changed'
      : 'same';
    return { ...r, catalogue, verdict };
  });
}

/** An exact decimal product of two decimal strings (prices × markup), trailing zeros trimmed. */
export function times(a: string, b: string): string {
  const parse = (s: string) => {
    const [whole, frac = ''] = s.split('.');
    return { n: BigInt(whole + frac), scale: frac.length };
  };
  const x = parse(a), y = parse(b);
  const scale = x.scale + y.scale;
  const digits = (x.n * y.n).toString().padStart(scale + 1, '0');
  const out = scale ? `${digits.slice(0, -scale)}.${digits.slice(-scale)}` : digits;
  return out.includes('.') ? out.replace(/\.?0+$/, '') : out;
}

/** What a student pays per million tokens of each kind under a card: its prices × its markup, defaults applied. */
function sold(p: TokenPrices, markup: string): string[] {
  const input = p.usd_per_million_input ?? '0';
  return [
    input,
    p.usd_per_million_cached_input ?? input,
    p.usd_per_million_output ?? '0',
    p.usd_per_million_cache_write ?? input,
    p.usd_per_million_cache_write_1h ?? input,
  ].map((v) => times(v, markup));
}

/** The body of POST /admin/rate-cards/drafts (billing.draft_rate_card's card) without the reason. */
export type DraftCard = TokenPrices & {
  model: string;
  upstream: string;
  kind: string;
  markup: string;
  usd_per_million_reasoning: null;
  usd_per_image: string | null;
  usd_per_audio_second: string | null;
};

/**
 * The draft the catalogue's prices make at `markup`, or null when the model's card already sells
 * every token kind at that (nothing to propose) or the catalogue has no price for it. Images and
 * audio keep the card's USD prices: the catalogue prices tokens.
 * @example proposeDraft(comparison, '3')?.usd_per_million_input // the catalogue's input price
 */
export function proposeDraft(c: Comparison, markup: string): DraftCard | null {
  if (!c.catalogue) return null;
  const now = sold(c.rate_card, c.rate_card.markup), next = sold(c.catalogue, markup);
  if (now.every((v, i) => v === next[i])) return null;
  return {
    model: c.model,
    upstream: c.upstream,
    kind: c.kind,
    markup,
    usd_per_million_input: c.catalogue.usd_per_million_input,
    usd_per_million_cached_input: c.catalogue.usd_per_million_cached_input,
    usd_per_million_output: c.catalogue.usd_per_million_output,
    usd_per_million_cache_write: c.catalogue.usd_per_million_cache_write,
    usd_per_million_cache_write_1h: c.catalogue.usd_per_million_cache_write_1h,
    usd_per_million_reasoning: null,
    usd_per_image: c.rate_card.usd_per_image,
    usd_per_audio_second: c.rate_card.usd_per_audio_second,
  };
}
