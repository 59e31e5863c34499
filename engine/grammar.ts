/**
 * Constrained decoding with xgrammar (`@mlc-ai/web-xgrammar`, its WebAssembly
 * build, what WebLLM uses): a grammar compiled once per engine and response
 * format, a matcher per sequence, and per step a token mask — a bitset over
 * the vocabulary (bit `id & 31` of word `id >> 5` set when `id` may come next)
 * that the sampler applies before it picks.
 *
 * xgrammar is told the tokenizer through the bytes each token decodes to, as
 * {@linkcode ModelTokenizer.tokenBytes} computes them (byte-fallback pieces
 * `<0x7B>` are one byte, `▁` is a space, whatever the tokenizer's decoder
 * does), spelled in the GPT-2 byte-to-character alphabet so that any byte,
 * even half a UTF-8 character, reaches it exactly. Special tokens are given
 * as empty strings, which xgrammar never allows inside a document; the stop
 * ids (the model's end-of-sequence ids and a request's `stop_token_ids`) are
 * allowed exactly where the document is complete.
 *
 * xgrammar decodes UTF-8 leniently (it lets overlong forms, encoded
 * surrogates and code points past U+10FFFF through, which the detokenizer
 * would turn into U+FFFD), so each matcher also follows the UTF-8 state of
 * the bytes so far, and the mask is and-ed with the precomputed set of tokens
 * that keep the bytes valid UTF-8 from that state: nine bitsets per engine,
 * one word-wise AND per step.
 *
 * @module
 */

import { createRequire } from "node:module";
import type { ModelTokenizer } from "./loader/tokenizer.ts";
import { MAX_WHITESPACE, schemaToEbnf } from "./json_schema.ts";
import type { ResponseFormat } from "./types.ts";

export type { ResponseFormat };

/** The grammar (xgrammar EBNF) of a response format; throws SchemaError for what it cannot express. */
export function responseFormatGrammar(format: ResponseFormat): string {
  return schemaToEbnf(format.type === "json_object" ? { type: "object" } : format.schema);
}

// The parts of xgrammar's API used here (its own typings describe the classes).
interface XgHandle {
  dispose(): void;
}
interface XgMatcher extends XgHandle {
  acceptToken(id: number): boolean;
  getNextTokenBitmask(): Promise<Int32Array>;
  isTerminated(): boolean;
}
interface XgCompiler extends XgHandle {
  compileGrammar(ebnf: string, root?: string): Promise<XgHandle>;
}
interface Xgrammar {
  TokenizerInfo: {
    createTokenizerInfo(
      vocab: string[],
      type: string,
      prependSpace: boolean,
      vocabSize: number,
      stopTokenIds: number[],
    ): Promise<XgHandle>;
  };
  GrammarCompiler: {
    createGrammarCompiler(info: XgHandle, cacheEnabled?: boolean): Promise<XgCompiler>;
  };
  GrammarMatcher: {
    createGrammarMatcher(compiled: XgHandle, stopTokenIds?: number[]): Promise<XgMatcher>;
  };
}

/**
 * Loads a private instance of xgrammar. Its `lib/index.js` is a UMD bundle
 * inside a `"type": "module"` package: imported as a module it exports nothing
 * and, in Deno, finds no `require` for its Node code path. Setting
 * `globalThis.require` would make it attach `globalThis.xgrammar`, process-wide
 * state shared by every engine; instead its text is evaluated as a CommonJS
 * module body, with `module`, `exports`, `require` and `__filename` as
 * parameters, so nothing global is read or written and each engine gets its
 * own WebAssembly instance.
 */
async function loadXgrammar(): Promise<Xgrammar> {
  const { default: source } = await import("@mlc-ai/web-xgrammar/lib/index.js", {
    with: { type: "text" },
  });
  const module = { exports: {} as Record<string, unknown> };
  const require = createRequire(import.meta.url);
  const body = new Function("module", "exports", "require", "__filename", "define", source);
  body(module, module.exports, require, "/@mlc-ai/web-xgrammar/lib/index.js", undefined);
  return module.exports as unknown as Xgrammar;
}

/** GPT-2's byte → printable character table (byte-level BPE's alphabet). */
function byteLevelAlphabet(): string[] {
  const table: string[] = new Array(256);
  let next = 256;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    table[b] = String.fromCodePoint(printable ? b : next++);
  }
  return table;
}

/**
 * UTF-8 decoder states: 0 between characters; 1..3 continuation bytes still
 * due; 4..7 the first continuation restricted (after E0, ED, F0, F4).
 */
const UTF8_STATES = 8;
const UTF8_INVALID = -1;

