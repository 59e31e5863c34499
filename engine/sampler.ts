/**
 * Picks the next token from one sequence's logits on the CPU.
 *
 * Order (vLLM's): logit bias → min_tokens (end ids masked) → repetition,
 * presence and frequency penalties → ids ≥ the tokenizer's size masked → greedy
 * when temperature is 0 (ties go to the lowest id), otherwise temperature →
 * top-k → top-p → min-p → one draw from a counter-based RNG keyed by
 * (seed, stream, step), so a draw does not depend on the batch it was made in.
 *
 * Logprobs are the *raw* model distribution: log_softmax of the logits as the
 * model produced them (ids ≥ the valid vocabulary excluded), before bias,
 * penalties, temperature and truncation. This is vLLM's default
 * (`logprobs_mode="raw_logprobs"`) and makes a token's logprob independent of
 * the sampling options of the request.
 *
 * Top-k and top-p never sort more than they keep: top-k keeps its candidates
 * in a bounded heap; top-p without top-k finds its nucleus with one partial
 * selection by probability mass (expected O(vocab)) and sorts only that.
 *
 * @module
 */

import type { SamplingParams, TokenLogprob } from "./types.ts";
import { type RngKey, uniform } from "./rng.ts";

/** What the sampler needs besides the logits. */
export interface SampleContext {
  /** Ids ≥ this are padding rows of the embedding and are never sampled. */
  readonly validVocab: number;
  readonly promptIds: readonly number[];
  readonly outputIds: readonly number[];
  readonly params: SamplingParams;
  /** Where this draw sits; the seed should be the request's seed. */
  readonly rngKey: RngKey;
  /** End-of-sequence ids masked while fewer than `minTokens` were generated (with `params.stopTokenIds`). */
  readonly eosTokenIds?: readonly number[];
  /**
   * Constrained decoding: a bitset over the vocabulary (bit `id & 31` of word
   * `id >> 5`); ids whose bit is clear are never picked (engine/grammar.ts).
   */
  readonly allowed?: Uint32Array;
}

/** The chosen token and, when asked for, its raw logprob and the top alternatives. */
export interface SampleResult {
  /** {@linkcode NO_TOKEN} when every logit is NaN or -Infinity. */
  readonly tokenId: number;
  readonly logprob?: number;
  readonly top?: readonly TokenLogprob[];
}

/** The token id of a row where no token can be sampled: every logit NaN or -Infinity. */
export const NO_TOKEN = -1;

/** Temperatures below this are treated as greedy (as vLLM does). */
const GREEDY_EPSILON = 1e-5;
/**
 * The nucleus selection gathers this much more mass than top-p asks for (a
 * fraction of the total), so that summing it again in sorted order, with
 * different rounding, still reaches top-p inside the selection.
 */
const NUCLEUS_MARGIN = 1e-9;
/** Token ids are packed below this in a sort key (exact in a float64: 32 + 21 bits). */
const ID_RANGE = 2 ** 21;

/**
 * Samples one token.
 *
 * @example
 * ```ts
 * import { sample } from "./sampler.ts";
 * import { DEFAULT_SAMPLING } from "./types.ts";
 * const logits = new Float32Array([0, 3, 1, 9]);
 * const r = sample(logits, {
 *   validVocab: 3, promptIds: [], outputIds: [],
 *   params: { ...DEFAULT_SAMPLING, temperature: 0 }, rngKey: { seed: 1, step: 0 },
 * });
 * r.tokenId; // 1: id 3 is padding
 * ```
 */
export function sample(logits: Float32Array, ctx: SampleContext): SampleResult {
  const vocab = Math.min(ctx.validVocab, logits.length);
  if (vocab <= 0) throw new RangeError(`validVocab must be positive, got ${ctx.validVocab}`);
  const raw = logits.subarray(0, vocab);
  const p = ctx.params;
  const work = processLogits(raw, ctx);
  if (ctx.allowed !== undefined) applyMask(work, ctx.allowed);
  if (work[argmax(work)]! === -Infinity) return { tokenId: NO_TOKEN };

  let tokenId: number;
  if (p.temperature < GREEDY_EPSILON) {
    tokenId = argmax(work);
  } else {
    tokenId = drawRandom(work, p, uniform(ctx.rngKey));
  }

  if (!p.logprobs && p.topLogprobs <= 0) return { tokenId };
  const lse = logSumExp(raw);
  const top = p.topLogprobs > 0
    ? topIndices(raw, Math.min(p.topLogprobs, vocab)).map((i) => ({
      tokenId: i,
      logprob: (raw[i] as number) - lse,
    }))
    : [];
  return { tokenId, logprob: (raw[tokenId] as number) - lse, top };
}

