import { assert, assertEquals } from "./_assert.ts";
import { argmax, NO_TOKEN, sample, type SampleContext, topIndices } from "../engine/sampler.ts";
import { deriveSeed, uniform } from "../engine/rng.ts";
import { DEFAULT_SAMPLING, type SamplingParams } from "../engine/types.ts";

function assertAlmostEquals(actual: number, expected: number, tolerance: number): void {
  assert(
    Math.abs(actual - expected) <= tolerance,
    `expected ${expected} ± ${tolerance}, got ${actual}`,
  );
}

function assertNotEquals(a: unknown, b: unknown): void {
  assert(a !== b, `expected values to differ, both are ${String(a)}`);
}

function ctx(params: Partial<SamplingParams>, extra: Partial<SampleContext> = {}): SampleContext {
  return {
    validVocab: 1 << 30,
    promptIds: [],
    outputIds: [],
    params: { ...DEFAULT_SAMPLING, ...params },
    rngKey: { seed: 1, step: 0 },
    ...extra,
  };
}

/** Draws `count` samples with keys (seed, step = 0..count-1) and returns counts per id. */
function histogram(
  logits: Float32Array,
  params: Partial<SamplingParams>,
  count = 4000,
): (id: number) => number {
  const counts = new Map<number, number>();
  for (let step = 0; step < count; step++) {
    const { tokenId } = sample(logits, ctx(params, { rngKey: { seed: 99, step } }));
    counts.set(tokenId, (counts.get(tokenId) ?? 0) + 1);
  }
  return (id) => counts.get(id) ?? 0;
}

Deno.test("greedy picks the largest logit and the lowest id on ties", () => {
  const logits = new Float32Array([1, 5, 2, 5, 0]);
  assertEquals(sample(logits, ctx({ temperature: 0 })).tokenId, 1);
  assertEquals(argmax(new Float32Array([NaN, -Infinity, -1])), 2);
});

Deno.test("temperature sampling follows softmax(logits / T) in frequency", () => {
  const logits = new Float32Array([0, Math.log(2), Math.log(5)]); // p = 1/8, 2/8, 5/8
  const counts = histogram(logits, { temperature: 1 }, 8000);
  assertAlmostEquals(counts(0) / 8000, 1 / 8, 0.02);
  assertAlmostEquals(counts(1) / 8000, 2 / 8, 0.02);
  assertAlmostEquals(counts(2) / 8000, 5 / 8, 0.02);
  // T = 0.5 squares the odds: 1 : 4 : 25.
  const sharp = histogram(logits, { temperature: 0.5 }, 6000);
  assertAlmostEquals(sharp(2) / 6000, 25 / 30, 0.025);
});

Deno.test("top-k keeps only the k best tokens", () => {
  const logits = new Float32Array([3, 2.9, 2.8, 0, 0, 0]);
  const counts = histogram(logits, { topK: 2 }, 1000);
  assertEquals(counts(2) + counts(3) + counts(4) + counts(5), 0);
  assert(counts(0) > 0 && counts(1) > 0);
});

Deno.test("top-p keeps the smallest prefix reaching p", () => {
  // p = 0.5, 0.25, 0.125, 0.125: top_p 0.7 keeps ids 0 and 1 only.
  const logits = new Float32Array([Math.log(4), Math.log(2), 0, 0]);
  const counts = histogram(logits, { topP: 0.7 }, 1500);
  assertEquals(counts(2) + counts(3), 0);
  assertAlmostEquals(counts(0) / 1500, 2 / 3, 0.05);
});

Deno.test("top-p finds a nucleus larger than its first candidate bound", () => {
  const logits = new Float32Array(300).fill(0); // uniform: 0.9 needs 270 tokens
  const counts = histogram(logits, { topP: 0.9 }, 3000);
  const used = [...logits.keys()].filter((i) => counts(i) > 0);
  assert(used.length > 200, `only ${used.length} ids drawn`);
  assert(Math.max(...used) < 270, `id ${Math.max(...used)} is outside the nucleus`);
});

Deno.test("min-p drops tokens below min_p times the best probability", () => {
  const logits = new Float32Array([Math.log(10), Math.log(2), Math.log(0.5)]);
  const counts = histogram(logits, { minP: 0.1 }, 1000); // 0.5/10 < 0.1 ≤ 2/10
  assertEquals(counts(2), 0);
  assert(counts(1) > 0);
});

