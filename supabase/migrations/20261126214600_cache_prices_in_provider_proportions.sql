-- The reference rows of 15-catalog.sql: caching in the providers' proportions of the input price,
-- each a new version (rate cards are never edited), so a cache read always costs less than the
-- input it replaces: OpenAI's cached input at half the input price for gpt-4o and gpt-4o-mini;
-- Anthropic's cache read at 0.1×, 5-minute write at 1.25×, hour-long write at 2×.
insert into billing.rate_cards (model, version, usd_per_million_input, usd_per_million_output, markup, effective_from,
  usd_per_million_cached_input, usd_per_million_cache_write, usd_per_million_cache_write_1h, upstream) values
  ('gpt-4o', 2, 5, 15, 4, '2026-01-01', 2.50, null, null, 'openai'),
  ('gpt-4o-mini', 2, 0.15, 0.60, 4, '2026-01-01', 0.075, null, null, 'openai'),
  ('claude-3-5-haiku', 3, 0.80, 4, 4, '2026-01-01', 0.08, 1.00, 1.60, 'anthropic');
insert into billing.provider_prices (model, version, usd_per_million_input, usd_per_million_cached_input,
  usd_per_million_output, usd_per_million_cache_write, usd_per_million_cache_write_1h, effective_from, source_url,
  source_checked_on) values
  ('claude-3-5-haiku', 3, 0.80, 0.08, 4.00, 1.00, 1.60, '2026-01-01', 'https://docs.anthropic.com/en/docs/about-claude/pricing',
   '2026-11-26');