/** Bias, min_tokens and penalties applied to a copy of the valid logits; NaN becomes -Infinity. */
function processLogits(raw: Float32Array, ctx: SampleContext): Float32Array {
  const p = ctx.params;
  const vocab = raw.length;
  const work = new Float32Array(raw);
  for (let i = 0; i < vocab; i++) if (Number.isNaN(work[i])) work[i] = -Infinity;
  for (const [id, bias] of p.logitBias) {
    if (id >= 0 && id < vocab) work[id] = (work[id] as number) + bias;
  }
  if (ctx.outputIds.length < p.minTokens) {
    for (const id of ctx.eosTokenIds ?? []) if (id >= 0 && id < vocab) work[id] = -Infinity;
    for (const id of p.stopTokenIds) if (id >= 0 && id < vocab) work[id] = -Infinity;
  }
  if (p.repetitionPenalty !== 1) {
    const seen = new Set<number>();
    for (const id of ctx.promptIds) seen.add(id);
    for (const id of ctx.outputIds) seen.add(id);
    for (const id of seen) {
      if (id < 0 || id >= vocab) continue;
      const v = work[id] as number;
      work[id] = v > 0 ? v / p.repetitionPenalty : v * p.repetitionPenalty;
    }
  }
  if (p.presencePenalty !== 0 || p.frequencyPenalty !== 0) {
    const counts = new Map<number, number>();
    for (const id of ctx.outputIds) counts.set(id, (counts.get(id) ?? 0) + 1);
    for (const [id, count] of counts) {
      if (id < 0 || id >= vocab) continue;
      work[id] = (work[id] as number) - p.frequencyPenalty * count - p.presencePenalty;
    }
  }
  return work;
}

/** Sets the logits of ids outside the bitset `allowed` to -Infinity. */
function applyMask(work: Float32Array, allowed: Uint32Array): void {
  let any = false;
  for (let w = 0; w * 32 < work.length; w++) {
    const bits = allowed[w] ?? 0;
    if (bits === 0xffffffff) {
      any = true;
      continue;
    }
    const end = Math.min(work.length, w * 32 + 32);
    for (let i = w * 32; i < end; i++) {
      if (((bits >>> (i & 31)) & 1) === 0) work[i] = -Infinity;
      else any = true;
    }
  }
  if (!any) throw new Error("Internal error: the token mask allows no token");
}

/** Index of the largest value; ties go to the lowest index; NaN never wins. */
export function argmax(values: Float32Array): number {
  let best = 0;
  let bestValue = -Infinity;
  for (let i = 0; i < values.length; i++) {
    const v = values[i] as number;
    if (v > bestValue) {
      bestValue = v;
      best = i;
    }
  }
  return best;
}

function logSumExp(values: Float32Array): number {
  let max = -Infinity;
  for (let i = 0; i < values.length; i++) max = Math.max(max, values[i] as number);
  if (max === -Infinity) return 0;
  let sum = 0;
  for (let i = 0; i < values.length; i++) sum += Math.exp((values[i] as number) - max);
  return max + Math.log(sum);
}

/**
 * The `k` indices with the largest values, best first (ties: lower index
 * first), found with a bounded min-heap: O(n log k), no full sort.
 */
export function topIndices(values: Float32Array, k: number): number[] {
  const n = values.length;
  k = Math.min(k, n);
  if (k <= 0) return [];
  // "a is worse than b": smaller value, or equal value and larger index.
  const worse = (a: number, b: number): boolean => {
    const va = values[a] as number;
    const vb = values[b] as number;
    return va < vb || (va === vb && a > b) || (Number.isNaN(va) && !Number.isNaN(vb));
  };
  const heap: number[] = [];
  const siftUp = (i: number) => {
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!worse(heap[i] as number, heap[parent] as number)) break;
      [heap[i], heap[parent]] = [heap[parent] as number, heap[i] as number];
      i = parent;
    }
  };
  const siftDown = (i: number) => {
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < heap.length && worse(heap[l] as number, heap[m] as number)) m = l;
      if (r < heap.length && worse(heap[r] as number, heap[m] as number)) m = r;
      if (m === i) return;
      [heap[i], heap[m]] = [heap[m] as number, heap[i] as number];
      i = m;
    }
  };
  for (let i = 0; i < n; i++) {
    if (heap.length < k) {
      heap.push(i);
      siftUp(heap.length - 1);
    } else if (worse(heap[0] as number, i)) {
      heap[0] = i;
      siftDown(0);
    }
  }
  return heap.sort((a, b) => (worse(a, b) ? 1 : worse(b, a) ? -1 : 0));
}

