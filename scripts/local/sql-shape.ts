// The shape of the SQL in supabase/schemas (docs/architecture.md, "SQL in layers"), read by
// lexing the files, not by grepping them: strings, quoted names and comments are tokens of
// their own, so a name inside a string or a comment is never a call or a write.
//   1. Layers. A file's number is its layer (10-ledger.sql is layer 10): a function, view or
//      default in a file calls only functions defined in its own layer or a lower one. The
//      core (the ledger, its writer, holds, lots) sits lowest and calls nothing above it;
//      features build what moves and call down. Calls still pointing up would be listed in
//      `upwardCallsKnown` below, each to be moved down: the check fails on any other, and on a
//      listed one that is gone (so the list only shrinks; it is empty).
//   2. One writer. Only billing.post_transfers and the writer's other operations (its debit,
//      billing.post_debit; a hold, billing.place_hold; a void, billing.end_holds) and the
//      steps they share (`writerSteps`) insert into (or updates, or deletes from) the
//      ledger's tables (transfers, entries, lots, lot_allocations, sub_accounts), places a hold (a pending
//      transfer) or sets its amount or state, sets an account's balance, held amount or
//      version, or sets what is left of a lot: the SET clause is parsed, so
//      `update billing.accounts a set balance = …` counts as `…, version = …` does.
//   3. State in one record. No function takes more than two array parameters (out parameters
//      aside): a step handed six parallel arrays is one record split up (the writer passes
//      billing.posting, a leg per tracked side).
//   deno run --allow-read scripts/local/sql-shape.ts [schemas dir]   (default supabase/schemas)

/** A token: a lower-cased word or punctuation mark, a string literal's text, or a quoted name. */
export interface Token {
  text: string;
  kind: 'word' | 'string' | 'punct';
  line: number;
}

/** Tokens of SQL or PL/pgSQL source; comments dropped, dollar-quote markers kept as `$$`. */
export function lexSql(src: string): Token[] {
  const out: Token[] = [];
  let i = 0, line = 1;
  const advance = (to: number) => {
    for (let k = i; k < to; k++) if (src[k] === '\n') line++;
    i = to;
  };
  while (i < src.length) {
    const c = src[i];
    const rest = src.slice(i, i + 200);
    if (/\s/.test(c)) advance(i + 1);
    else if (rest.startsWith('--')) advance(src.indexOf('\n', i) < 0 ? src.length : src.indexOf('\n', i));
    else if (rest.startsWith('/*')) advance(src.indexOf('*/', i) < 0 ? src.length : src.indexOf('*/', i) + 2);
    else if (c === "'") {
      let j = i + 1;
      while (j < src.length && !(src[j] === "'" && src[j + 1] !== "'")) j += src[j] === "'" ? 2 : 1;
      out.push({ text: src.slice(i + 1, j).replaceAll("''", "'"), kind: 'string', line });
      advance(j + 1);
    } else if (c === '"') {
      const j = src.indexOf('"', i + 1);
      out.push({ text: src.slice(i + 1, j).toLowerCase(), kind: 'word', line });
      advance(j + 1);
    } else if (/^\$[A-Za-z_]*\$/.test(rest)) {
      // A function body's quotes: its code is lexed like the rest (bodies are code, not data).
      out.push({ text: '$$', kind: 'punct', line });
      advance(i + /^\$[A-Za-z_]*\$/.exec(rest)![0].length);
    } else if (/^[A-Za-z_]/.test(c)) {
      const word = /^[A-Za-z_][A-Za-z0-9_$]*/.exec(rest)![0];
      out.push({ text: word.toLowerCase(), kind: 'word', line });
      advance(i + word.length);
    } else {
      out.push({ text: c, kind: 'punct', line });
      advance(i + 1);
    }
  }
  return out;
}

/** What one schema file defines and does: functions, calls (with the function they sit in), writes. */
export interface Call {
  file: string;
  from: string; // the function the call sits in, or '(file)' for a view, default or policy
  callee: string; // schema.name
  line: number;
}
export interface Write {
  file: string;
  fn: string;
  what: string; // e.g. 'update billing.accounts set balance'
  line: number;
}

