// The suite's leak check: scans what the services and Postgres (its server log, where its
// configuration writes it: scripts/lib.sh pg_log_files) logged during this run for personal data
// and secrets (the patterns redaction must remove). Usage: log-scan.ts <file>:<start-byte> …
// Exits 1 and names the file, line and pattern (never the match) when something leaked, and
// when a log that exists cannot be read (a scan that reads nothing proves nothing).
import { leakPatterns } from '../../supabase/functions/_shared/redact.ts';

let leaks = 0;
let scanned = 0;
for (const arg of Deno.args) {
  const at = arg.lastIndexOf(':');
  const [path, start] = [arg.slice(0, at), Number(arg.slice(at + 1))];
  let text = '';
  try {
    // Bytes, not characters: the start is a byte offset (stat -c %s).
    text = new TextDecoder().decode((await Deno.readFile(path)).subarray(start));
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      console.log(`${path}: cannot be read (${(e as Error).name}): nothing of it was scanned`);
      leaks++;
    }
  }
  const lines = text.split('\n');
  lines.forEach((line, i) => {
    // In the Deno test output only the functions' own log lines count, not test names or asserts.
    if (path.endsWith('deno.log') && !line.startsWith('{"level"')) return;
    scanned++;
    for (const [name, pattern] of leakPatterns) {
      if (pattern.test(line)) {
        leaks++;
        console.log(`${path}: line ${i + 1} (of this run) contains a ${name}`);
      }
    }
  });
}
console.log(`scanned ${scanned} log lines, ${leaks} leak(s)`);
if (leaks) Deno.exit(1);
