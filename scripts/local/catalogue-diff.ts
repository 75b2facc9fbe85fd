// What migra leaves out when it compares two databases: the grants on functions, schemas and
// types, every comment, the extensions, the default privileges and the pg_cron schedules of the
// project's schemas. Prints the SQL that turns FROM into TO (nothing when they agree).
//   deno run -A scripts/local/catalogue-diff.ts <from-url> <to-url> <schema>…
import postgres from 'postgres';

type Row = { kind: string; name: string; target: string; value: string };

/** One row per fact, keyed by kind and name: `value` is compared, `target` is how SQL names it. */
const catalogueSql = `
with ns as (select oid, nspname from pg_namespace where nspname = any(string_to_array($1, ','))),
acl as (
  select 'grant' as kind, x.on_what || ' ' || x.target || ' to ' ||
      case when a.grantee = 0 then 'public' else quote_ident(pg_get_userbyid(a.grantee)) end ||
      case when a.is_grantable then ' with grant option' else '' end || ' :: ' || lower(a.privilege_type) as name,
    x.on_what || ' ' || x.target as target, lower(a.privilege_type) as value
  from (
    select 'function' as on_what, p.oid::regprocedure::text as target,
      coalesce(p.proacl, acldefault('f', p.proowner)) as acl, p.proowner as owner
      from pg_proc p join ns on ns.oid = p.pronamespace
    union all select 'schema', quote_ident(ns.nspname), coalesce(n.nspacl, acldefault('n', n.nspowner)), n.nspowner
      from pg_namespace n join ns on ns.oid = n.oid
    union all select 'type', t.oid::regtype::text, t.typacl, t.typowner
      from pg_type t join ns on ns.oid = t.typnamespace where t.typacl is not null
    -- A column's own grants (a table readable but for some columns): 'table (column)'.
    union all select 'column', c.oid::regclass::text || ' (' || quote_ident(att.attname) || ')', att.attacl, c.relowner
      from pg_attribute att join pg_class c on c.oid = att.attrelid join ns on ns.oid = c.relnamespace
      where att.attacl is not null and not att.attisdropped and att.attnum > 0
  ) x, aclexplode(x.acl) a
  where a.grantee <> x.owner
),
comments as (
  select 'comment' as kind, d.classoid::regclass::text || ' ' || d.objoid::text as name, d.description as value,
    case d.classoid::regclass::text
      when 'pg_proc' then 'function ' || d.objoid::regprocedure::text
      when 'pg_type' then 'type ' || d.objoid::regtype::text
      when 'pg_namespace' then 'schema ' || (select quote_ident(nspname) from pg_namespace where oid = d.objoid)
      when 'pg_class' then
        case when d.objsubid > 0 then 'column ' || d.objoid::regclass::text || '.' ||
          (select quote_ident(attname) from pg_attribute where attrelid = d.objoid and attnum = d.objsubid)
        else (select case relkind when 'v' then 'view ' when 'i' then 'index ' when 'S' then 'sequence ' else 'table ' end
          from pg_class where oid = d.objoid) || d.objoid::regclass::text end
      when 'pg_constraint' then (select 'constraint ' || quote_ident(conname) || ' on ' || conrelid::regclass::text
        from pg_constraint where oid = d.objoid)
      when 'pg_trigger' then (select 'trigger ' || quote_ident(tgname) || ' on ' || tgrelid::regclass::text
        from pg_trigger where oid = d.objoid)
      when 'pg_policy' then (select 'policy ' || quote_ident(polname) || ' on ' || polrelid::regclass::text
        from pg_policy where oid = d.objoid)
    end as target, d.objsubid
  from pg_description d
  where (d.classoid = 'pg_proc'::regclass and d.objoid in (select p.oid from pg_proc p join ns on ns.oid = p.pronamespace))
     or (d.classoid = 'pg_type'::regclass and d.objoid in (select t.oid from pg_type t join ns on ns.oid = t.typnamespace
          where t.typrelid = 0))
     or (d.classoid = 'pg_namespace'::regclass and d.objoid in (select oid from ns))
     or (d.classoid = 'pg_class'::regclass and d.objoid in (select c.oid from pg_class c join ns on ns.oid = c.relnamespace))
     or (d.classoid = 'pg_constraint'::regclass and d.objoid in (select c.oid from pg_constraint c join ns on ns.oid = c.connamespace))
     or (d.classoid = 'pg_trigger'::regclass and d.objoid in (select t.oid from pg_trigger t join pg_class c on c.oid = t.tgrelid
          join ns on ns.oid = c.relnamespace))
     or (d.classoid = 'pg_policy'::regclass and d.objoid in (select p.oid from pg_policy p join pg_class c on c.oid = p.polrelid
          join ns on ns.oid = c.relnamespace))
)
select kind, name, target, value from acl
union all select kind, target, target, value from comments
union all select 'extension', extname, quote_ident(extname), n.nspname
  from pg_extension e join pg_namespace n on n.oid = e.extnamespace where extname <> 'plpgsql'
union all select 'default privileges', pg_get_userbyid(d.defaclrole) || ' ' || coalesce(ns.nspname, '*') || ' ' ||
    d.defaclobjtype::text, '', array(select a::text from unnest(d.defaclacl) a order by 1)::text
  from pg_default_acl d left join ns on ns.oid = d.defaclnamespace
  where d.defaclnamespace = 0 or ns.oid is not null
-- Storage options migra leaves out: a view that lost security_invoker would run as its owner.
union all select 'options', c.oid::regclass::text, c.oid::regclass::text, array(select o from unnest(c.reloptions) o order by 1)::text
  from pg_class c join ns on ns.oid = c.relnamespace where c.reloptions is not null
-- A function's SET options, which migra does not compare (a jit or work_mem setting changed alone).
union all select 'function options', p.oid::regprocedure::text, 'function ' || p.oid::regprocedure::text,
    array(select o from unnest(p.proconfig) o order by 1)::text
  from pg_proc p join ns on ns.oid = p.pronamespace where p.proconfig is not null
`;