/** The UTF-8 state after `byte` from `state`, or UTF8_INVALID. */
function utf8Step(state: number, byte: number): number {
  const cont = byte >= 0x80 && byte <= 0xbf;
  switch (state) {
    case 0:
      if (byte <= 0x7f) return 0;
      if (byte >= 0xc2 && byte <= 0xdf) return 1;
      if (byte === 0xe0) return 4;
      if (byte === 0xed) return 5;
      if (byte >= 0xe1 && byte <= 0xef) return 2;
      if (byte === 0xf0) return 6;
      if (byte >= 0xf1 && byte <= 0xf3) return 3;
      if (byte === 0xf4) return 7;
      return UTF8_INVALID;
    case 1:
    case 2:
    case 3:
      return cont ? state - 1 : UTF8_INVALID;
    case 4:
      return byte >= 0xa0 && byte <= 0xbf ? 1 : UTF8_INVALID;
    case 5:
      return byte >= 0x80 && byte <= 0x9f ? 1 : UTF8_INVALID;
    case 6:
      return byte >= 0x90 && byte <= 0xbf ? 2 : UTF8_INVALID;
    default: // 7
      return byte >= 0x80 && byte <= 0x8f ? 2 : UTF8_INVALID;
  }
}

/** The state after all of `bytes`, or UTF8_INVALID. */
function utf8Run(state: number, bytes: Uint8Array): number {
  for (const b of bytes) {
    state = utf8Step(state, b);
    if (state === UTF8_INVALID) break;
  }
  return state;
}

/**
 * Counters of mask work, for benchmarks. `maskMs` is wall time around each
 * mask call; the engine computes masks while a step runs, so it can include
 * the runner's own continuations and is an upper bound.
 */
export interface GrammarStats {
  /** Distinct formats compiled. */
  compiled: number;
  masks: number;
  maskMs: number;
}

/**
 * Compiles response formats for one tokenizer (each distinct format once) and
 * hands out matchers.
 *
 * @example
 * ```ts
 * import { GrammarEngine } from "./grammar.ts";
 * import { ModelTokenizer } from "./loader/tokenizer.ts";
 * const tok = await ModelTokenizer.load("models/ernie-tiny");
 * const grammars = await GrammarEngine.create(tok, tok.vocabSize, tok.eosTokenIds);
 * const m = await grammars.matcher({ type: "json_object" });
 * const mask = new Uint32Array(grammars.maskWords);
 * await m.fillMask(mask); // "{" is allowed, "}" is not
 * m.dispose();
 * grammars.dispose();
 * ```
 */
export class GrammarEngine {
  readonly #compiled = new Map<string, Promise<XgHandle>>();

  private constructor(
    /** Mask counts and time, summed over every matcher. */
    readonly stats: GrammarStats,
    readonly xg: Xgrammar,
    readonly info: XgHandle,
    readonly compiler: XgCompiler,
    /** Logit rows' width: the mask covers ids 0..vocabSize-1. */
    readonly vocabSize: number,
    readonly stopTokenIds: readonly number[],
    /** Each token's bytes (empty for special and stop ids). */
    readonly tokenBytes: readonly Uint8Array[],
    /** Per UTF-8 state, the tokens whose bytes keep the text valid UTF-8 (a mask). */
    readonly utf8Valid: readonly Uint32Array[],
  ) {}

  /** Words of a mask: ceil(vocabSize / 32). */
  get maskWords(): number {
    return Math.ceil(this.vocabSize / 32);
  }

  /**
   * Describes the tokenizer to xgrammar. `vocabSize` is the width of a logit
   * row (ids past the tokenizer's are padding and never allowed).
   */
  static async create(
    tokenizer: ModelTokenizer,
    vocabSize: number,
    stopTokenIds: readonly number[],
    stats: GrammarStats = { compiled: 0, masks: 0, maskMs: 0 },
  ): Promise<GrammarEngine> {
    const xg = await loadXgrammar();
    const alphabet = byteLevelAlphabet();
    const n = Math.min(tokenizer.vocabSize, vocabSize);
    const vocab: string[] = new Array(n);
    const bytes: Uint8Array[] = new Array(n);
    const words = Math.ceil(vocabSize / 32);
    const utf8Valid = Array.from({ length: UTF8_STATES }, () => new Uint32Array(words));
    for (let id = 0; id < n; id++) {
      const special = tokenizer.specialTokenIds.has(id) || stopTokenIds.includes(id);
      const b = special ? new Uint8Array(0) : tokenizer.tokenBytes(id);
      bytes[id] = b;
      let spelled = "";
      for (const byte of b) spelled += alphabet[byte];
      vocab[id] = spelled;
      for (let state = 0; state < UTF8_STATES; state++) {
        if (utf8Run(state, b) !== UTF8_INVALID) utf8Valid[state]![id >>> 5]! |= 1 << (id & 31);
      }
    }
    const info = await xg.TokenizerInfo.createTokenizerInfo(
      vocab,
      "byte_level",
      false,
      vocabSize,
      [...stopTokenIds],
    );
    const compiler = await xg.GrammarCompiler.createGrammarCompiler(info, true);
    return new GrammarEngine(stats, xg, info, compiler, vocabSize, stopTokenIds, bytes, utf8Valid);
  }

