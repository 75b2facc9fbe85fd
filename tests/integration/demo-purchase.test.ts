import assert from 'node:assert/strict';

Deno.test('./scripts/demo-purchase runs the starter flow and prints the charge, balance and ledger', async () => {
  const out = await new Deno.Command('./scripts/demo-purchase', { stdout: 'piped', stderr: 'piped' }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  assert.match(text, /Stripe charge ch_\w+: 999 usd succeeded, fee 59, net 940/);
  assert.match(text, /Balance: 9990 credits/);
  assert.match(text, /purchase 9990 → 9990/);
});