/** Temperature, top-k, top-p, min-p, then one draw with `u` in [0, 1). */
function drawRandom(work: Float32Array, p: SamplingParams, u: number): number {
  const vocab = work.length;
  const invT = 1 / p.temperature;
  for (let i = 0; i < vocab; i++) work[i] = (work[i] as number) * invT;
  const max = work[argmax(work)] as number;
  if (max === -Infinity) return argmax(work);
  // min-p keeps p_i ≥ minP · p_max, i.e. exp(l_i − max) ≥ minP: renormalisation
  // by top-k / top-p scales every probability alike, so the test is the same there.
  const minWeight = p.minP > 0 ? p.minP : 0;
  const weight = (i: number): number => {
    const w = Math.exp((work[i] as number) - max);
    return w >= minWeight ? w : 0;
  };

  const useTopK = p.topK > 0 && p.topK < vocab;
  const useTopP = p.topP < 1;
  if (!useTopK && !useTopP) {
    let total = 0;
    for (let i = 0; i < vocab; i++) total += weight(i);
    let target = u * total;
    let last = 0;
    for (let i = 0; i < vocab; i++) {
      const w = weight(i);
      if (w === 0) continue;
      last = i;
      target -= w;
      if (target < 0) return i;
    }
    return last;
  }

  // Candidates best first; the top-k set (or the whole vocabulary) is the
  // distribution top-p's cumulative sums are taken over.
  let kTotal = 0;
  let candidates: number[];
  if (useTopK) {
    candidates = topIndices(work, p.topK);
    for (const i of candidates) kTotal += Math.exp((work[i] as number) - max);
  } else {
    const weights = new Float64Array(vocab);
    for (let i = 0; i < vocab; i++) {
      weights[i] = Math.exp((work[i] as number) - max);
      kTotal += weights[i]!;
    }
    candidates = nucleusCandidates(work, weights, p.topP * kTotal, kTotal);
  }
  if (useTopP) {
    // The smallest best-first prefix whose mass reaches top-p (all of it when
    // rounding keeps the sum just short).
    let cumulative = 0;
    for (let j = 0; j < candidates.length; j++) {
      cumulative += Math.exp((work[candidates[j] as number] as number) - max);
      if (cumulative >= p.topP * kTotal) {
        candidates = candidates.slice(0, j + 1);
        break;
      }
    }
  }
  let total = 0;
  for (const i of candidates) total += weight(i);
  let target = u * total;
  let last = candidates[0] ?? 0;
  for (const i of candidates) {
    const w = weight(i);
    if (w === 0) continue;
    last = i;
    target -= w;
    if (target < 0) return i;
  }
  return last;
}

/**
 * The best tokens, best first (larger logit, then lower id), holding at least
 * `target` of the `total` probability mass (`weights`), plus a margin of
 * {@linkcode NUCLEUS_MARGIN}: a superset of top-p's nucleus that the caller
 * cuts by summing in this order. One quickselect by mass over the tokens that
 * can be in it, then one sort of what it kept.
 */
function nucleusCandidates(
  work: Float32Array,
  weights: Float64Array,
  target: number,
  total: number,
): number[] {
  const n = work.length;
  if (n >= ID_RANGE) throw new RangeError(`vocabulary of ${n} ids is too large for top-p`);
  const goal = target + NUCLEUS_MARGIN * total;
  // Tokens lighter than (total − goal) / n are a tail of the order holding at
  // most total − goal: the nucleus never reaches them.
  const floor = goal < total ? (total - goal) / n : 0;
  // keys: unique and ascending from best to worst: the float's bits mapped to
  // descending order (−0 as +0), times ID_RANGE, plus the id (ties: lower id first).
  const bits = new Uint32Array(work.buffer, work.byteOffset, n);
  let m = 0;
  for (let i = 0; i < n; i++) if (weights[i]! >= floor) m++;
  const keys = new Float64Array(m);
  const mass = new Float64Array(m);
  for (let i = 0, j = 0; i < n; i++) {
    if (weights[i]! < floor) continue;
    const b = bits[i] === 0x80000000 ? 0 : bits[i]!;
    const ascending = b & 0x80000000 ? ~b >>> 0 : (b | 0x80000000) >>> 0;
    keys[j] = (0xffffffff - ascending) * ID_RANGE + i;
    mass[j++] = weights[i]!;
  }
  // Invariant: keys[0, lo) are all kept (their mass is `kept` < goal) and the
  // answer ends in (lo, hi].
  let lo = 0;
  let hi = m;
  let kept = 0;
  const swap = (a: number, b: number) => {
    const k = keys[a]!;
    keys[a] = keys[b]!;
    keys[b] = k;
    const w = mass[a]!;
    mass[a] = mass[b]!;
    mass[b] = w;
  };
  if (goal < total) {
    while (lo < hi) {
      const pivot = median(keys[lo]!, keys[(lo + hi) >> 1]!, keys[hi - 1]!);
      let i = lo;
      let better = 0;
      for (let j = lo; j < hi; j++) {
        if (keys[j]! < pivot) {
          swap(i, j);
          better += mass[i]!;
          i++;
        }
      }
      for (let j = i; j < hi; j++) {
        if (keys[j] === pivot) {
          swap(i, j);
          break;
        }
      }
      if (kept + better >= goal) {
        hi = i;
        continue;
      }
      kept += better + mass[i]!;
      if (kept >= goal) {
        hi = i + 1;
        break;
      }
      lo = i + 1;
    }
  }
  const chosen = keys.subarray(0, hi).sort();
  const out = new Array<number>(hi);
  for (let j = 0; j < hi; j++) out[j] = chosen[j]! % ID_RANGE;
  return out;
}

function median(a: number, b: number, c: number): number {
  return a < b ? (b < c ? b : a < c ? c : a) : (a < c ? a : b < c ? c : b);
}
