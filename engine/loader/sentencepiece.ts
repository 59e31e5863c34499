/**
 * SentencePiece `tokenizer.model` files: a decoder for `ModelProto` (on the
 * wire-format reader of protobuf.ts) and the conversion to the Hugging Face `tokenizer.json` object
 * that transformers' `LlamaConverter` would write for it (legacy style: a
 * `Replace` normalizer, no pre-tokenizer), so that one tokenizer library
 * serves both file kinds.
 *
 * Field numbers follow sentencepiece's `sentencepiece_model.proto`; fields
 * this engine does not need are skipped, whatever their wire type.
 *
 * @module
 */

import { ProtoError, ProtoReader, WireType } from "./protobuf.ts";

const { VARINT, LEN, I32 } = WireType;

/** `ModelProto.SentencePiece.Type`. */
export const PieceType = {
  NORMAL: 1,
  UNKNOWN: 2,
  CONTROL: 3,
  USER_DEFINED: 4,
  UNUSED: 5,
  BYTE: 6,
} as const;

/** `TrainerSpec.ModelType`. */
export const ModelType = { UNIGRAM: 1, BPE: 2, WORD: 3, CHAR: 4 } as const;

/** One vocabulary entry; its id is its index in {@linkcode SentencePieceModel.pieces}. */
export interface SentencePiece {
  readonly piece: string;
  readonly score: number;
  /** One of {@linkcode PieceType} (other numbers are kept as read). */
  readonly type: number;
}

/** The parts of `TrainerSpec` that change how text is tokenized. */
export interface TrainerSpec {
  /** One of {@linkcode ModelType}. */
  readonly modelType: number;
  readonly byteFallback: boolean;
  readonly splitDigits: boolean;
  readonly unkId: number;
  readonly bosId: number;
  readonly eosId: number;
  /** -1 when the model has no padding piece. */
  readonly padId: number;
}

/** `NormalizerSpec`. */
export interface NormalizerSpec {
  readonly name: string;
  /** Compiled normalization rules; empty for the "identity" normalizer. */
  readonly precompiledCharsmap: Uint8Array;
  readonly addDummyPrefix: boolean;
  readonly removeExtraWhitespaces: boolean;
  readonly escapeWhitespaces: boolean;
}

/** A parsed `tokenizer.model` (proto2 defaults filled in for absent fields). */
export interface SentencePieceModel {
  readonly pieces: readonly SentencePiece[];
  readonly trainerSpec: TrainerSpec;
  readonly normalizerSpec: NormalizerSpec;
}

/**
 * Decodes a SentencePiece `ModelProto` (the bytes of a `tokenizer.model`).
 * Absent fields take their proto2 defaults: a Unigram model without byte
 * fallback, a dummy prefix, extra whitespace removed.
 *
 * @example
 * ```ts
 * import { parseSentencePieceModel } from "./sentencepiece.ts";
 * const model = parseSentencePieceModel(await Deno.readFile("models/ernie-tiny-paddle/tokenizer.model"));
 * model.pieces[23]?.piece; // "<0x0A>"
 * ```
 */
export function parseSentencePieceModel(
  bytes: Uint8Array,
  source = "tokenizer.model",
): SentencePieceModel {
  try {
    return readModel(new ProtoReader(bytes));
  } catch (e) {
    if (!(e instanceof ProtoError)) throw e;
    throw new Error(
      `Cannot parse "${source}": not a SentencePiece model (${e.message}); ` +
        `expected the tokenizer.model file a SentencePiece trainer writes`,
    );
  }
}

function readModel(r: ProtoReader): SentencePieceModel {
  const pieces: SentencePiece[] = [];
  let trainerSpec = readTrainerSpec(null);
  let normalizerSpec = readNormalizerSpec(null);
  for (let f = r.next(); f !== null; f = r.next()) {
    if (f.number === 1 && f.wireType === LEN) pieces.push(readPiece(r.message()));
    else if (f.number === 2 && f.wireType === LEN) trainerSpec = readTrainerSpec(r.message());
    else if (f.number === 3 && f.wireType === LEN) normalizerSpec = readNormalizerSpec(r.message());
    else r.skip(f);
  }
  return { pieces, trainerSpec, normalizerSpec };
}

