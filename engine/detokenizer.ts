/**
 * Turns generated token ids into text as they arrive, and ends a sequence at
 * the first stop string.
 *
 * Incremental decoding follows vLLM: decode a small window of ids twice, once
 * without and once with the new ids, and emit the difference, unless it ends
 * in U+FFFD (a byte-fallback character not complete yet), in which case the
 * ids are held until it is. Starting the window at the last prompt ids keeps
 * decoders that strip a leading space of the first token from eating it.
 *
 * @module
 */

/** The part of a tokenizer the detokenizer needs. */
export interface TokenDecoder {
  /** Ids → text; special tokens dropped when `skipSpecialTokens` (the default). */
  decode(ids: readonly number[], options?: { skipSpecialTokens?: boolean }): string;
}

/** How many prompt ids seed the window (as vLLM's `INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET`). */
const PROMPT_CONTEXT = 5;

/**
 * Yields new text for each generated id without breaking multi-byte characters.
 *
 * @example
 * ```ts
 * import { IncrementalDetokenizer } from "./detokenizer.ts";
 * import { ModelTokenizer } from "./loader/tokenizer.ts";
 * const tokenizer = await ModelTokenizer.load("models/ernie-tiny");
 * const detok = new IncrementalDetokenizer(tokenizer, { promptIds: [1, 2, 3] });
 * let text = "";
 * for (const id of [10, 11, 12]) text += detok.push(id);
 * text += detok.flush();
 * ```
 */
export class IncrementalDetokenizer {
  readonly #tokenizer: TokenDecoder;
  readonly #skipSpecialTokens: boolean;
  readonly #ids: number[];
  #prefixOffset: number;
  #readOffset: number;

  /** `promptIds`: the prompt, whose last few ids give the first generated ids context. */
  constructor(
    tokenizer: TokenDecoder,
    options: { promptIds?: readonly number[]; skipSpecialTokens?: boolean } = {},
  ) {
    this.#tokenizer = tokenizer;
    this.#skipSpecialTokens = options.skipSpecialTokens ?? true;
    this.#ids = (options.promptIds ?? []).slice(-PROMPT_CONTEXT);
    this.#prefixOffset = 0;
    this.#readOffset = this.#ids.length;
  }

  /** Adds one id; returns the text it completes (often "", or several characters at once). */
  push(id: number): string {
    this.#ids.push(id);
    return this.#emit(false);
  }

  /** Emits whatever is held back (an incomplete character becomes U+FFFD). */
  flush(): string {
    return this.#emit(true);
  }

  #decode(ids: readonly number[]): string {
    return ids.length === 0
      ? ""
      : this.#tokenizer.decode(ids, { skipSpecialTokens: this.#skipSpecialTokens });
  }

  #emit(force: boolean): string {
    if (this.#readOffset >= this.#ids.length) return "";
    const prefixText = this.#decode(this.#ids.slice(this.#prefixOffset, this.#readOffset));
    const newText = this.#decode(this.#ids.slice(this.#prefixOffset));
    if (!force && (newText.length <= prefixText.length || newText.endsWith("\uFFFD"))) return "";
    const delta = newText.startsWith(prefixText)
      ? newText.slice(prefixText.length)
      : newText.slice(commonPrefixLength(prefixText, newText));
    this.#prefixOffset = this.#readOffset;
    this.#readOffset = this.#ids.length;
    return delta;
  }
}

function commonPrefixLength(a: string, b: string): number {
  let i = 0;
  while (i < a.length && i < b.length && a[i] === b[i]) i++;
  return i;
}

/** What one step of stop-string matching gives. */
export interface StopStep {
  /** Text now safe to emit (before any stop string). */
  readonly text: string;
  /** A stop string was found: the sequence finishes with reason "stop". */
  readonly stopped: boolean;
}

/**
 * Finds the earliest stop string in a growing text. Text that could be the
 * start of a stop string is held back until the next delta resolves it.
 *
 * @example
 * ```ts
 * import { StopStringMatcher } from "./detokenizer.ts";
 * const m = new StopStringMatcher(["END"]);
 * m.push("hello E"); // { text: "hello ", stopped: false }
 * m.push("ND more"); // { text: "", stopped: true }
 * ```
 */
export class StopStringMatcher {
  readonly #stops: readonly string[];
  readonly #longest: number;
  #held = "";
  #stopped = false;

