// The local gateway, exiting cleanly on SIGTERM so `deno run --cpu-prof` writes its profile
// (a killed process writes none). Used by bench/request-path.ts with BENCH_CPU_PROF=<dir>.
Deno.addSignalListener('SIGTERM', () => Deno.exit(0));
await import('../scripts/local/gateway.ts');
