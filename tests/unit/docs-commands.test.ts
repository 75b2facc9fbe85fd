// Every shell command in docs/deploy.md, docs/runbook.md and README.md is one the pinned tools accept:
// each `supabase …` is parsed against the pinned CLI's own --help (the subcommand exists, every
// flag exists and has its value, arguments only where it takes them), a command whose TARGET is
// "Local by default" carries --remote (these docs act on the hosted project), `functions deploy`
// carries --use-api (no Docker; the path the rehearsal proves); each `./scripts/…` exists and
// takes the flags given; any other program is one named below. Commands are read from sh code
// blocks (with `\` continuations, `&&`, `;`, `|` and `$(…)`) and from inline code spans that
// start with one of them.
import assert from 'node:assert/strict';

const root = new URL('../../', import.meta.url).pathname;
const supabaseCli = `${root}scripts/toolchain/node_modules/.bin/supabase`;
const docs = ['docs/deploy.md', 'docs/runbook.md', 'README.md'];
/** Pinned here (scripts/toolchain): accepted as they are. */
const pinned = new Set(['scripts/toolchain/node_modules/.bin/deno']);
/** Programs these docs may run that nothing here pins; every other one is checked. */
const unpinned = new Set([
  'cd',
  'cp',
  'mkdir',
  'export',
  'curl',
  'jq',
  'uuidgen',
  'openssl',
  'git',
  'terraform',
  'psql',
  'cat',
  'date',
  'umask',
  '$EDITOR',
]);

/** Splits one shell line into commands (each a list of words), respecting quotes. */
export function commandsOf(line: string): string[][] {
  const commands: string[][] = [];
  let words: string[] = [];
  let word = '';
  let quote = '';
  const endWord = () => {
    if (word) words.push(word);
    word = '';
  };
  const endCommand = () => {
    endWord();
    if (words.length) commands.push(words);
    words = [];
  };
  for (let i = 0; i < line.length; i++) {
    const ch = line[i];
    if (quote) {
      if (ch === quote) quote = '';
      else word += ch;
    } else if (ch === "'" || ch === '"') quote = ch;
    else if (ch === '#' && !word) break; // a comment
    else if (/\s/.test(ch)) endWord();
    else if (/^<[^<>\s]+>/.test(line.slice(i))) { // a placeholder such as <ref>, not a redirection
      const placeholder = line.slice(i).match(/^<[^<>\s]+>/)![0];
      word += placeholder;
      i += placeholder.length - 1;
    } else if (line.startsWith('$(', i)) {
      endCommand();
      i++;
    } else if (line.startsWith('&&', i) || line.startsWith('||', i)) {
      endCommand();
      i++;
    } else if (ch === ';' || ch === '|' || ch === ')' || ch === '(' || ch === '>' || ch === '<') {
      if (ch === '>' || ch === '<') {
        endWord();
        words.push(ch); // a redirection: its target is not an argument
      } else endCommand();
    } else word += ch;
  }
  endCommand();
  return commands.map((c) => {
    const cut = c.indexOf('>') >= 0 ? c.indexOf('>') : c.indexOf('<');
    const words = cut >= 0 ? c.slice(0, cut) : c;
    const start = words.findIndex((w) => !/^[A-Z_][A-Z0-9_]*=/.test(w)); // env assignments first
    return start >= 0 ? words.slice(start) : [];
  }).filter((c) => c.length > 0);
}

interface Found {
  doc: string;
  words: string[];
}