  /**
   * A matcher at the start of a document of `format`. `extraStopIds` (a
   * request's stop_token_ids) end it too, like the model's stop ids.
   */
  async matcher(
    format: ResponseFormat,
    extraStopIds: readonly number[] = [],
  ): Promise<TokenMatcher> {
    // Keyed by the format's JSON as written: key order is meaningful (properties are
    // generated in schema order), and a batch repeats one schema verbatim.
    const key = JSON.stringify(format);
    let compiled = this.#compiled.get(key);
    if (compiled === undefined) {
      const ebnf = responseFormatGrammar(format);
      compiled = this.compiler.compileGrammar(ebnf, "root");
      this.#compiled.set(key, compiled);
      this.stats.compiled++;
      compiled.catch(() => this.#compiled.delete(key));
    }
    const stops = [...new Set([...this.stopTokenIds, ...extraStopIds])];
    const m = await this.xg.GrammarMatcher.createGrammarMatcher(await compiled, stops);
    return new TokenMatcher(m, this, this.stats);
  }

  /** Number of distinct formats compiled (or being compiled). */
  get compiledCount(): number {
    return this.#compiled.size;
  }

  /** Frees the compiled grammars and the tokenizer description. */
  async dispose(): Promise<void> {
    for (const p of this.#compiled.values()) (await p.catch(() => null))?.dispose();
    this.#compiled.clear();
    this.compiler.dispose();
    this.info.dispose();
  }
}

/**
 * One sequence's position in its grammar: fill a mask, sample within it,
 * accept the id, repeat.
 *
 * @example
 * ```ts
 * import { GrammarEngine } from "./grammar.ts";
 * import { ModelTokenizer } from "./loader/tokenizer.ts";
 * const tok = await ModelTokenizer.load("models/ernie-tiny");
 * const grammars = await GrammarEngine.create(tok, tok.vocabSize, tok.eosTokenIds);
 * const m = await grammars.matcher({ type: "json_object" });
 * const mask = new Uint32Array(m.maskWords);
 * await m.fillMask(mask);
 * const word = mask.findIndex((w) => w !== 0); // the first allowed id:
 * const id = word * 32 + 31 - Math.clz32(mask[word]! & -mask[word]!);
 * m.accept(id); // an id whose bit is set in mask
 * m.dispose();
 * grammars.dispose();
 * ```
 */
export class TokenMatcher {
  #disposed = false;
  /** UTF-8 state of the bytes accepted so far. */
  #utf8 = 0;
  constructor(
    readonly inner: XgMatcher,
    readonly grammars: GrammarEngine,
    readonly stats: GrammarStats,
  ) {}

  /** Length of a mask in 32-bit words. */
  get maskWords(): number {
    return this.grammars.maskWords;
  }

  /** Writes the allowed next tokens into `out` (`maskWords` words). */
  async fillMask(out: Uint32Array): Promise<void> {
    if (this.#disposed) return void out.fill(0xffffffff);
    const t0 = performance.now();
    const mask = await this.inner.getNextTokenBitmask();
    const valid = this.grammars.utf8Valid[this.#utf8]!;
    const words = this.maskWords;
    for (let w = 0; w < words; w++) out[w] = (mask[w]! & valid[w]!) >>> 0;
    this.stats.masks++;
    this.stats.maskMs += performance.now() - t0;
  }

  /** Advances past `id`; throws when the grammar does not allow it (a bug upstream). */
  accept(id: number): void {
    if (this.#disposed) return;
    const next = utf8Run(this.#utf8, this.grammars.tokenBytes[id] ?? new Uint8Array(0));
    if (next === UTF8_INVALID || !this.inner.acceptToken(id)) {
      throw new Error(`Internal error: token ${id} is not allowed by the response_format grammar`);
    }
    this.#utf8 = next;
  }

  /** Whether a stop id was accepted (the document ended). */
  get terminated(): boolean {
    return !this.#disposed && this.inner.isTerminated();
  }

  /** Frees the matcher; later calls do nothing. */
  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    this.inner.dispose();
  }
}

/**
 * Whether bit `id` of a mask is set.
 *
 * @example
 * ```ts
 * import { maskAllows } from "./grammar.ts";
 * maskAllows(new Uint32Array([0b100]), 2); // true
 * ```
 */
export function maskAllows(mask: Uint32Array, id: number): boolean {
  return (((mask[id >>> 5] ?? 0) >>> (id & 31)) & 1) === 1;
}

export { MAX_WHITESPACE };