const ledgerTables = new Set(['transfers', 'entries', 'lots', 'lot_allocations', 'holds', 'sub_accounts']);
/** Columns only the writer sets, per table (any column of the append-only ledger tables). */
const writerColumns: Record<string, Set<string> | 'any'> = {
  accounts: new Set(['balance', 'held', 'version']),
  lots: new Set(['remaining', 'debt_settled']),
  holds: new Set(['amount', 'status', 'captured_amount', 'capture_transfer_id', 'finished_at']),
  transfers: 'any',
  entries: 'any',
  lot_allocations: 'any',
  sub_accounts: 'any',
};
export const theWriter = 'billing.post_transfers';
/** The writer's other operations (post_debit, place_hold, end_holds) and its steps (11-ledger-writer.sql,
 * 11-ledger-writes.sql, 11-ledger-writes-holds.sql): counted as the writer. */
export const writerSteps = new Set([
  'billing.post_debit',
  'billing.place_hold',
  'billing.end_holds',
  'billing.insert_transfer',
  'billing.capture_take',
  'billing.shed_reservations',
  'billing.give_way_to_excess',
  'billing.keep_claims',
  'billing.carry_reservations',
  'billing.batch_refusals',
  'billing.write_batch',
  'billing.draw_lots',
  'billing.credit_lots',
  'billing.lot_tails',
  'billing.write_one',
  'billing.after_balances',
]);
const schemas = new Set(['billing', 'billing_api']);

/** The columns a SET clause assigns, starting at the token after `set`. */
function setTargets(toks: Token[], k: number): string[] {
  const targets: string[] = [];
  let depth = 0, expectTarget = true;
  for (; k < toks.length; k++) {
    const t = toks[k].text;
    if (t === '(') {
      if (expectTarget && depth === 0) { // (a, b) = (…): each name in the list is a target
        for (k++; k < toks.length && toks[k].text !== ')'; k++) if (toks[k].kind === 'word') targets.push(toks[k].text);
        expectTarget = false;
        continue;
      }
      depth++;
    } else if (t === ')') {
      if (--depth < 0) break; // the end of a CTE around the update
    } else if (depth === 0 && (t === ';' || t === 'from' || t === 'where' || t === 'returning')) break;
    else if (depth === 0 && t === ',') expectTarget = true;
    else if (expectTarget && toks[k].kind === 'word') {
      targets.push(t);
      expectTarget = false;
    }
  }
  return targets;
}

/** Every function, call and ledger write of the .sql files in `dir`, by file name order. */
export function readSchemas(dir: string) {
  const files = [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => /^\d+-.*\.sql$/.test(n)).sort();
  const defined = new Map<string, string>(); // schema.name → file
  const calls: Call[] = [];
  const writes: Write[] = [];
  const mentions = new Map<string, Set<string>>(); // schema.name → the words of its body naming disputes or frozen lots
  const spans = new Map<string, { file: string; from: number; to: number }>(); // schema.name → its lines
  const arrayParams = new Map<string, { file: string; line: number; count: number }>(); // schema.name → its array parameters
  for (const file of files) {
    const toks = lexSql(Deno.readTextFileSync(`${dir}/${file}`));
    let current = '(file)';
    const name = (k: number) => `${toks[k].text}.${toks[k + 2].text}`;
    const qualified = (k: number) =>
      toks[k]?.kind === 'word' && schemas.has(toks[k].text) && toks[k + 1]?.text === '.' &&
      toks[k + 2]?.kind === 'word';
    for (let k = 0; k < toks.length; k++) {
      const t = toks[k].text;
      // A function's body ends where its own statements about it begin.
      if (
        (t === 'comment' && toks[k + 1]?.text === 'on') ||
        ((t === 'revoke' || t === 'grant') && toks[k + 1]?.text === 'execute')
      ) {
        current = '(file)';
      }
      const span = spans.get(current);
      if (span && span.file === file && toks[k].text !== ';') span.to = Math.max(span.to, toks[k].line);
      if (current !== '(file)' && toks[k].kind === 'word' && /disput|frozen/.test(t)) {
        mentions.set(current, (mentions.get(current) ?? new Set()).add(t));
      }
      if (t === 'function' && qualified(k + 1)) {
        // `create [or replace] function x(` opens a definition; `comment on`, `grant`, `revoke`
        // and `drop` name one without calling it.
        if (toks[k - 1]?.text === 'replace' || toks[k - 1]?.text === 'create') {
          defined.set(current = name(k + 1), file);
          spans.set(current, { file, from: toks[k].line, to: toks[k].line });
          arrayParams.set(current, { file, line: toks[k].line, count: arrayParamCount(toks, k + 4) });
          if (/disput|frozen/.test(current)) mentions.set(current, new Set([current]));
        }
        k += 3;
      } else if (qualified(k) && toks[k + 3]?.text === '(') {
        calls.push({ file, from: current, callee: name(k), line: toks[k].line });
        k += 2;
      } else if ((t === 'insert' && toks[k + 1]?.text === 'into') || (t === 'delete' && toks[k + 1]?.text === 'from')) {
        if (qualified(k + 2) && toks[k + 2].text === 'billing' && ledgerTables.has(toks[k + 4].text)) {
          writes.push({ file, fn: current, what: `${t} billing.${toks[k + 4].text}`, line: toks[k].line });
        }
      } else if (t === 'update' && qualified(k + 1) && toks[k + 1].text === 'billing') {
        const table = toks[k + 3].text, cols = writerColumns[table];
        let s = k + 4;
        while (s < toks.length && toks[s].text !== 'set' && toks[s].text !== ';') s++;
        if (cols && toks[s]?.text === 'set') {
          const hit = setTargets(toks, s + 1).filter((c) => cols === 'any' || cols.has(c));
          if (hit.length) {
            writes.push({
              file,
              fn: current,
              what: `update billing.${table} set ${hit.join(', ')}`,
              line: toks[k].line,
            });
          }
        }
      }
    }
  }
  return { files, defined, calls, writes, mentions, spans, arrayParams };
}

