// Where the example student page finds the API (examples/student/api-base.ts): the address the
// server writes into the page (the local stack's own), unless ?api= named another for the tab;
// and what the page says when nothing answered there.
import assert from 'node:assert/strict';
import { apiBase, withApiBase } from '../../examples/student/api-base.ts';
import { studentMessage } from '../../examples/student/messages.ts';
import { networkError } from '../../client/errors.ts';

const page = await Deno.readTextFile(new URL('../../examples/student/index.html', import.meta.url));

Deno.test('the served page names the API it was served with, escaped', () => {
  const html = withApiBase(page, 'http://127.0.0.1:60321');
  assert.match(html, /<meta name="scholarlink-api" content="http:\/\/127\.0\.0\.1:60321">/);
  assert.doesNotMatch(html, /54321/);
  assert.match(withApiBase(page, 'http://x/"><script>'), /content="http:\/\/x\/&quot;>&lt;script>"/);
  assert.throws(() => withApiBase('<html></html>', 'http://x'), /scholarlink-api/);
});

Deno.test("the page's API: ?api= kept for the tab, else the served one, else Supabase's local default", () => {
  assert.equal(apiBase('http://a:1/', 'http://b:2'), 'http://a:1');
  assert.equal(apiBase(null, 'http://b:2'), 'http://b:2');
  assert.equal(apiBase(null, ''), 'http://127.0.0.1:54321');
});

Deno.test('no answer at all names the address asked and what to check', () => {
  const err = networkError('Failed to fetch');
  const m = studentMessage(err, { api: 'http://127.0.0.1:60321', origin: 'http://127.0.0.1:60330' });
  assert.match(m.text, /^We couldn't reach ScholarLink at http:\/\/127\.0\.0\.1:60321\. .*running at that address/);
  assert.match(
    m.details,
    /NETWORK_ERROR .* allow this page's origin http:\/\/127\.0\.0\.1:60330 \(CORS_ALLOWED_ORIGINS\)/,
  );
});
