// Preloaded into Portkey's gateway (node --import): its streaming path appends headers to the
// upstream's Response, which Node 20's fetch makes immutable (TypeError: immutable). Each fetch
// answer is re-wrapped with headers of its own; the body is passed through untouched.
const fetchOf = globalThis.fetch;
globalThis.fetch = async (...args) => {
  const r = await fetchOf(...args);
  return new Response(r.body, { status: r.status, statusText: r.statusText, headers: new Headers(r.headers) });
};
