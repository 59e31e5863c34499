/**
 * The fixture tokenizer's files: `tokenizer.json` (trained here, see _bpe.ts)
 * and `tokenizer_config.json` with ERNIE-4.5's special tokens and its real
 * chat template.
 *
 * @module
 */

import { ERNIE_CHAT_TEMPLATE } from "../engine/loader/chat_template.ts";
import { buildVocab, SPECIAL_TOKENS, tokenizerJson, trainBpe } from "./_bpe.ts";
import { CORPUS } from "./_corpus.ts";

/** Number of merges the fixture tokenizer learns (the corpus may allow fewer). */
export const NUM_MERGES = 2000;

/** ERNIE-4.5's chat template, exactly as in its tokenizer_config.json. */
export const CHAT_TEMPLATE = ERNIE_CHAT_TEMPLATE;

/** Both tokenizer files as JSON objects, and the tokenizer's size. */
export interface TokenizerFiles {
  readonly tokenizerJson: Record<string, unknown>;
  readonly tokenizerConfig: Record<string, unknown>;
  /** Number of ids the tokenizer defines (≤ the model's vocab_size). */
  readonly size: number;
}

/** Trains the fixture tokenizer (deterministic, under a second) and builds its files. */
export function buildTokenizerFiles(): TokenizerFiles {
  const merges = trainBpe(CORPUS, NUM_MERGES);
  const vocab = buildVocab(merges);
  const addedTokensDecoder = Object.fromEntries(SPECIAL_TOKENS.map((content, id) => [
    String(id),
    { content, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true },
  ]));
  const tokenizerConfig = {
    add_bos_token: false,
    add_eos_token: false,
    added_tokens_decoder: addedTokensDecoder,
    bos_token: "<s>",
    eos_token: "</s>",
    pad_token: "<unk>",
    unk_token: "<unk>",
    cls_token: "<|begin_of_sentence|>",
    sep_token: "<|end_of_sentence|>",
    mask_token: "<mask:1>",
    sys_start_token: "<mask:4>",
    sys_end_token: "<mask:5>",
    header_start_token: "<mask:6>",
    header_end_token: "<mask:7>",
    additional_special_tokens: SPECIAL_TOKENS.slice(3),
    chat_template: CHAT_TEMPLATE,
    clean_up_tokenization_spaces: false,
    legacy: true,
    model_max_length: 131072,
    padding_side: "left",
    spaces_between_special_tokens: false,
    split_special_tokens: false,
    tokenizer_class: "Ernie4_5_Tokenizer",
  };
  return { tokenizerJson: tokenizerJson(vocab, merges), tokenizerConfig, size: vocab.length };
}