function readPiece(r: ProtoReader): SentencePiece {
  let piece = "", score = 0, type: number = PieceType.NORMAL;
  for (let f = r.next(); f !== null; f = r.next()) {
    if (f.number === 1 && f.wireType === LEN) piece = r.string();
    else if (f.number === 2 && f.wireType === I32) score = r.float32();
    else if (f.number === 3 && f.wireType === VARINT) type = r.int32();
    else r.skip(f);
  }
  return { piece, score, type };
}

/** Reads a `TrainerSpec`, or gives its defaults when `r` is null. */
function readTrainerSpec(r: ProtoReader | null): TrainerSpec {
  const spec = {
    modelType: ModelType.UNIGRAM as number,
    byteFallback: false,
    splitDigits: false,
    unkId: 0,
    bosId: 1,
    eosId: 2,
    padId: -1,
  };
  for (let f = r?.next() ?? null; r !== null && f !== null; f = r.next()) {
    if (f.wireType !== VARINT) r.skip(f);
    else if (f.number === 3) spec.modelType = r.int32();
    else if (f.number === 25) spec.splitDigits = r.bool();
    else if (f.number === 35) spec.byteFallback = r.bool();
    else if (f.number === 40) spec.unkId = r.int32();
    else if (f.number === 41) spec.bosId = r.int32();
    else if (f.number === 42) spec.eosId = r.int32();
    else if (f.number === 43) spec.padId = r.int32();
    else r.skip(f);
  }
  return spec;
}

/** Reads a `NormalizerSpec`, or gives its defaults when `r` is null. */
function readNormalizerSpec(r: ProtoReader | null): NormalizerSpec {
  const spec = {
    name: "",
    precompiledCharsmap: new Uint8Array(0),
    addDummyPrefix: true,
    removeExtraWhitespaces: true,
    escapeWhitespaces: true,
  };
  for (let f = r?.next() ?? null; r !== null && f !== null; f = r.next()) {
    if (f.number === 1 && f.wireType === LEN) spec.name = r.string();
    else if (f.number === 2 && f.wireType === LEN) spec.precompiledCharsmap = r.bytes().slice();
    else if (f.number === 3 && f.wireType === VARINT) spec.addDummyPrefix = r.bool();
    else if (f.number === 4 && f.wireType === VARINT) spec.removeExtraWhitespaces = r.bool();
    else if (f.number === 5 && f.wireType === VARINT) spec.escapeWhitespaces = r.bool();
    else r.skip(f);
  }
  return spec;
}

const SPACE = "\u2581";

/** A piece that becomes an added token of `tokenizer.json` (matched before the model runs). */
const isAddedType = (type: number) =>
  type === PieceType.UNKNOWN || type === PieceType.CONTROL || type === PieceType.USER_DEFINED;

/**
 * The Hugging Face `tokenizer.json` object for a SentencePiece model, as
 * transformers' `LlamaConverter` builds it:
 *
 * - BPE: vocab = pieces by id; merges = every split of a NORMAL piece into
 *   two NORMAL pieces, highest-scoring merged piece first (what
 *   `SentencePieceExtractor` derives: SentencePiece's BPE merges the adjacent
 *   pair whose concatenation scores highest, so no merge list is stored);
 * - Unigram: vocab = [piece, score] pairs;
 * - UNKNOWN, CONTROL and USER_DEFINED pieces are special added tokens;
 * - normalizer: `remove_extra_whitespaces` as two regex Replaces, `Prepend
 *   "▁"` when `add_dummy_prefix`, then `Replace " " → "▁"`; the decoder
 *   undoes them (`Replace`, `ByteFallback`, `Fuse`, `Strip` of the prefix).
 *
 * A non-empty `precompiled_charsmap` becomes a `Precompiled` normalizer.
 * Differences from SentencePiece itself, where they exist, are in
 * whitespace removal next to special tokens (each text span between added
 * tokens is normalized on its own).
 *
 * @example
 * ```ts
 * import { parseSentencePieceModel, sentencePieceToTokenizerJson } from "./sentencepiece.ts";
 * const bytes = await Deno.readFile("models/ernie-tiny-paddle/tokenizer.model");
 * const json = sentencePieceToTokenizerJson(parseSentencePieceModel(bytes));
 * ```
 */
