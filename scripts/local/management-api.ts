// A stand-in for Supabase's Management API, just enough for the real CLI's
// `supabase functions deploy --use-api` to run to the end offline (loopback only). It keeps
// what the CLI uploads, byte for byte, so a test can rebuild each function from only that.
//   GET  /v1/projects/{ref}                                          the project
//   POST /v1/projects/{ref}/functions/deploy?slug=…&bundleOnly=true  one function (multipart)
//   PUT  /v1/projects/{ref}/functions                                activate the bundles
//   GET  /v1/projects/{ref}/functions                                list (for --prune)
// Standalone, writing each upload to DIR/<slug>/ and DIR/<slug>.metadata.json:
//   deno run -A scripts/local/management-api.ts [--port 54390] [--ref <20 letters>] [--out DIR]
import { parseArgs } from 'node:util';

/** The `metadata` part of a deploy upload, as the CLI sends it. */
export interface DeployMetadata {
  name?: string;
  entrypoint_path: string;
  import_map_path?: string;
  verify_jwt?: boolean;
  static_patterns?: string[];
}

/** One function as uploaded: its metadata and every file, keyed by the path the CLI gave. */
export interface Upload {
  slug: string;
  metadata: DeployMetadata;
  files: Map<string, Uint8Array>;
}

export interface ManagementApi {
  /** The base URL, for a CLI profile's `api_url`. */
  url: string;
  ref: string;
  /** The latest upload of each slug. */
  uploads: Map<string, Upload>;
  /** `METHOD /path?query` of every request, in order. */
  requests: string[];
  /** The slugs each bulk update (PUT …/functions) activated. */
  activated: string[][];
  close(): Promise<void>;
}

/** A syntactically valid access token and project ref, as the CLI requires them. */
export const rehearsalToken = `sbp_${'0123456789abcdef'.repeat(3).slice(0, 40)}`;
export const rehearsalRef = 'rehearsalprojectrefx';

/**
 * A CLI profile (`supabase --profile <file>`) pointing the CLI at `apiUrl`; the fields are
 * those the CLI's internal/utils/profile.go requires.
 * @example await Deno.writeTextFile(path, JSON.stringify(cliProfile(api.url)))
 */
export function cliProfile(apiUrl: string) {
  return {
    name: 'rehearsal',
    api_url: apiUrl,
    dashboard_url: `${apiUrl}/dashboard`,
    docs_url: `${apiUrl}/docs`,
    project_host: 'rehearsal.invalid',
    pooler_host: 'pooler.rehearsal.invalid',
    studio_image: 'supabase/studio:rehearsal',
  };
}

/**
 * Starts the fake API on 127.0.0.1 (port 0: any free port).
 * @example const api = startManagementApi({ port: 0 }); … await api.close();
 */
