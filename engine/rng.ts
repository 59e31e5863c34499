/**
 * Counter-based random numbers: a draw is a pure function of (seed, stream,
 * step), so a sequence's samples do not depend on which other sequences share
 * its batch, on preemption, or on the order requests were scheduled.
 *
 * The mixer is splitmix64's finaliser applied to a chained combination of the
 * key's parts (each part is mixed in and re-finalised, so nearby keys give
 * unrelated outputs).
 *
 * @module
 */

const MASK64 = (1n << 64n) - 1n;
const GOLDEN = 0x9e3779b97f4a7c15n;

/** Where a draw sits: which request (seed), which sequence of it (stream), which step. */
export interface RngKey {
  /** The request's seed (any safe integer, negative ones included). */
  readonly seed: number;
  /** The generation step (number of tokens generated before this draw). */
  readonly step: number;
  /** A further index, e.g. the choice index; 0 when absent. */
  readonly stream?: number;
}

/** splitmix64's finaliser: a bijective 64-bit mix. */
function mix64(x: bigint): bigint {
  let z = (x + GOLDEN) & MASK64;
  z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK64;
  z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK64;
  return z ^ (z >> 31n);
}

function toU64(n: number): bigint {
  if (!Number.isSafeInteger(n)) {
    throw new RangeError(`RNG key parts must be safe integers, got ${n}`);
  }
  return BigInt.asUintN(64, BigInt(n));
}

/**
 * A 64-bit hash of a list of integers (order matters).
 *
 * @example
 * ```ts
 * import { hash64 } from "./rng.ts";
 * hash64([42, 0, 7]) === hash64([42, 0, 7]); // true
 * ```
 */
export function hash64(parts: readonly number[]): bigint {
  let h = mix64(BigInt(parts.length));
  for (const p of parts) h = mix64(h ^ toU64(p));
  return h;
}

/**
 * A uniform number in [0, 1) (53 random bits) for a key; the same key always
 * gives the same number.
 *
 * @example
 * ```ts
 * import { uniform } from "./rng.ts";
 * const u = uniform({ seed: 1234, step: 0 });
 * u === uniform({ seed: 1234, step: 0 }); // true
 * ```
 */
export function uniform(key: RngKey): number {
  const h = hash64([key.seed, key.stream ?? 0, key.step]);
  return Number(h >> 11n) / 2 ** 53;
}

/**
 * A new seed derived from a seed and an index (e.g. choice `i` of a request
 * with `n` > 1), as a non-negative safe integer.
 *
 * @example
 * ```ts
 * import { deriveSeed } from "./rng.ts";
 * deriveSeed(7, 1) !== deriveSeed(7, 2); // true
 * ```
 */
export function deriveSeed(seed: number, index: number): number {
  return Number(hash64([seed, index, 0x5eed]) >> 11n);
}