  /** Empty stop strings are ignored. */
  constructor(stops: readonly string[]) {
    this.#stops = stops.filter((s) => s.length > 0);
    this.#longest = Math.max(0, ...this.#stops.map((s) => s.length));
  }

  /** True once a stop string was found. */
  get stopped(): boolean {
    return this.#stopped;
  }

  /**
   * Adds new text; returns what may be emitted and whether a stop string ended
   * it. Only a stop string that ends inside `delta` counts (it may start in
   * held-back text), as vLLM searches only new text. With `search` false
   * (before `min_tokens`) nothing can stop, but the text is still held back
   * where it could start a stop string completed later.
   */
  push(delta: string, search = true): StopStep {
    if (this.#stopped) return { text: "", stopped: true };
    const text = this.#held + delta;
    if (this.#stops.length === 0) {
      this.#held = "";
      return { text, stopped: false };
    }
    let earliest = -1;
    for (const stop of search && delta.length > 0 ? this.#stops : []) {
      const at = text.indexOf(stop, Math.max(0, this.#held.length - stop.length + 1));
      if (at >= 0 && (earliest < 0 || at < earliest)) earliest = at;
    }
    if (earliest >= 0) {
      this.#stopped = true;
      this.#held = "";
      return { text: text.slice(0, earliest), stopped: true };
    }
    const keep = this.#partialSuffixLength(text);
    this.#held = text.slice(text.length - keep);
    return { text: text.slice(0, text.length - keep), stopped: false };
  }

  /** At the end of generation: the held-back text, which did not become a stop string. */
  flush(): string {
    const held = this.#stopped ? "" : this.#held;
    this.#held = "";
    return held;
  }

  /** Length of the longest suffix of `text` that is a proper prefix of some stop string. */
  #partialSuffixLength(text: string): number {
    for (let len = Math.min(this.#longest - 1, text.length); len > 0; len--) {
      const suffix = text.slice(text.length - len);
      if (this.#stops.some((s) => s.startsWith(suffix))) return len;
    }
    return 0;
  }
}

/**
 * A sequence's output text: incremental detokenization plus stop strings.
 * The engine pushes each generated id (end-of-sequence ids excluded) and
 * finishes with reason "stop" when `push` returns true. As in vLLM, no stop
 * string ends the text until more than `minTokens` ids were pushed; a stop
 * string may still begin in the text of those first ids.
 *
 * @example
 * ```ts
 * import { OutputText } from "./detokenizer.ts";
 * import { ModelTokenizer } from "./loader/tokenizer.ts";
 * const tokenizer = await ModelTokenizer.load("models/ernie-tiny");
 * const out = new OutputText(tokenizer, { stop: ["\n\n"], promptIds: [1] });
 * if (out.push(42)) { // stop string seen: finish with "stop"
 * }
 * out.finish(); // the final text, stop string and what followed removed
 * ```
 */
export class OutputText {
  readonly #detok: IncrementalDetokenizer;
  readonly #matcher: StopStringMatcher;
  readonly #minTokens: number;
  #pushed = 0;
  #text = "";

  /**
   * `stop`: stop strings; `minTokens`: ids pushed before a stop string may end
   * the text (default 0); `promptIds` and `skipSpecialTokens` as for
   * {@linkcode IncrementalDetokenizer}.
   */
  constructor(
    tokenizer: TokenDecoder,
    options: {
      stop?: readonly string[];
      minTokens?: number;
      promptIds?: readonly number[];
      skipSpecialTokens?: boolean;
    } = {},
  ) {
    this.#detok = new IncrementalDetokenizer(tokenizer, options);
    this.#matcher = new StopStringMatcher(options.stop ?? []);
    this.#minTokens = options.minTokens ?? 0;
  }

  /** Adds a generated id; true when a stop string was reached. */
  push(id: number): boolean {
    if (this.#matcher.stopped) return true;
    this.#pushed++;
    const step = this.#matcher.push(this.#detok.push(id), this.#pushed > this.#minTokens);
    this.#text += step.text;
    return step.stopped;
  }

  /** Text emitted so far (held-back characters excluded). */
  get text(): string {
    return this.#text;
  }

  /** Ends the sequence and returns its full text. */
  finish(): string {
    if (!this.#matcher.stopped) {
      const step = this.#matcher.push(this.#detok.flush());
      this.#text += step.text + this.#matcher.flush();
    }
    return this.#text;
  }
}