export function startManagementApi(
  opts: { port?: number; ref?: string; token?: string; onUpload?: (u: Upload) => Promise<void> } = {},
): ManagementApi {
  const ref = opts.ref ?? rehearsalRef;
  const token = opts.token ?? rehearsalToken;
  const uploads = new Map<string, Upload>();
  const requests: string[] = [];
  const activated: string[][] = [];
  let version = 0;

  const fail = (status: number, message: string) => Response.json({ message }, { status });
  const functionRow = (u: Upload) => ({
    id: `fn-${u.slug}`,
    slug: u.slug,
    name: u.metadata.name ?? u.slug,
    version,
    status: 'ACTIVE',
    entrypoint_path: u.metadata.entrypoint_path,
    import_map: Boolean(u.metadata.import_map_path),
    import_map_path: u.metadata.import_map_path ?? '',
    verify_jwt: u.metadata.verify_jwt ?? true,
    created_at: Date.now(),
    updated_at: Date.now(),
  });

  async function deploy(req: Request, slug: string): Promise<Response> {
    const form = await req.formData();
    const meta = form.get('metadata');
    if (typeof meta !== 'string') return fail(400, 'metadata part is missing');
    const metadata = JSON.parse(meta) as DeployMetadata;
    const files = new Map<string, Uint8Array>();
    for (const part of form.getAll('file')) {
      if (typeof part === 'string') return fail(400, 'a file part has no file name');
      const bytes = new Uint8Array(await part.arrayBuffer());
      const earlier = files.get(part.name);
      // The CLI may send the same path twice (import map and a static file); never two versions.
      if (earlier && !sameBytes(earlier, bytes)) return fail(400, `two different files named ${part.name}`);
      files.set(part.name, bytes);
    }
    version++;
    const upload = { slug, metadata, files };
    uploads.set(slug, upload);
    await opts.onUpload?.(upload);
    return Response.json(functionRow(upload), { status: 201 });
  }

  const server = Deno.serve({ port: opts.port ?? 0, hostname: '127.0.0.1', onListen: () => {} }, async (req) => {
    const url = new URL(req.url);
    requests.push(`${req.method} ${url.pathname}${url.search}`);
    if (req.headers.get('authorization') !== `Bearer ${token}`) return fail(401, 'Unauthorized');
    const m = url.pathname.match(/^\/v1\/projects\/([^/]+)(\/.*)?$/);
    if (!m || m[1] !== ref) return fail(404, 'Project not found');
    const rest = m[2] ?? '';
    if (req.method === 'GET' && rest === '') {
      return Response.json({
        id: ref,
        ref,
        name: 'rehearsal',
        organization_id: 'rehearsal-org',
        organization_slug: 'rehearsal-org',
        region: 'us-east-1',
        status: 'ACTIVE_HEALTHY',
        created_at: new Date().toISOString(),
        database: {
          host: `db.${ref}.rehearsal.invalid`,
          version: '15.8',
          postgres_engine: '15',
          release_channel: 'ga',
        },
      });
    }
    if (req.method === 'POST' && rest === '/functions/deploy') {
      const slug = url.searchParams.get('slug') ?? '';
      if (!/^[A-Za-z][A-Za-z0-9_-]*$/.test(slug)) return fail(400, 'slug is missing or invalid');
      return await deploy(req, slug);
    }
    if (req.method === 'PUT' && rest === '/functions') {
      const body = await req.json() as { slug: string }[];
      activated.push(body.map((f) => f.slug));
      return Response.json({ functions: [...uploads.values()].map(functionRow) });
    }
    if (req.method === 'GET' && rest === '/functions') return Response.json([...uploads.values()].map(functionRow));
    return fail(404, `not part of this stand-in: ${req.method} ${url.pathname}`);
  });
  const { port } = server.addr as Deno.NetAddr;
  return { url: `http://127.0.0.1:${port}`, ref, uploads, requests, activated, close: () => server.shutdown() };
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * Writes an upload's files under `dir`, exactly at the paths the CLI gave; refuses a path
 * that would land outside it.
 */
export async function writeUpload(upload: Upload, dir: string): Promise<void> {
  for (const [path, bytes] of upload.files) {
    if (path.startsWith('/') || path.split('/').includes('..') || path.includes('\\')) {
      throw new Error(`${upload.slug}: uploaded path ${path} would land outside the function`);
    }
    const target = `${dir}/${path}`;
    await Deno.mkdir(target.slice(0, target.lastIndexOf('/')), { recursive: true });
    await Deno.writeFile(target, bytes);
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { port: { type: 'string', default: '54390' }, ref: { type: 'string' }, out: { type: 'string' } },
  });
  const out = values.out;
  const api = startManagementApi({
    port: Number(values.port),
    ref: values.ref,
    onUpload: async (upload) => {
      const { slug, metadata, files } = upload;
      console.log(`${slug}: ${files.size} files, import_map_path ${JSON.stringify(metadata.import_map_path)}`);
      if (!out) return;
      await writeUpload(upload, `${out}/${slug}`);
      await Deno.writeTextFile(`${out}/${slug}.metadata.json`, JSON.stringify(metadata, null, 2) + '\n');
    },
  });
  const profile = `${await Deno.makeTempDir({ prefix: 'management-api-' })}/profile.json`;
  await Deno.writeTextFile(profile, JSON.stringify(cliProfile(api.url)));
  console.log(`management API stand-in on ${api.url}; deploy to it with:
  SUPABASE_ACCESS_TOKEN=${rehearsalToken} supabase --profile ${profile} \\
    functions deploy --remote=${api.ref} --use-api --yes`);
}
