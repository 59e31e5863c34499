/**
 * Helpers for grammar tests: an ajv validator, feeding text to a matcher
 * through byte-fallback tokens, and random walks over token masks that check,
 * at every step, that the stop ids are allowed exactly when the text so far is
 * a complete document that validates.
 *
 * @module
 */
import { Ajv } from "ajv";
import addFormatsModule from "ajv-formats";
import { type GrammarEngine, maskAllows, type TokenMatcher } from "../engine/grammar.ts";
import type { ModelTokenizer } from "../engine/loader/tokenizer.ts";
import type { ResponseFormat } from "../engine/types.ts";
import { BYTE_BASE } from "../tools/_bpe.ts";

// ajv-formats is CommonJS: its default export is the plugin function.
const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv;

/** A well-kept validator (ajv, with ajv-formats) for a response format. */
export function validatorFor(format: ResponseFormat): (value: unknown) => boolean {
  const ajv = addFormats(new Ajv({ strict: false }));
  const schema = format.type === "json_object" ? { type: "object" } : format.schema;
  const validate = ajv.compile(schema as object | boolean);
  return (value) => validate(value) === true;
}

/** The parsed document when `text` is a complete JSON document, else undefined. */
export function parseComplete(bytes: Uint8Array): { value: unknown } | undefined {
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return undefined;
  }
  try {
    return { value: JSON.parse(text) };
  } catch {
    return undefined;
  }
}

/** Byte-fallback token id (`<0xNN>`, ERNIE's layout: after the specials) of each UTF-8 byte of `text`. */
export function byteTokens(tok: ModelTokenizer, text: string): number[] {
  return [...new TextEncoder().encode(text)].map((b) => {
    const id = BYTE_BASE + b;
    const bytes = tok.tokenBytes(id);
    if (bytes.length !== 1 || bytes[0] !== b) {
      throw new Error(`id ${id} is not the piece of byte ${b}`);
    }
    return id;
  });
}

/** Whether the matcher takes every id, and then allows a stop id (a complete document). */
export async function acceptsDocument(
  grammars: GrammarEngine,
  format: ResponseFormat,
  ids: readonly number[],
): Promise<boolean> {
  const m = await grammars.matcher(format);
  try {
    for (const id of ids) {
      try {
        m.accept(id);
      } catch {
        return false;
      }
    }
    const mask = new Uint32Array(grammars.maskWords);
    await m.fillMask(mask);
    return grammars.stopTokenIds.some((id) => maskAllows(mask, id));
  } finally {
    m.dispose();
  }
}

/** What one walk produced. */
export interface Walk {
  readonly text: string;
  readonly finished: boolean;
  readonly steps: number;
}

/** A small seeded generator (LCG), so walks repeat. */
export function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32;
  };
}

/**
 * Walks the grammar picking random allowed tokens (with a lean towards
 * closing quotes and brackets, and towards stopping when allowed). Throws when
 * a special id is allowed inside the document, or when "stop allowed" and
 * "the text so far is a complete, valid document" ever disagree.
 */
export async function randomWalk(
  grammars: GrammarEngine,
  tok: ModelTokenizer,
  format: ResponseFormat,
  valid: (value: unknown) => boolean,
  rand: () => number,
  maxSteps: number,
): Promise<Walk> {
  const m: TokenMatcher = await grammars.matcher(format);
  const mask = new Uint32Array(grammars.maskWords);
  const stops = new Set(grammars.stopTokenIds);
  let bytes = new Uint8Array(0);
  try {
    for (let step = 0; step < maxSteps; step++) {
      await m.fillMask(mask);
      const allowed: number[] = [];
      const closing: number[] = [];
      let stopAllowed = false;
      for (let id = 0; id < grammars.vocabSize; id++) {
        if (!maskAllows(mask, id)) continue;
        if (stops.has(id)) {
          stopAllowed = true;
          continue;
        }
        if (tok.specialTokenIds.has(id) || id >= tok.vocabSize) {
          throw new Error(
            `special or padding id ${id} allowed after ${JSON.stringify(decode(bytes))}`,
          );
        }
        allowed.push(id);
        if (/["\]},]/.test(tok.tokenText(id))) closing.push(id);
      }
      const parsed = parseComplete(bytes);
      const complete = parsed !== undefined && valid(parsed.value);
      if (stopAllowed !== complete) {
        throw new Error(
          `stop ${stopAllowed ? "allowed" : "not allowed"} but the text ${
            JSON.stringify(decode(bytes))
          } ` +
            `is ${complete ? "" : "not "}a complete valid document`,
        );
      }
      if (stopAllowed && (allowed.length === 0 || rand() < 0.4)) {
        m.accept(grammars.stopTokenIds[0]!);
        return { text: decode(bytes), finished: true, steps: step + 1 };
      }
      if (allowed.length === 0) {
        throw new Error(`no token allowed after ${JSON.stringify(decode(bytes))}`);
      }
      const pool = closing.length > 0 && rand() < 0.3 ? closing : allowed;
      const id = pool[Math.floor(rand() * pool.length)]!;
      m.accept(id);
      const b = tok.tokenBytes(id);
      const next = new Uint8Array(bytes.length + b.length);
      next.set(bytes);
      next.set(b, bytes.length);
      bytes = next;
    }
    return { text: decode(bytes), finished: false, steps: maxSteps };
  } finally {
    m.dispose();
  }
}

function decode(bytes: Uint8Array): string {
  return new TextDecoder().decode(bytes);
}