Deno.test("repetition penalty lowers positive and negative logits of seen tokens", () => {
  const logits = new Float32Array([2, 1.5, -1, -0.5]);
  // id 0: 2 / 2 = 1 < 1.5 → id 1 wins; without the penalty id 0 wins.
  assertEquals(sample(logits, ctx({ temperature: 0 })).tokenId, 0);
  const r = sample(logits, ctx({ temperature: 0, repetitionPenalty: 2 }, { promptIds: [0] }));
  assertEquals(r.tokenId, 1);
  // Negative logits are multiplied: -0.5 · 2 = -1 = id 2's, so id 2 (untouched, lower id) wins.
  const neg = new Float32Array([-5, -5, -1, -0.5]);
  assertEquals(
    sample(neg, ctx({ temperature: 0, repetitionPenalty: 2 }, { outputIds: [3] })).tokenId,
    2,
  );
});

Deno.test("presence and frequency penalties count only generated tokens", () => {
  const logits = new Float32Array([2, 1.4, 0]);
  const params = { temperature: 0, frequencyPenalty: 0.25 };
  assertEquals(sample(logits, ctx(params, { promptIds: [0, 0, 0, 0] })).tokenId, 0);
  assertEquals(sample(logits, ctx(params, { outputIds: [0, 0, 0] })).tokenId, 1); // 2 - 0.75
  assertEquals(
    sample(logits, ctx({ temperature: 0, presencePenalty: 1 }, { outputIds: [0] })).tokenId,
    1,
  );
});

Deno.test("logit bias forces a token", () => {
  const logits = new Float32Array([5, 0, 0, 0]);
  const params = { logitBias: new Map([[2, 100]]) };
  for (let step = 0; step < 50; step++) {
    assertEquals(sample(logits, ctx(params, { rngKey: { seed: 3, step } })).tokenId, 2);
  }
});

Deno.test("padding ids at or above validVocab are never sampled", () => {
  const logits = new Float32Array([0, 0, 50, 50]);
  assertEquals(sample(logits, ctx({ temperature: 0 }, { validVocab: 2 })).tokenId, 0);
  for (let step = 0; step < 200; step++) {
    const r = sample(logits, ctx({}, { validVocab: 2, rngKey: { seed: 5, step } }));
    assert(r.tokenId < 2);
  }
});

Deno.test("min_tokens blocks end-of-sequence ids until reached", () => {
  const logits = new Float32Array([0, 0, 10, 9]);
  const params = { temperature: 0, minTokens: 2, stopTokenIds: [3] };
  assertEquals(sample(logits, ctx(params, { eosTokenIds: [2], outputIds: [5] })).tokenId, 0);
  assertEquals(sample(logits, ctx(params, { eosTokenIds: [2], outputIds: [5, 6] })).tokenId, 2);
});

Deno.test("the same key gives the same draw; different steps and seeds differ", () => {
  const logits = new Float32Array(1000).fill(0);
  const a = sample(logits, ctx({}, { rngKey: { seed: 7, step: 3 } })).tokenId;
  const b = sample(logits, ctx({}, { rngKey: { seed: 7, step: 3 } })).tokenId;
  assertEquals(a, b);
  assertEquals(uniform({ seed: 7, step: 3 }), uniform({ seed: 7, step: 3, stream: 0 }));
  assertNotEquals(uniform({ seed: 7, step: 3 }), uniform({ seed: 7, step: 4 }));
  assertNotEquals(uniform({ seed: 7, step: 3 }), uniform({ seed: 8, step: 3 }));
  assertNotEquals(deriveSeed(7, 1), deriveSeed(7, 2));
  const u = uniform({ seed: -12, step: 0 });
  assert(u >= 0 && u < 1);
});