async function documentedCommands(): Promise<Found[]> {
  const found: Found[] = [];
  for (const doc of docs) {
    const text = await Deno.readTextFile(`${root}${doc}`);
    for (const block of text.matchAll(/^```(?:sh|bash|shell)\n([\s\S]*?)^```/gm)) {
      const lines = block[1].replace(/\\\n\s*/g, ' ').split('\n');
      for (const line of lines) for (const words of commandsOf(line)) found.push({ doc, words });
    }
    const prose = text.replace(/^```[\s\S]*?^```/gm, '');
    for (const span of prose.matchAll(/`([^`\n]+)`/g)) {
      if (!/^(supabase |\.\/scripts\/)|&& supabase /.test(span[1])) continue;
      for (const words of commandsOf(span[1])) found.push({ doc, words });
    }
  }
  return found;
}

interface Help {
  subcommands: Set<string>;
  /** Each flag (long and short names) → whether it takes a value: 'required', 'optional' or 'none'. */
  flags: Map<string, 'required' | 'optional' | 'none'>;
  takesArguments: boolean;
  localByDefault: boolean;
}

const helps = new Map<string, Promise<Help>>();
function helpOf(path: string[]): Promise<Help> {
  const key = path.join(' ');
  let help = helps.get(key);
  if (!help) {
    help = new Deno.Command(supabaseCli, {
      args: [...path, '--help'],
      cwd: '/tmp',
      env: { DO_NOT_TRACK: '1', SUPABASE_TELEMETRY_DISABLED: '1', NO_COLOR: '1' },
      stdout: 'piped',
      stderr: 'piped',
    }).output().then((out) => {
      const text = new TextDecoder().decode(out.stdout);
      assert.equal(out.code, 0, `supabase ${key} --help failed`);
      const section = (name: string) =>
        text.match(new RegExp(`^${name}\\n([\\s\\S]*?)(?:\\n\\n|(?![\\s\\S]))`, 'm'))?.[1] ?? '';
      const flags = new Map<string, 'required' | 'optional' | 'none'>();
      for (const line of `${section('FLAGS')}\n${section('GLOBAL FLAGS')}`.split('\n')) {
        const m = line.match(
          /^\s+(--[a-z0-9-]+)(\[=[^\]]*\])?(?:, (-[a-z]))?(?: (string|integer|choice|<[^>]+>|[a-z]+(?= {2})))?/,
        );
        if (!m) continue;
        const kind = m[2] ? 'optional' : m[4] ? 'required' : 'none';
        flags.set(m[1], kind);
        if (m[3]) flags.set(m[3], kind);
      }
      const usage = section('USAGE');
      return {
        subcommands: new Set(
          section('SUBCOMMANDS').split('\n').map((l) => l.trim().split(/[\s,]+/)[0]).filter(Boolean),
        ),
        flags,
        takesArguments: /<[^>]+>/.test(usage.replace(/<subcommand>/, '')),
        localByDefault: /^TARGET\n\s+Local by default/m.test(text),
      };
    });
    helps.set(key, help);
  }
  return help;
}

/** What is wrong with one `supabase …` command, against the pinned CLI's help. */
async function checkSupabase(words: string[]): Promise<string[]> {
  const path: string[] = [];
  let rest = words.slice(1);
  for (;;) {
    const next = rest.find((w) => !w.startsWith('-'));
    const help = await helpOf(path);
    if (next === undefined || !help.subcommands.has(next) || rest[0] !== next) break;
    path.push(next);
    rest = rest.slice(1);
  }
  const help = await helpOf(path);
  const problems: string[] = [];
  if (path.length === 0) problems.push(`"${rest[0] ?? ''}" is not a supabase subcommand`);
  if (help.subcommands.size > 0 && !help.takesArguments) problems.push(`supabase ${path.join(' ')} needs a subcommand`);
  let positional = 0;
  for (let i = 0; i < rest.length; i++) {
    const w = rest[i];
    if (!w.startsWith('-')) {
      positional++;
      continue;
    }
    const [name, value] = w.split(/=(.*)/s);
    const kind = help.flags.get(name);
    if (!kind) problems.push(`supabase ${path.join(' ')} has no flag ${name}`);
    else if (kind === 'none' && value !== undefined) problems.push(`${name} takes no value`);
    else if (kind === 'required' && value === undefined) {
      if (rest[i + 1] === undefined || rest[i + 1].startsWith('-')) problems.push(`${name} needs a value`);
      i++;
    }
  }
  if (positional > 0 && !help.takesArguments) problems.push(`supabase ${path.join(' ')} takes no arguments`);
  const flags = rest.map((w) => w.split('=')[0]);
  if (help.localByDefault && !flags.includes('--remote')) {
    problems.push(`supabase ${path.join(' ')} targets the local database without --remote`);
  }
  if (path.join(' ') === 'functions deploy' && !flags.includes('--use-api')) {
    problems.push('supabase functions deploy needs --use-api (bundled by the API, no Docker)');
  }
  return problems;
}

/** What is wrong with one `./scripts/…` command, against the script's own --help. */
async function checkScript(words: string[]): Promise<string[]> {
  const script = `${root}${words[0].replace(/^\.\//, '')}`;
  const exists = await Deno.stat(script).then((s) => s.isFile, () => false);
  if (!exists) return [`${words[0]} does not exist`];
  const out = await new Deno.Command(script, {
    args: ['--help'],
    stdout: 'piped',
    stderr: 'piped',
    env: { CI: 'true' },
  })
    .output();
  const usage = new TextDecoder().decode(out.stdout);
  const known = new Set(usage.match(/--[a-z][a-z0-9-]*/g) ?? []);
  return words.slice(1).filter((w) => w.startsWith('--') && !known.has(w.split('=')[0]))
    .map((w) => `${words[0]} has no option ${w.split('=')[0]}`);
}

Deno.test('every command in docs/deploy.md, docs/runbook.md and the README is one the pinned CLI and the scripts accept', async () => {
  const found = await documentedCommands();
  const supabase = found.filter((f) => f.words[0] === 'supabase');
  assert.ok(supabase.length >= 15, `the docs' supabase commands were found (${supabase.length})`);
  const problems = (await Promise.all(found.map(async ({ doc, words }) => {
    const program = words[0];
    const wrong = program === 'supabase'
      ? await checkSupabase(words)
      : program.startsWith('./scripts/')
      ? await checkScript(words)
      : unpinned.has(program) || pinned.has(program)
      ? []
      : [`${program} is not a program these docs may use (pinned, or in this test's list)`];
    return wrong.map((w) => `${doc}: ${words.join(' ')}\n    ${w}`);
  }))).flat();
  assert.deepEqual(problems, [], `\n${problems.join('\n')}`);
  assert.ok(found.some((f) => f.words[0] === './scripts/stripe-webhook-endpoint'), 'the endpoint script is documented');
});

Deno.test('the command reader splits lines as a shell does', () => {
  assert.deepEqual(commandsOf("A=1 supabase db push --remote 'x y' && cd .. # comment"), [
    ['supabase', 'db', 'push', '--remote', 'x y'],
    ['cd', '..'],
  ]);
  assert.deepEqual(commandsOf('T=$(curl -s "$U" | jq -r .t)'), [['curl', '-s', '$U'], ['jq', '-r', '.t']]);
  assert.deepEqual(commandsOf('./scripts/x --url u >> prod.env'), [['./scripts/x', '--url', 'u']]);
});

Deno.test('docs/deploy.md has the webhook events set by the script, never listed by hand for Stripe', async () => {
  const { connectEvents, platformEvents } = await import('../../supabase/functions/stripe-webhook/events.ts');
  const deploy = await Deno.readTextFile(`${root}docs/deploy.md`);
  const blocks = [...deploy.matchAll(/^```[\s\S]*?^```/gm)].map((m) => m[0]).join('\n');
  const listed = [...platformEvents, ...connectEvents].filter((e) => blocks.includes(e));
  assert.deepEqual(listed, [], 'event types in a command block: the script sets them from events.ts');
  assert.ok(!deploy.includes('enabled_events['), 'no hand-made enabled_events list');
});
