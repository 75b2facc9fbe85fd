// Fault injection for the reliability tests: with FAILPOINTS=name[,name…] in its environment a
// process dies on the spot (exit 137, as after kill -9) when it reaches a named point. Unset in
// every real deployment; the points cost one Set lookup.
const armed = new Set((Deno.env.get('FAILPOINTS') ?? '').split(',').map((s) => s.trim()).filter(Boolean));

/** Dies here if the failpoint `name` is armed. */
export function failpoint(name: string): void {
  if (armed.has(name)) Deno.exit(137);
}
