/**
 * Writes SentencePiece `tokenizer.model` files (protobuf `ModelProto`), for
 * the Paddle fixture, which ships one in place of `tokenizer.json` as the
 * real ERNIE-4.5-0.3B-Paddle repository does.
 *
 * @module
 */

import {
  ModelType,
  PieceType,
  type SentencePiece,
  type SentencePieceModel,
} from "../engine/loader/sentencepiece.ts";
import { BYTE_BASE, SPECIAL_TOKENS } from "./_bpe.ts";

/** Appends protobuf fields to a growing byte list. */
class ProtoWriter {
  readonly #out: number[] = [];

  /** A varint field (`int32` values below zero take ten bytes, as protobuf writes them). */
  varint(field: number, value: number | boolean): this {
    this.#key(field, 0);
    this.#varint(BigInt.asUintN(64, BigInt(typeof value === "boolean" ? Number(value) : value)));
    return this;
  }

  /** A `float` field (wire type 5, little-endian). */
  float32(field: number, value: number): this {
    this.#key(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    this.#out.push(...b);
    return this;
  }

  /** A length-delimited field: a string (UTF-8), raw bytes or an embedded message. */
  bytes(field: number, value: string | Uint8Array | ProtoWriter): this {
    const b = typeof value === "string"
      ? new TextEncoder().encode(value)
      : value instanceof ProtoWriter
      ? value.finish()
      : value;
    this.#key(field, 2);
    this.#varint(BigInt(b.length));
    for (const x of b) this.#out.push(x);
    return this;
  }

  finish(): Uint8Array {
    return new Uint8Array(this.#out);
  }

  #key(field: number, wireType: number) {
    this.#varint(BigInt(field * 8 + wireType));
  }

  #varint(v: bigint) {
    while (v >= 0x80n) {
      this.#out.push(Number(v & 0x7fn) | 0x80);
      v >>= 7n;
    }
    this.#out.push(Number(v));
  }
}

/**
 * Encodes a model as `ModelProto` bytes (the inverse of
 * `parseSentencePieceModel`). Fields at their proto2 default are still
 * written, except a piece's NORMAL type, so a file reads back the same.
 *
 * @example
 * ```ts
 * import { encodeSentencePieceModel, fixtureSentencePieceModel } from "./_sentencepiece.ts";
 * import { buildTokenizerFiles } from "./_tokenizer_files.ts";
 * const { tokenizerJson } = buildTokenizerFiles();
 * const bytes = encodeSentencePieceModel(fixtureSentencePieceModel(tokenizerJson));
 * ```
 */
export function encodeSentencePieceModel(model: SentencePieceModel): Uint8Array {
  const w = new ProtoWriter();
  for (const p of model.pieces) {
    const piece = new ProtoWriter().bytes(1, p.piece).float32(2, p.score);
    if (p.type !== PieceType.NORMAL) piece.varint(3, p.type);
    w.bytes(1, piece);
  }
  const t = model.trainerSpec;
  w.bytes(
    2,
    new ProtoWriter()
      .varint(3, t.modelType)
      .varint(4, model.pieces.length) // vocab_size
      .varint(25, t.splitDigits)
      .varint(35, t.byteFallback)
      .varint(40, t.unkId)
      .varint(41, t.bosId)
      .varint(42, t.eosId)
      .varint(43, t.padId),
  );
  const n = model.normalizerSpec;
  const normalizer = new ProtoWriter().bytes(1, n.name);
  if (n.precompiledCharsmap.length > 0) normalizer.bytes(2, n.precompiledCharsmap);
  w.bytes(
    3,
    normalizer
      .varint(3, n.addDummyPrefix)
      .varint(4, n.removeExtraWhitespaces)
      .varint(5, n.escapeWhitespaces),
  );
  return w.finish();
}

/**
 * The SentencePiece BPE model equivalent to the fixture's `tokenizer.json`
 * (see _bpe.ts): same pieces and ids; `<unk>` UNKNOWN, `<s>` and `</s>`
 * CONTROL, ERNIE's other special tokens USER_DEFINED; byte tokens BYTE;
 * the merged piece of merge n (from 0) scored −(n + 1), so the first merge
 * scores highest, other pieces 0; byte fallback and digit splitting on; no
 * dummy prefix and whitespace kept as it is, like ERNIE-4.5's tokenizer.
 */
export function fixtureSentencePieceModel(
  tokenizerJson: Readonly<Record<string, unknown>>,
): SentencePieceModel {
  const bpe = tokenizerJson["model"] as {
    vocab: Record<string, number>;
    merges: [string, string][];
  };
  const rank = new Map<string, number>();
  bpe.merges.forEach(([a, b], i) => {
    if (!rank.has(a + b)) rank.set(a + b, i);
  });
  const byId: string[] = [];
  for (const [piece, id] of Object.entries(bpe.vocab)) byId[id] = piece;
  const pieces = Array.from(byId, (piece, id): SentencePiece => {
    if (piece === undefined) throw new Error(`fixture vocab has no id ${id}`);
    const type = id === 0
      ? PieceType.UNKNOWN
      : id < 3
      ? PieceType.CONTROL
      : id < SPECIAL_TOKENS.length
      ? PieceType.USER_DEFINED
      : id < BYTE_BASE + 256
      ? PieceType.BYTE
      : PieceType.NORMAL;
    const r = rank.get(piece);
    return { piece, score: r === undefined ? 0 : -(r + 1), type };
  });
  return {
    pieces,
    trainerSpec: {
      modelType: ModelType.BPE,
      byteFallback: true,
      splitDigits: true,
      unkId: 0,
      bosId: 1,
      eosId: 2,
      padId: -1,
    },
    normalizerSpec: {
      name: "identity",
      precompiledCharsmap: new Uint8Array(0),
      addDummyPrefix: false,
      removeExtraWhitespaces: false,
      escapeWhitespaces: true,
    },
  };
}
