// The dashboard's script is typed TypeScript served as the text of its functions: what the page
// sends must be plain JavaScript (Deno stripped the types), parse as a script, and be whole (a
// section reaching for a module-level name would fail only in the browser).
import assert from 'node:assert/strict';
import { dashboardPage } from '../../supabase/functions/admin/dashboard-page.ts';

const scriptOf = (html: string) => {
  const m = html.match(/<script nonce="n0nce">([\s\S]*)<\/script>/);
  assert.ok(m, 'the page has one script carrying the nonce');
  return m[1];
};

Deno.test('the dashboard script is plain JavaScript that parses', () => {
  const script = scriptOf(dashboardPage('n0nce'));
  assert.doesNotThrow(() => new Function(script), 'the served text parses as JavaScript');
  assert.doesNotMatch(
    script,
    /: (string|number|boolean|DashboardKit|HTMLElement)\b[,)=]/,
    'no type annotation is left',
  );
  assert.doesNotMatch(
    script,
    /\binterface |\btype \w+ = |\bimport /,
    'no declaration or import the browser cannot run',
  );
});
