// A local stand-in for Postmark's email API on :54324 (where `supabase start` puts its mail
// catcher): accepts POST /email in Postmark's format with X-Postmark-Server-Token, keeps what
// it received in memory, and lists it. For development and tests only.
//   GET /server (Postmark's token check)   GET /_catcher/messages   DELETE /_catcher/messages
//   POST /_catcher/faults {"fail_next": n}   answer the next n sends with Postmark's error 500
const port = Number(Deno.env.get('MAIL_CATCHER_PORT') ?? 54324);
const token = Deno.env.get('POSTMARK_SERVER_TOKEN') ?? '';
const messages: Array<Record<string, unknown>> = [];
let failNext = 0;

Deno.serve({ hostname: '127.0.0.1', port, onListen: () => console.log(`mail catcher on :${port}`) }, async (req) => {
  const url = new URL(req.url);
  if (url.pathname === '/email' && req.method === 'POST') {
    if (req.headers.get('x-postmark-server-token') !== token) {
      return Response.json({ ErrorCode: 10, Message: 'Request does not contain a valid Server token.' }, {
        status: 401,
      });
    }
    if (failNext > 0) {
      failNext--;
      return Response.json({ ErrorCode: 500, Message: 'Internal server error (injected).' }, { status: 500 });
    }
    const body = await req.json();
    const id = crypto.randomUUID();
    messages.push({ ...body, MessageID: id, ReceivedAt: new Date().toISOString() });
    return Response.json({
      To: body.To,
      SubmittedAt: new Date().toISOString(),
      MessageID: id,
      ErrorCode: 0,
      Message: 'OK',
    });
  }
  if (url.pathname === '/server' && req.method === 'GET') {
    if (req.headers.get('x-postmark-server-token') !== token) {
      return Response.json({ ErrorCode: 10, Message: 'Request does not contain a valid Server token.' }, {
        status: 401,
      });
    }
    return Response.json({ ID: 1, Name: 'local mail catcher', ServerLink: '' });
  }
  if (url.pathname === '/_catcher/messages') {
    if (req.method === 'DELETE') messages.length = 0;
    return Response.json({ messages });
  }
  if (url.pathname === '/_catcher/faults' && req.method === 'POST') {
    failNext = Number((await req.json()).fail_next ?? 0);
    return Response.json({ fail_next: failNext });
  }
  if (url.pathname === '/_catcher/healthz') return Response.json({ status: 'ok' });
  return Response.json({ ErrorCode: 404, Message: 'Not found' }, { status: 404 });
});