// pg_cron's jobs, when the extension is there: schedule and command per job name.
const scheduleSql = `select 'schedule' as kind, jobname as name, jobname as target,
  json_build_array(schedule, command)::text as value from cron.job where jobname is not null`;

async function catalogue(url: string, schemas: string[]): Promise<Map<string, Row>> {
  const sql = postgres(url, { max: 1, onnotice: () => {} });
  try {
    const rows: Row[] = [...await sql.unsafe<Row[]>(catalogueSql, [schemas.join(',')])];
    const [{ has_cron }] = await sql`select to_regclass('cron.job') is not null as has_cron`;
    if (has_cron) rows.push(...await sql.unsafe<Row[]>(scheduleSql));
    return new Map(rows.map((r) => [`${r.kind} ${r.name}`, r]));
  } finally {
    await sql.end();
  }
}

const literal = (s: string) => `'${s.replaceAll("'", "''")}'`;
const dollar = (s: string) => `$$${s}$$`;

/** The statement that makes TO's fact true in FROM (`to` undefined: the fact is gone). */
function statement(from: Row | undefined, to: Row | undefined): string {
  const row = (to ?? from)!;
  switch (row.kind) {
    case 'grant': {
      const [what, grantee] = row.name.split(' :: ')[0].split(' to ');
      const grantable = grantee.endsWith(' with grant option');
      const role = grantee.replace(' with grant option', '');
      const column = /^column (.+) \((.+)\)$/.exec(what);
      if (column) {
        const on = `${row.value} (${column[2]}) on table ${column[1]}`;
        return to ? `grant ${on} to ${role};` : `revoke ${on} from ${role};`;
      }
      return to
        ? `grant ${row.value} on ${what} to ${role}${grantable ? ' with grant option' : ''};`
        : `revoke ${row.value} on ${what} from ${role};`;
    }
    case 'comment':
      return `comment on ${row.target} is ${to ? literal(to.value) : 'null'};`;
    case 'extension':
      return to
        ? `create extension if not exists ${row.target} with schema ${to.value};`
        : `drop extension ${row.target};`;
    case 'schedule': {
      if (!to) return `select cron.unschedule(${literal(row.name)});`;
      const [schedule, command] = JSON.parse(to.value) as [string, string];
      return `select cron.schedule(${literal(row.name)}, ${literal(schedule)}, ${dollar(command)});`;
    }
    case 'function options': {
      // {search_path="",jit=off}: each option as `name=value`, a value double-quoted when it must be.
      const options = to ? to.value.replace(/^\{|\}$/g, '').match(/("(?:[^"\\]|\\.)*"|[^,])+/g) ?? [] : [];
      const set = options.map((o) => {
        const text = o.replace(/^"|"$/g, '').replace(/\\(.)/g, '$1');
        const [name, ...value] = text.split('=');
        const v = value.join('=').replace(/^"|"$/g, '');
        return `alter ${row.target} set ${name} to ${literal(v)};`;
      });
      return [`alter ${row.target} reset all;`, ...set].join('\n');
    }
    default:
      return `-- ${row.kind} ${row.name}: ${from?.value ?? '(none)'} → ${to?.value ?? '(none)'} (write this by hand)`;
  }
}

/**
 * A function migra creates (new, or dropped and made again for a changed signature or return
 * type: `schema.name` each in `dropped`) starts from a new function's defaults, execute for
 * public: FROM's facts on a dropped one go with it, and each one made gets that default in FROM,
 * so every fact TO has on it is stated. Every function has a comment (a pgTAP assertion), so
 * TO's rows name each one.
 */
function recreated(from: Map<string, Row>, to: Map<string, Row>, dropped: string[]) {
  const isFunction = (r: Row) => r.target.startsWith('function ');
  for (const [k, r] of from) {
    if (isFunction(r) && dropped.some((d) => r.target.startsWith(`function ${d}(`))) from.delete(k);
  }
  const existing = new Set([...from.values()].filter(isFunction).map((r) => r.target));
  for (const target of new Set([...to.values()].filter(isFunction).map((r) => r.target))) {
    if (existing.has(target)) continue;
    const name = `${target} to public :: execute`;
    from.set(`grant ${name}`, { kind: 'grant', name, target, value: 'execute' });
    // migra's create states the function's SET options itself.
    const options = [...to.entries()].find(([, r]) => r.kind === 'function options' && r.target === target);
    if (options) from.set(options[0], options[1]);
  }
}

if (import.meta.main) {
  const [fromUrl, toUrl, ...schemas] = Deno.args;
  if (!fromUrl || !toUrl || schemas.length === 0) {
    console.error('usage: catalogue-diff.ts <from-url> <to-url> <schema>…');
    Deno.exit(2);
  }
  const [from, to] = await Promise.all([catalogue(fromUrl, schemas), catalogue(toUrl, schemas)]);
  recreated(from, to, (Deno.env.get('DROPPED_FUNCTIONS') ?? '').split(',').filter(Boolean));
  const out: string[] = [];
  for (const key of new Set([...from.keys(), ...to.keys()])) {
    const a = from.get(key), b = to.get(key);
    if (a?.value !== b?.value) out.push(statement(a, b));
  }
  // Revokes before grants, so a changed grant option ends granted.
  out.sort((x, y) => Number(x.startsWith('grant')) - Number(y.startsWith('grant')));
  if (out.length) console.log(out.join('\n'));
}
