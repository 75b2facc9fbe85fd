// POST /v1/embeddings: OpenAI's Embeddings API. Vectors are deterministic (a hash of each
// input seeds them), unit length and exact in Float32, so `float` and `base64` agree. They have
// the model's own dimension (text-embedding-3-large 3,072; -3-small, ada-002 and any other model
// 1,536), or the `dimensions` asked for, refused as OpenAI refuses it: above the model's own, or
// asked of ada-002.
import type OpenAI from 'openai';
import {
  calls,
  type Directives,
  directivesIn,
  type Json,
  jsonBody,
  openaiError,
  openaiUnauthorized,
  sleep,
  textTokens,
} from './common.ts';

type Input = { text: string } | { tokens: number[] };
type Usage = OpenAI.Embeddings.CreateEmbeddingResponse.Usage;
type WireEmbedding = Omit<OpenAI.Embeddings.Embedding, 'embedding'> & { embedding: number[] | string };
type WireResponse = Omit<OpenAI.Embeddings.CreateEmbeddingResponse, 'data' | 'usage'> & {
  data: WireEmbedding[];
  usage?: Usage;
};

/** Each OpenAI model's own dimension; any other model's is the commonest one (1,536). */
const nativeDims: Record<string, number> = {
  'text-embedding-3-large': 3072,
  'text-embedding-3-small': 1536,
  'text-embedding-ada-002': 1536,
};

const isTokens = (x: unknown): x is number[] => Array.isArray(x) && x.every((t) => Number.isInteger(t));

/** The inputs: a string, strings, one array of token ids, or arrays of token ids; null when none of these. */
function inputsOf(input: unknown): Input[] | null {
  if (typeof input === 'string') return [{ text: input }];
  if (!Array.isArray(input) || input.length === 0) return null;
  if (isTokens(input)) return [{ tokens: input }];
  const out: Input[] = [];
  for (const x of input) {
    if (typeof x === 'string') out.push({ text: x });
    else if (isTokens(x)) out.push({ tokens: x });
    else return null;
  }
  return out;
}

/** A unit vector of `dims` Float32 values seeded by the input (FNV-1a, then mulberry32). */
function vectorOf(input: Input, dims: number): number[] {
  const key = 'text' in input ? `t:${input.text}` : `i:${input.tokens.join(',')}`;
  let h = 0x811c9dc5;
  for (let i = 0; i < key.length; i++) h = Math.imul(h ^ key.charCodeAt(i), 0x01000193);
  const next = () => {
    h = (h + 0x6d2b79f5) | 0;
    let t = Math.imul(h ^ (h >>> 15), 1 | h);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const v = Array.from({ length: dims }, () => next() * 2 - 1);
  const norm = Math.hypot(...v) || 1;
  return v.map((x) => Math.fround(x / norm));
}

/** Little-endian Float32 bytes, base64: what OpenAI sends for `encoding_format: 'base64'`. */
function base64Of(v: number[]): string {
  const bytes = new Uint8Array(v.length * 4);
  const view = new DataView(bytes.buffer);
  v.forEach((x, i) => view.setFloat32(i * 4, x, true));
  let s = '';
  for (const b of bytes) s += String.fromCharCode(b);
  return btoa(s);
}

const invalid = (message: string, param: string) =>
  Response.json({ error: { message, type: 'invalid_request_error', param, code: null } }, { status: 400 });

/** The directives of every input string, later ones winning. */
export function directives(body: Json): Directives {
  const d: Directives = {};
  for (const i of inputsOf(body.input) ?? []) {
    if ('text' in i && i.text.includes('#standin')) Object.assign(d, directivesIn(i.text));
  }
  return d;
}

export async function embeddings(req: Request, key: string): Promise<Response> {
  const unauthorized = openaiUnauthorized(req, key);
  if (unauthorized) return unauthorized;
  const body = await jsonBody(req);
  const inputs = inputsOf(body.input);
  if (!inputs) return invalid("'input' must be a string, strings, token ids or arrays of token ids", 'input');
  const native = nativeDims[String(body.model)] ?? 1536;
  const dims = body.dimensions === undefined || body.dimensions === null ? native : Number(body.dimensions);
  if (!Number.isInteger(dims) || dims < 1 || dims > native) {
    return invalid(`'dimensions' must be a whole number from 1 to ${native} for this model`, 'dimensions');
  }
  if (body.model === 'text-embedding-ada-002' && dims !== native) {
    return invalid('This model does not support specifying dimensions.', 'dimensions');
  }
  const format = body.encoding_format ?? 'float';
  if (format !== 'float' && format !== 'base64') {
    return invalid("'encoding_format' must be float or base64", 'encoding_format');
  }

  const d = directives(body);
  const tag = d.tag ?? crypto.randomUUID();
  if (d.first_byte_delay) await sleep(Number(d.first_byte_delay));
  if (d.fail) return Response.json(openaiError(Number(d.fail)), { status: Number(d.fail) });

  let prompt = Number(d.extra_prompt ?? 0);
  for (const i of inputs) prompt += 'text' in i ? textTokens(i.text) : i.tokens.length;
  const usage: Usage = { prompt_tokens: prompt, total_tokens: prompt };
  const response: WireResponse = {
    object: 'list',
    model: String(body.model),
    data: inputs.map((input, index) => {
      const v = vectorOf(input, dims);
      return { object: 'embedding', index, embedding: format === 'base64' ? base64Of(v) : v };
    }),
    ...(d.no_usage ? {} : { usage }),
  };
  calls.set(tag, { status: 'done', protocol: 'embeddings', usage: d.no_usage ? undefined : usage });
  return Response.json(response);
}
