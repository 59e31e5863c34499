/**
 * A tiny SentencePiece-style BPE tokenizer (byte fallback, `▁` for spaces, no
 * dummy prefix, ERNIE's special tokens and chat template) for unit tests.
 *
 * @module
 */

import { ModelTokenizer } from "../engine/loader/tokenizer.ts";
import { ERNIE_CHAT_TEMPLATE } from "../engine/loader/chat_template.ts";

export { ERNIE_CHAT_TEMPLATE };

/** Words the fixture merges into single pieces (every prefix is a piece too). */
const WORDS = ["User", "Assistant", "hi", "▁hi", "hello", "▁hello", "▁world", "<|", "|>", "end"];
const CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789:!?.,<>|_▁";

/** Builds the fixture's `tokenizer.json` object and `tokenizer_config.json` object. */
export function tinyTokenizerFiles(): {
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
} {
  const vocab: Record<string, number> = { "<unk>": 0, "<s>": 1, "</s>": 2 };
  let next = 3;
  const add = (piece: string) => {
    if (!(piece in vocab)) vocab[piece] = next++;
  };
  for (let b = 0; b < 256; b++) add(`<0x${b.toString(16).toUpperCase().padStart(2, "0")}>`);
  for (const c of CHARS) add(c);
  const merges: string[] = [];
  for (const word of WORDS) {
    const chars = [...word];
    let prefix = chars[0] as string;
    for (const c of chars.slice(1)) {
      const merge = `${prefix} ${c}`;
      if (!merges.includes(merge)) merges.push(merge);
      prefix += c;
      add(prefix);
    }
  }
  const special = ["<|begin_of_sentence|>", "<|end_of_sentence|>", "<mask:1>"];
  const added = [
    { id: 0, content: "<unk>", special: true },
    { id: 1, content: "<s>", special: true },
    { id: 2, content: "</s>", special: true },
    ...special.map((content) => ({ id: next++, content, special: true })),
  ].map((t) => ({ ...t, single_word: false, lstrip: false, rstrip: false, normalized: false }));
  const tokenizerJson = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: { type: "Replace", pattern: { String: " " }, content: "▁" },
    pre_tokenizer: null,
    post_processor: null,
    decoder: {
      type: "Sequence",
      decoders: [
        { type: "Replace", pattern: { String: "▁" }, content: " " },
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
      vocab,
      merges,
    },
  };
  const tokenizerConfig = {
    bos_token: "<s>",
    eos_token: "</s>",
    unk_token: "<unk>",
    pad_token: "<unk>",
    cls_token: "<|begin_of_sentence|>",
    sep_token: "<|end_of_sentence|>",
    clean_up_tokenization_spaces: false,
    chat_template: ERNIE_CHAT_TEMPLATE,
  };
  return { tokenizerJson, tokenizerConfig };
}

/** The fixture as a {@linkcode ModelTokenizer}. */
export function tinyTokenizer(): ModelTokenizer {
  const { tokenizerJson, tokenizerConfig } = tinyTokenizerFiles();
  return ModelTokenizer.fromObjects(tokenizerJson, tokenizerConfig, "tiny-fixture");
}
