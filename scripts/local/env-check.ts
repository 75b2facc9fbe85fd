// The variables each function reads (env-catalog.ts), checked against the environment, and
// what live mode refuses (live-config.ts). Never prints a value.
import { parseArgs } from 'node:util';
import { liveModeProblems } from '../../supabase/functions/_shared/live-config.ts';
import { everyFunction, functions, localOnly, markdownTable, platform } from './env-catalog.ts';

const { values } = parseArgs({
  args: Deno.args,
  // --hosted: the platform provides its own variables (a project's secrets file is being checked).
  options: { function: { type: 'string' }, markdown: { type: 'boolean' }, hosted: { type: 'boolean' } },
});
if (values.markdown) {
  console.log(markdownTable());
  Deno.exit(0);
}
const names = values.function ? [values.function] : Object.keys(functions);
const providedByPlatform = (v: string) =>
  values.hosted === true && [...platform.required, ...platform.optional].includes(v);
const present = (v: string) => (Deno.env.get(v) ?? '') !== '';
let failures = 0;
for (const name of names) {
  const spec = functions[name];
  if (!spec) {
    console.error(`unknown function ${name}; known: ${Object.keys(functions).join(', ')} (./scripts/env-check --help)`);
    Deno.exit(2);
  }
  console.log(name);
  const required = new Set([...platform.required, ...spec.required]);
  const optional = new Set([...platform.optional, ...everyFunction, ...spec.optional].filter((v) => !required.has(v)));
  for (const [kind, vars] of [['required', required], ['optional', optional]] as const) {
    for (const v of vars) {
      if (providedByPlatform(v)) {
        console.log(`  platform  ${kind.padEnd(8)}  ${v}`);
        continue;
      }
      if (kind === 'required' && !present(v)) failures++;
      const label = localOnly.includes(v) ? 'local' : kind;
      console.log(
        `  ${present(v) ? 'present' : kind === 'required' ? 'MISSING' : 'unset  '}  ${label.padEnd(8)}  ${v}`,
      );
    }
  }
  if (spec.required.includes('STRIPE_SECRET_KEY')) {
    const mode = Deno.env.get('STRIPE_MODE') ?? '';
    const keyMode = (Deno.env.get('STRIPE_SECRET_KEY') ?? '').match(/^(?:sk|rk)_(test|live)_/)?.[1];
    const okMode = !!keyMode && keyMode === mode;
    if (!okMode) failures++;
    console.log(
      `  ${okMode ? 'ok     ' : 'MISMATCH'}  stripe    STRIPE_SECRET_KEY is ${
        keyMode ? `a ${keyMode}` : 'an unrecognised'
      } key; STRIPE_MODE is ${mode || 'unset'}`,
    );
  }
}
const unsafe = liveModeProblems();
if (unsafe.length) {
  console.log('\nlive mode (STRIPE_MODE=live) refuses, and /health/readyz fails on (live_config):');
  for (const { variable, problem } of unsafe) console.log(`  UNSAFE   ${variable} ${problem}`);
  failures += unsafe.length;
}
if (failures) {
  console.log(`\n${failures} problem(s): required variables missing or mismatched, or unsafe in live mode.`);
  Deno.exit(1);
}
console.log('\nall required variables present; nothing unsafe for the mode.');