export function sentencePieceToTokenizerJson(
  model: SentencePieceModel,
  source = "tokenizer.model",
): Record<string, unknown> {
  const { pieces, trainerSpec: trainer, normalizerSpec: norm } = model;
  const fail = (reason: string) => new Error(`Cannot convert "${source}": ${reason}`);
  const unk = pieces[trainer.unkId];
  if (unk === undefined) throw fail(`unk_id ${trainer.unkId} is not a piece id`);

  let tokenizerModel: Record<string, unknown>;
  if (trainer.modelType === ModelType.BPE) {
    const vocab = new Map<string, number>();
    pieces.forEach((p, id) => {
      if (vocab.has(p.piece)) throw fail(`piece ${JSON.stringify(p.piece)} occurs twice`);
      vocab.set(p.piece, id);
    });
    tokenizerModel = {
      type: "BPE",
      dropout: null,
      unk_token: unk.piece,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: true,
      byte_fallback: trainer.byteFallback,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab),
      merges: bpeMerges(pieces, vocab),
    };
  } else if (trainer.modelType === ModelType.UNIGRAM) {
    tokenizerModel = {
      type: "Unigram",
      unk_id: trainer.unkId,
      vocab: pieces.map((p) => [p.piece, p.score]),
      byte_fallback: trainer.byteFallback,
    };
  } else {
    const name = trainer.modelType === ModelType.WORD
      ? "WORD"
      : trainer.modelType === ModelType.CHAR
      ? "CHAR"
      : `${trainer.modelType}`;
    throw fail(`model type ${name} is not supported (only BPE and UNIGRAM are)`);
  }

  const normalizers: Record<string, unknown>[] = [];
  if (norm.precompiledCharsmap.length > 0) {
    normalizers.push({
      type: "Precompiled",
      precompiled_charsmap: base64(norm.precompiledCharsmap),
    });
  }
  if (norm.removeExtraWhitespaces) {
    normalizers.push(
      { type: "Replace", pattern: { Regex: "^ +| +$" }, content: "" },
      { type: "Replace", pattern: { Regex: " {2,}" }, content: " " },
    );
  }
  if (norm.addDummyPrefix) normalizers.push({ type: "Prepend", prepend: SPACE });
  if (norm.escapeWhitespaces) {
    normalizers.push({ type: "Replace", pattern: { String: " " }, content: SPACE });
  }

  const decoders: Record<string, unknown>[] = [];
  if (norm.escapeWhitespaces) {
    decoders.push({ type: "Replace", pattern: { String: SPACE }, content: " " });
  }
  if (trainer.byteFallback) decoders.push({ type: "ByteFallback" });
  decoders.push({ type: "Fuse" });
  if (norm.addDummyPrefix) decoders.push({ type: "Strip", content: " ", start: 1, stop: 0 });

  return {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: pieces.flatMap((p, id) =>
      isAddedType(p.type)
        ? [{
          id,
          content: p.piece,
          single_word: false,
          lstrip: false,
          rstrip: false,
          normalized: false,
          special: true,
        }]
        : []
    ),
    normalizer: normalizers.length === 0
      ? null
      : normalizers.length === 1
      ? normalizers[0]
      : { type: "Sequence", normalizers },
    pre_tokenizer: null,
    post_processor: null,
    decoder: { type: "Sequence", decoders },
    model: tokenizerModel,
  };
}

/**
 * BPE merges implied by the pieces: `(a, b)` for every NORMAL piece `a + b`
 * with `a` and `b` NORMAL pieces, ordered by the merged piece's score
 * (highest first), then its id, then the ids of `a` and `b`.
 */
function bpeMerges(
  pieces: readonly SentencePiece[],
  vocab: ReadonlyMap<string, number>,
): [string, string][] {
  const isNormal = (piece: string) => {
    const id = vocab.get(piece);
    return id !== undefined && pieces[id]?.type === PieceType.NORMAL;
  };
  // [left, right, score, merged id, left id, right id]
  const found: [string, string, number, number, number, number][] = [];
  pieces.forEach((p, id) => {
    if (p.type !== PieceType.NORMAL) return;
    const chars = Array.from(p.piece);
    for (let i = 1; i < chars.length; i++) {
      const left = chars.slice(0, i).join(""), right = chars.slice(i).join("");
      if (isNormal(left) && isNormal(right)) {
        found.push([left, right, p.score, id, vocab.get(left)!, vocab.get(right)!]);
      }
    }
  });
  found.sort((x, y) => y[2] - x[2] || x[3] - y[3] || x[4] - y[4] || x[5] - y[5]);
  return found.map(([left, right]) => [left, right]);
}

function base64(bytes: Uint8Array): string {
  let binary = "";
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}
