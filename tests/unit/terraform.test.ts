// infra/upstash parsed as HCL (no Terraform binary runs here): it stays well-formed, the
// provider stays pinned, the budget guardrail keeps a sane default, and secrets stay out of
// the repository and out of plain `terraform output`.
import assert from 'node:assert/strict';
import { parse } from '@cdktf/hcl2json';

type Block = Record<string, unknown>;
type Config = {
  terraform?: Block[];
  provider?: Record<string, Block[]>;
  resource?: Record<string, Record<string, Block[]>>;
  variable?: Record<string, Block[]>;
  output?: Record<string, Block[]>;
};

const dir = new URL('../../infra/upstash/', import.meta.url);

/** Every .tf file of the module, parsed and merged the way Terraform merges a directory. */
async function loadModule(): Promise<Config> {
  const merged: Config = {};
  for await (const entry of Deno.readDir(dir)) {
    if (!entry.isFile || !entry.name.endsWith('.tf')) continue;
    const parsed = await parse(entry.name, await Deno.readTextFile(new URL(entry.name, dir))) as Config;
    merged.terraform = [...(merged.terraform ?? []), ...(parsed.terraform ?? [])];
    for (const kind of ['provider', 'resource', 'variable', 'output'] as const) {
      for (const [name, value] of Object.entries(parsed[kind] ?? {})) {
        const into = (merged[kind] ??= {}) as Record<string, unknown>;
        assert.ok(!(name in into) || kind === 'resource', `${kind} "${name}" is declared twice`);
        into[name] = kind === 'resource' ? { ...(into[name] as Block ?? {}), ...(value as Block) } : value;
      }
    }
  }
  return merged;
}

const module = await loadModule();
const variable = (name: string) => module.variable?.[name]?.[0] ?? assert.fail(`variable "${name}" is declared`);
const output = (name: string) => module.output?.[name]?.[0] ?? assert.fail(`output "${name}" is declared`);

Deno.test('every .tf file in infra/upstash parses as HCL; a broken one fails here', async () => {
  await assert.rejects(parse('broken.tf', 'resource "upstash_redis_database" "x" {\n  budget =\n}\n'));
  assert.ok(module.resource, 'the module declares resources');
});

Deno.test('the Upstash provider is the official one, pinned to one exact version', () => {
  const providers = module.terraform?.flatMap((t) => (t.required_providers as Block[] | undefined) ?? []) ?? [];
  const upstash = providers.map((p) => p.upstash as Block | undefined).find(Boolean);
  assert.ok(upstash, 'required_providers names upstash');
  assert.equal(upstash.source, 'upstash/upstash');
  assert.match(String(upstash.version), /^=?\s*\d+\.\d+\.\d+$/, 'an exact version, no range');
});

Deno.test('the provider takes its credentials from variables, the API key marked sensitive and without a default', () => {
  const provider = module.provider?.upstash?.[0];
  assert.ok(provider, 'provider "upstash" is configured');
  assert.equal(provider.email, '${var.upstash_email}');
  assert.equal(provider.api_key, '${var.upstash_api_key}');
  assert.equal(variable('upstash_api_key').sensitive, true);
  assert.ok(!('default' in variable('upstash_api_key')), 'no default API key');
  assert.ok(!('default' in variable('upstash_email')), 'no default account email');
});

Deno.test('exactly one Redis database, global, TLS on, eviction and auto-scaling off, its budget the guardrail variable', () => {
  const databases = Object.values(module.resource?.upstash_redis_database ?? {});
  assert.equal(databases.length, 1);
  const [db] = databases[0];
  assert.equal(db.region, 'global');
  assert.equal(db.primary_region, '${var.primary_region}');
  assert.equal(db.tls, true);
  assert.equal(db.eviction, false, 'a full database must not silently evict velocity blocks');
  assert.equal(db.auto_scale, false, 'no plan (and bill) change without a reviewed apply');
  assert.equal(db.budget, '${var.monthly_budget_usd}');
  assert.ok(!('ip_allowlist' in db), 'Edge Functions have no fixed egress addresses to allow');
});

Deno.test('the monthly budget has a whole-dollar default within its own validated range', () => {
  const budget = variable('monthly_budget_usd');
  assert.equal(budget.type, '${number}');
  const value = budget.default;
  assert.ok(typeof value === 'number' && Number.isInteger(value), 'a whole number of USD');
  assert.ok(value >= 20 && value <= 50_000, `default ${value} is within 20..50000`);
  const [validation] = budget.validation as Block[];
  assert.match(String(validation.condition), />= 20 && .*<= 50000/, 'the validation enforces the same range');
});

Deno.test('docs/costs.md reasons about the same default budget that variables.tf sets', async () => {
  const costs = await Deno.readTextFile(new URL('../../docs/costs.md', import.meta.url));
  const stated = costs.match(/`monthly_budget_usd`[^.]*?default\s+\$?([\d,]+)/);
  assert.ok(stated, 'docs/costs.md names the monthly_budget_usd default');
  assert.equal(Number(stated[1].replaceAll(',', '')), variable('monthly_budget_usd').default);
});

Deno.test('the REST URL and token are outputs marked sensitive', () => {
  assert.equal(output('rest_url').sensitive, true);
  assert.match(String(output('rest_url').value), /^https:\/\/\$\{upstash_redis_database\.\w+\.endpoint\}$/);
  assert.equal(output('rest_token').sensitive, true);
  assert.match(String(output('rest_token').value), /^\$\{upstash_redis_database\.\w+\.rest_token\}$/);
});

Deno.test('state and variable files stay out of git; the example variables hold no credentials', async () => {
  const ignored = (await Deno.readTextFile(new URL('.gitignore', dir))).split('\n');
  for (const pattern of ['.terraform/', '*.tfstate', '*.tfstate.*', '*.tfvars']) {
    assert.ok(ignored.includes(pattern), `.gitignore lists ${pattern}`);
  }
  const example = await parse(
    'terraform.tfvars.example',
    await Deno.readTextFile(new URL('terraform.tfvars.example', dir)),
  );
  assert.ok(!('upstash_api_key' in example) && !('upstash_email' in example), 'credentials are exported, not filed');
});
