// The most tokens a provider can bill for a text, counted before the call so a hold covers it.
// Two bounds, both safe: OpenAI's own tokenizer (o200k) counted exactly, and UTF-8 bytes, which
// no byte-level BPE (OpenAI's, Anthropic's) can exceed: each token is at least one byte.
import { encode } from 'gpt-tokenizer';

/** How a model's input is bounded: its provider's own tokenizer, or its UTF-8 bytes. */
export type TokenBound = 'o200k' | 'utf8';

/**
 * OpenAI's chat models count with o200k; any other family (Claude's own tokenizer, an
 * open model's) is bounded by bytes, which over-holds (about 3–4× for English) but never under.
 * @example tokenBoundOf('gpt-4o-mini') // 'o200k'; tokenBoundOf('claude-haiku-4-5') // 'utf8'
 */
export const tokenBoundOf = (model: string): TokenBound => /^(gpt-|chatgpt-|o\d)/.test(model) ? 'o200k' : 'utf8';

/**
 * UTF-8 bytes of `text`, without allocating (a lone surrogate is written as U+FFFD, 3 bytes).
 * @example utf8Bytes('é😀') // 6
 */
export function utf8Bytes(text: string): number {
  let n = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c < 0xdc00 && (text.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

// o200k's pre-tokenizer never puts a space that precedes a non-space in the same piece as what
// comes before it (a word takes one leading space, never a trailing one), so text cut just
// before such a space encodes to exactly the tokens of the whole. A stretch with no such space
// longer than LONGEST_STRETCH (one letter repeated, base64, a script written without spaces) is
// counted as its bytes instead: BPE's cost grows with the square of a piece's length.
const CUT = / (?=\S)/;
/** A special token's text (`<|endoftext|>`) in a prompt is text to the provider, and to the count. */
export const asText = { disallowedSpecial: new Set<string>(), allowedSpecial: new Set<string>() };
const LONGEST_STRETCH = 256;
const CHUNK = 4096;
/** Counting never holds the event loop longer than this: other requests run between slices. */
const SLICE_MS = 3;

/**
 * Counts texts' tokens under one bound, stopping as soon as the total passes `limit` (null), so
 * the work is bounded by the limit, not by the size of what was sent.
 * @example await countTokens(['hello world'], 'o200k', 128_000) // 2
 */
export async function countTokens(texts: Iterable<string>, bound: TokenBound, limit: number): Promise<number | null> {
  let n = 0;
  let slice = performance.now();
  const pause = async () => {
    if (performance.now() - slice < SLICE_MS) return;
    await new Promise((r) => setTimeout(r, 0));
    slice = performance.now();
  };
  for (const text of texts) {
    if (bound === 'utf8') {
      n += utf8Bytes(text);
      if (n > limit) return null;
      continue;
    }
    let chunkStart = 0, stretchStart = 0;
    const flush = (end: number) => {
      if (end > chunkStart) n += encode(text.slice(chunkStart, end), asText).length;
      chunkStart = end;
    };
    // A regex of its own: counting pauses between slices, and a shared lastIndex would be reset
    // by another request's count meanwhile.
    const cuts = new RegExp(CUT, 'g');
    for (let m = cuts.exec(text);; m = cuts.exec(text)) {
      const cut = m ? m.index : text.length;
      if (cut - stretchStart > LONGEST_STRETCH) {
        flush(stretchStart);
        n += utf8Bytes(text.slice(stretchStart, cut));
        chunkStart = cut;
      } else if (cut - chunkStart >= CHUNK) flush(cut);
      stretchStart = cut;
      if (n > limit) return null;
      if (!m) break;
      await pause();
    }
    flush(text.length);
    if (n > limit) return null;
  }
  return n;
}
