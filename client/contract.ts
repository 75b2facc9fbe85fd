// The service's contract, as the client sees it: types only, so nothing outside client/ is
// imported at run time. In the npm package (client/build.ts) this file becomes a plain
// `contract.d.ts` generated from the same source, so the two cannot drift.
export type * from '../supabase/functions/_shared/contract/index.ts';
