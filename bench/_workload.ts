/**
 * The end-to-end workload, shared by our engine and the peer so that both
 * generate from exactly the same prompt ids (issue 9): 64 sequences of 16
 * prompt tokens and 32 generated tokens each, greedy; batching measured as
 * 16 sequences at once against the same kind of sequences one at a time.
 *
 * @module
 */

/** Sizes of the end-to-end workload. */
export interface Workload {
  /** Sequences generating at once in the headline run. */
  readonly sequences: number;
  readonly promptTokens: number;
  readonly generatedTokens: number;
  /** Sequences at once in the batching run... */
  readonly batchingSequences: number;
  /** ...against this many of them one after another (a rate: tokens/s either way). */
  readonly oneAtATime: number;
}

/** The workload. */
export const FULL_WORKLOAD: Workload = {
  sequences: 64,
  promptTokens: 16,
  generatedTokens: 32,
  batchingSequences: 16,
  oneAtATime: 4,
};

/** `--quick`: the same shape, smaller. */
export const QUICK_WORKLOAD: Workload = {
  sequences: 16,
  promptTokens: 16,
  generatedTokens: 8,
  batchingSequences: 8,
  oneAtATime: 2,
};

/** The phases of a run; each has prompts of its own, so none hits another's prefix cache. */
export const PHASE = {
  warmup: 0,
  headline: 1,
  batching: 2,
  oneAtATime: 3,
  agreement: 4,
  bandwidth: 5,
} as const;

/**
 * `n` prompts of `len` ids, all different from their first token on, drawn
 * from ids 300..2099: ordinary pieces of the fixture tokenizer (no specials,
 * no byte tokens, no padding rows).
 */
export function prompts(phase: number, n: number, len: number): number[][] {
  return Array.from(
    { length: n },
    (_, i) => Array.from({ length: len }, (_, j) => 300 + ((phase * 977 + i * 31 + j * 17) % 1800)),
  );
}