Deno.test("logprobs are the raw log-softmax, with top alternatives best first", () => {
  const logits = new Float32Array([Math.log(1), Math.log(3), Math.log(6), 99]);
  const r = sample(
    logits,
    ctx({ temperature: 0, logprobs: true, topLogprobs: 2, logitBias: new Map([[0, 50]]) }, {
      validVocab: 3,
    }),
  );
  assertEquals(r.tokenId, 0); // the bias decides the pick...
  assertAlmostEquals(r.logprob ?? 0, Math.log(0.1), 1e-5); // ...not the reported logprob
  assertEquals(r.top?.map((t) => t.tokenId), [2, 1]);
  assertAlmostEquals(r.top?.[0]?.logprob ?? 0, Math.log(0.6), 1e-5);
  assertEquals(sample(logits, ctx({ temperature: 0 })).logprob, undefined);
});

Deno.test("topIndices selects the k largest without sorting everything", () => {
  const values = new Float32Array(10_000).map((_, i) => Math.sin(i * 12.9898) * 43758.5453 % 1);
  const expected = [...values.keys()].sort((a, b) =>
    (values[b] as number) - (values[a] as number) || a - b
  );
  assertEquals(topIndices(values, 20), expected.slice(0, 20));
  assertEquals(topIndices(new Float32Array([1, 1, 1]), 2), [0, 1]);
});

/** Top-p by a full sort (value descending, then id), then the sampler's draw over the nucleus. */
function fullSortTopP(logits: Float32Array, order: number[], topP: number, u: number): number {
  let max = -Infinity;
  for (const v of logits) max = Math.max(max, v);
  const w = (i: number) => Math.exp(logits[i]! - max);
  let total = 0;
  for (let i = 0; i < logits.length; i++) total += w(i);
  let cumulative = 0;
  let cut = order.length;
  for (let j = 0; j < order.length; j++) {
    cumulative += w(order[j]!);
    if (cumulative >= topP * total) {
      cut = j + 1;
      break;
    }
  }
  const nucleus = order.slice(0, cut);
  let kept = 0;
  for (const i of nucleus) kept += w(i);
  let target = u * kept;
  for (const i of nucleus) {
    target -= w(i);
    if (target < 0) return i;
  }
  return nucleus.at(-1)!;
}

Deno.test("top-p draws exactly what a full sort of the vocabulary gives, flat to peaked", () => {
  const V = 5000;
  let state = 12345;
  const next = () => (state = (Math.imul(state, 1103515245) + 12345) >>> 0) / 2 ** 32;
  const shapes: [string, Float32Array][] = [
    ["flat", new Float32Array(V)],
    ["near-flat", new Float32Array(V).map(() => next() * 1e-3)],
    ["two levels", new Float32Array(V).map(() => (next() < 0.5 ? 1 : 0))],
    ["peaked", new Float32Array(V).map(() => (next() < 0.01 ? 12 : 0) + next())],
    ["zipf", new Float32Array(V).map((_, i) => -Math.log(1 + ((i * 7919) % V)))],
  ];
  for (const [name, logits] of shapes) {
    const order = [...logits.keys()].sort((a, b) => logits[b]! - logits[a]! || a - b);
    for (const topP of [0.05, 0.5, 0.9, 0.999]) {
      for (let step = 0; step < 25; step++) {
        const rngKey = { seed: 5, step };
        const got = sample(logits, ctx({ topP }, { rngKey })).tokenId;
        const want = fullSortTopP(logits, order, topP, uniform(rngKey));
        assertEquals(got, want, `${name}, top_p ${topP}, step ${step}`);
      }
    }
  }
});

Deno.test("a row of NaN or -Infinity logits samples no token; a NaN logit is never drawn", () => {
  const dead = new Float32Array([NaN, -Infinity, NaN, NaN]);
  for (const params of [{ temperature: 0 }, { temperature: 1 }, { temperature: 1, topP: 0.5 }]) {
    assertEquals(sample(dead, ctx(params)).tokenId, NO_TOKEN);
    assertEquals(sample(dead, ctx({ ...params, logprobs: true })).tokenId, NO_TOKEN);
  }
  const some = new Float32Array([NaN, 1, NaN, 0, NaN]);
  for (const topP of [1, 0.9]) {
    const counts = histogram(some, { temperature: 1, topP }, 400);
    assertEquals(counts(0) + counts(2) + counts(4), 0, `top_p ${topP}`);
  }
  assertEquals(sample(some, ctx({ temperature: 0 })).tokenId, 1);
});
