// Runs dependency checks in parallel, each bounded by a timeout, into one report.
import { ConfigError, UnsafeConfigError } from '../_shared/env.ts';

export type CheckResult = {
  status: 'ok' | 'failing';
  durationMs: number;
  error?: string;
  variables?: string[];
  problems?: string[];
};
export type Report = { status: 'ok' | 'failing'; checks: Record<string, CheckResult> };

async function withTimeout(work: Promise<void>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const expiry = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
  });
  try {
    await Promise.race([work, expiry]);
  } finally {
    clearTimeout(timer);
  }
}

export async function runChecks(checks: Record<string, () => Promise<void>>, timeoutMs = 2000): Promise<Report> {
  const entries = await Promise.all(
    Object.entries(checks).map(async ([name, check]): Promise<[string, CheckResult]> => {
      const started = performance.now();
      const durationMs = () => Math.round(performance.now() - started);
      try {
        await withTimeout(check(), timeoutMs);
        return [name, { status: 'ok', durationMs: durationMs() }];
      } catch (err) {
        // The check's name is what operators need; the error class says timeout vs refusal;
        // a configuration check names the missing variables (never their values).
        if (err instanceof UnsafeConfigError) {
          const { variables, problems } = err;
          return [name, { status: 'failing', durationMs: durationMs(), error: 'config_unsafe', variables, problems }];
        }
        if (err instanceof ConfigError) {
          return [name, {
            status: 'failing',
            durationMs: durationMs(),
            error: 'config_missing',
            variables: err.variables,
          }];
        }
        const error = err instanceof Error && err.message.startsWith('timed out') ? 'timeout' : 'unreachable';
        return [name, { status: 'failing', durationMs: durationMs(), error }];
      }
    }),
  );
  const all = Object.fromEntries(entries);
  return { status: entries.every(([, r]) => r.status === 'ok') ? 'ok' : 'failing', checks: all };
}
