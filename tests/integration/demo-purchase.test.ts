import assert from 'node:assert/strict';

Deno.test('./scripts/demo-purchase runs the starter flow and prints the charge, balance and ledger', async () => {
  const out = await new Deno.Command('./scripts/demo-purchase', { stdout: 'piped', stderr: 'piped' }).output();
  const text = new TextDecoder().decode(out.stdout);
  assert.equal(out.code, 0, new TextDecoder().decode(out.stderr));
  assert.match(text, /Stripe charge ch_\w+: \$9\.99 succeeded, Stripe's fee \$0\.59, net \$9\.40/);
  assert.match(text, /Balance: 9,990 credits \(available 9,990\)/);
  assert.match(text, /purchase \+9,990 credits → 9,990/);
});
