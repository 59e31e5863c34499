/**
 * A tiny SentencePiece-style BPE trainer and the Hugging Face `tokenizer.json`
 * it produces, laid out like ERNIE-4.5's: specials at 0..12, byte-fallback
 * tokens `<0x00>`..`<0xFF>` at 13..268, then `▁` and learned pieces. Spaces
 * become `▁` with no dummy prefix; digits are never merged, so each digit is
 * its own token.
 *
 * @module
 */

/** The word-boundary mark SentencePiece uses for a space. */
export const SPACE = "\u2581";

/** Ids 0..12: `<unk>`, `<s>`, `</s>` and the ERNIE special tokens. */
export const SPECIAL_TOKENS: readonly string[] = [
  "<unk>",
  "<s>",
  "</s>",
  "<|begin_of_sentence|>",
  "<|end_of_sentence|>",
  "<mask:1>",
  "<mask:4>",
  "<mask:5>",
  "<mask:6>",
  "<mask:7>",
  "<|IMAGE_PLACEHOLDER|>",
  "<|AUDIO_PLACEHOLDER|>",
  "<|LOC_0|>",
];

/** Id of byte 0x00's fallback token; byte 0xNN is `BYTE_BASE + NN`. */
export const BYTE_BASE = SPECIAL_TOKENS.length;

const isDigit = (s: string) => /[0-9]/.test(s);
/** Letters (and `▁`) merge only with letters, punctuation only with punctuation. */
const isWordy = (s: string) => /^[\p{L}\u2581']+$/u.test(s);

/**
 * Learns up to `numMerges` merges from `text`. Words are the pieces between
 * `▁` marks (a word keeps its leading `▁`), so no piece has `▁` inside it.
 * Ties break on the pair's text, so the result is deterministic.
 */
export function trainBpe(text: string, numMerges: number): [string, string][] {
  const counts = new Map<string, number>(); // word → frequency
  for (const line of text.split("\n")) {
    for (const w of line.replaceAll(" ", SPACE).split(new RegExp(`(?=${SPACE})`))) {
      if (w !== "") counts.set(w, (counts.get(w) ?? 0) + 1);
    }
  }
  const words = [...counts].map(([w, n]) => ({ syms: Array.from(w), n }));
  const merges: [string, string][] = [];
  while (merges.length < numMerges) {
    const pairs = new Map<string, number>();
    for (const { syms, n } of words) {
      for (let i = 0; i + 1 < syms.length; i++) {
        const a = syms[i]!, b = syms[i + 1]!;
        if (isDigit(a) || isDigit(b) || isWordy(a) !== isWordy(b)) continue;
        const key = `${a} ${b}`;
        pairs.set(key, (pairs.get(key) ?? 0) + n);
      }
    }
    let best: string | null = null, bestN = 0;
    for (const [key, n] of pairs) {
      if (n > bestN || (n === bestN && best !== null && key < best)) [best, bestN] = [key, n];
    }
    if (best === null) break;
    const [a, b] = best.split(" ") as [string, string];
    merges.push([a, b]);
    for (const w of words) {
      const out: string[] = [];
      for (let i = 0; i < w.syms.length; i++) {
        if (w.syms[i] === a && w.syms[i + 1] === b) {
          out.push(a + b);
          i++;
        } else out.push(w.syms[i]!);
      }
      w.syms = out;
    }
  }
  return merges;
}

/** The id → piece list: specials, bytes, `▁`, printable ASCII, then merge results. */
export function buildVocab(merges: readonly [string, string][]): string[] {
  const vocab = [...SPECIAL_TOKENS];
  for (let b = 0; b < 256; b++) vocab.push(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
  vocab.push(SPACE);
  for (let c = 0x21; c < 0x7f; c++) vocab.push(String.fromCharCode(c));
  const seen = new Set(vocab);
  for (const [a, b] of merges) {
    if (!seen.has(a + b)) {
      seen.add(a + b);
      vocab.push(a + b);
    }
  }
  return vocab;
}

/** A Hugging Face `tokenizer.json` object for the vocabulary and merges. */
export function tokenizerJson(vocab: readonly string[], merges: readonly [string, string][]) {
  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: SPECIAL_TOKENS.map((content, id) => ({
      id,
      content,
      single_word: false,
      lstrip: false,
      rstrip: false,
      normalized: false,
      special: true,
    })),
    normalizer: { type: "Replace", pattern: { String: " " }, content: SPACE },
    pre_tokenizer: null,
    post_processor: null,
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: SPACE }, content: " " },
        { type: "ByteFallback" },
        { type: "Fuse" },
      ],
    },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: "<unk>",
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: true,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab.map((piece, id) => [piece, id])),
      merges: merges.map(([a, b]) => [a, b]),
    },
  };
}
