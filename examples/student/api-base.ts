// Where the page finds the API. The server that serves the page names it (the local stack's
// student-page.ts writes the stack's own SUPABASE_URL into the page's `scholarlink-api` meta tag,
// whatever ports it runs on); `?api=` overrides it for the tab, so it survives Checkout's round trip.

/** The page's `<meta name="scholarlink-api">` tag, whose content is the API's base URL. */
const metaTag = /<meta name="scholarlink-api" content="[^"]*">/;

/** The page's HTML naming `api` as its API (the tag's content, HTML-escaped). */
export function withApiBase(html: string, api: string): string {
  if (!metaTag.test(html)) throw new Error('the page has no <meta name="scholarlink-api"> tag');
  const escaped = api.replaceAll('&', '&amp;').replaceAll('"', '&quot;').replaceAll('<', '&lt;');
  return html.replace(metaTag, `<meta name="scholarlink-api" content="${escaped}">`);
}

/** The API's base URL: what the tab kept from `?api=`, else what the page was served with, else Supabase's local default. */
export const apiBase = (kept: string | null, served: string | null | undefined): string =>
  (kept || served || 'http://127.0.0.1:54321').replace(/\/+$/, '');