/** The array parameters (not `out`) of the parameter list whose `(` is toks[k]. */
function arrayParamCount(toks: Token[], k: number): number {
  let depth = 0, count = 0, isOut = false, isArray = false;
  for (let i = k; i < toks.length; i++) {
    const t = toks[i];
    if (t.text === '(') depth++;
    else if (t.text === ')' && --depth === 0) return count + (isArray && !isOut ? 1 : 0);
    else if (depth === 1 && t.text === ',') {
      if (isArray && !isOut) count++;
      isOut = isArray = false;
    } else if (depth === 1 && t.kind === 'word' && t.text === 'out' && toks[i - 1].text !== 'in') isOut = true;
    else if (depth === 1 && t.text === '[' && toks[i + 1]?.text === ']') isArray = true;
  }
  return count;
}

const layerOf = (file: string) => Number(/^(\d+)-/.exec(file)![1]);

/**
 * Calls still pointing up, each `caller -> callee`, to be moved down (the check fails on a call
 * not listed here, and on a listed one that no longer exists). None: the core calls nothing
 * above it (a refund's take-backs are the tick's, billing.take_back_claims in 51-refunds-disputes.sql).
 */
export const upwardCallsKnown: string[] = [];

/** What breaks the layers: calls up not listed, and listed ones that are gone. */
export function layerProblems(dir: string, known: string[] = upwardCallsKnown): string[] {
  const { defined, calls } = readSchemas(dir);
  const problems: string[] = [];
  const seen = new Set<string>();
  for (const c of calls) {
    const at = defined.get(c.callee);
    if (!at || layerOf(at) <= layerOf(c.file)) continue;
    const pair = `${c.from} -> ${c.callee}`;
    seen.add(pair);
    if (!known.includes(pair)) {
      problems.push(`${c.file}:${c.line} ${c.from} calls ${c.callee}, defined above it in ${at}: calls point down`);
    }
  }
  for (const pair of known) {
    if (!seen.has(pair)) problems.push(`${pair} no longer calls up: take it off upwardCallsKnown`);
  }
  return problems;
}

/** Functions taking more than two array parameters: state split into parallel arrays. */
export function arrayParamProblems(dir: string): string[] {
  return [...readSchemas(dir).arrayParams].filter(([, a]) => a.count > 2)
    .map(([fn, a]) =>
      `${a.file}:${a.line} ${fn} takes ${a.count} array parameters: pass one record (at most two arrays)`
    );
}

/** Ledger writes outside the one writer. */
export function writerProblems(dir: string): string[] {
  return readSchemas(dir).writes.filter((w) => w.fn !== theWriter && !writerSteps.has(w.fn))
    .map((w) => `${w.file}:${w.line} ${w.fn} does ${w.what}: only ${theWriter} writes the ledger`);
}

if (import.meta.main) {
  const dir = Deno.args[0] ?? 'supabase/schemas';
  const problems = [...layerProblems(dir), ...writerProblems(dir), ...arrayParamProblems(dir)];
  for (const p of problems) console.error(p);
  const { calls, defined } = readSchemas(dir);
  console.log(`${defined.size} functions, ${calls.length} calls: ${problems.length} problem(s)`);
  if (problems.length) Deno.exit(1);
}
