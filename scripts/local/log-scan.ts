// The suite's leak check: scans what the services logged during this run for personal data
// and secrets (the patterns redaction must remove). Usage: log-scan.ts <file>:<start-byte> …
// Exits 1 and names the file, line and pattern (never the match) when something leaked.
import { leakPatterns } from '../../supabase/functions/_shared/redact.ts';

let leaks = 0;
let scanned = 0;
for (const arg of Deno.args) {
  const at = arg.lastIndexOf(':');
  const [path, start] = [arg.slice(0, at), Number(arg.slice(at + 1))];
  const text = await Deno.readTextFile(path).catch(() => '');
  const lines = text.slice(start).split('\n');
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
