/**
 * Long prompts against the float64 reference, for any {@linkcode Runner}: a
 * backend's test file calls {@linkcode defineLongContextTests} with a factory
 * that builds its runner (WebGPU per kernel class, WebAssembly, ...), so every
 * backend answers the same cases.
 *
 * @example
 * ```ts ignore
 * defineLongContextTests("webgpu", (name, fn) =>
 *   gpuTest(name, (gpu) => fn((dir, o) => makeWebGpuRunner(gpu, dir, o))));
 * ```
 *
 * @module
 */
import { assert } from "./_assert.ts";
import { relError, rng } from "./_gpu.ts";
import { ReferenceModel } from "./reference.ts";
import type { Runner, RunnerOptions, StepSeq } from "../engine/runner.ts";

/** Builds a runner for the model in `dir` with the given capacities. */
export type RunnerFactory = (dir: string, options: RunnerOptions) => Promise<Runner>;

/** Registers one named test that gets a runner factory (and skips or fails as its backend needs). */
export type RunnerTest = (name: string, fn: (make: RunnerFactory) => Promise<void>) => void;

const MODEL = "models/ernie-tiny";

/** The blocks 0..n−1 in a seeded random order, so tables are scattered over the pool. */
function shuffledBlocks(n: number, random: () => number): number[] {
  const order = Array.from({ length: n }, (_, i) => i);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1));
    [order[i], order[j]] = [order[j]!, order[i]!];
  }
  return order;
}

/**
 * Registers the long-context cases for one backend. `tolerance` bounds the
 * relative logit error (max |Δ| / max |logit|): f32 throughout stays near
 * 1e-6 on the tiny model; an f16 KV cache near 1e-3.
 */
export function defineLongContextTests(
  backend: string,
  test: RunnerTest,
  { tolerance = 1e-4 } = {},
): void {
  test(
    `${backend}: a 320-token prompt in chunks of 160 beside a short one, then decodes, match the float64 reference`,
    async (make) => {
      const ref = await ReferenceModel.load(MODEL);
      const [B, numBlocks] = [16, 64];
      const runner = await make(MODEL, {
        maxNumBatchedTokens: 256,
        maxNumSeqs: 4,
        numBlocks,
        blockSize: B,
        maxBlocksPerSeq: 24,
        validVocab: ref.config.vocab,
      });
      try {
        const V = ref.config.vocab;
        const r = rng(320);
        const ids = (n: number) => Array.from({ length: n }, () => 3 + Math.floor(r() * 2000));
        const long = ids(320);
        const short = ids(40);
        const blocks = shuffledBlocks(numBlocks, r);
        const tables = [blocks.slice(0, 21), blocks.slice(21, 25)];
        const caches = [ref.newCache(), ref.newCache()];
        // Logits of every prompt position: (320 | 40)[vocab].
        const wanted = [ref.step(caches[0]!, long, 0), ref.step(caches[1]!, short, 0)];
        const seq = (s: number, tokens: number[], start: number): StepSeq => ({
          tokens,
          start,
          blockTable: tables[s]!,
          output: "sample",
        });
        const check = (got: Float32Array, row: number, want: Float64Array, what: string) => {
          const err = relError(got.subarray(row * V, (row + 1) * V), want);
          assert(err < tolerance, `${backend}: ${what}: relative logit error ${err}`);
        };
        // Prefill: the long prompt in two chunks (positions 0..159, 160..319), the short
        // prompt whole in the first step. Attention spans 3 and then 5 chunks of 64 keys.
        let res = await runner.step([seq(0, long.slice(0, 160), 0), seq(1, short, 0)], true);
        check(res.logits!, 0, wanted[0]![159]!, "long prompt at position 159");
        check(res.logits!, 1, wanted[1]![39]!, "short prompt at position 39");
        res = await runner.step([seq(0, long.slice(160), 160)], true);
        check(res.logits!, 0, wanted[0]![319]!, "long prompt at position 319");
        // Decode both together; the long one's positions cross into a sixth chunk of keys.
        const lengths = [long.length, short.length];
        for (let step = 0; step < 3; step++) {
          const next = ids(2);
          const want = next.map((id, s) => ref.step(caches[s]!, [id], lengths[s]!)[0]!);
          res = await runner.step(next.map((id, s) => seq(s, [id], lengths[s]!)), true);
          next.forEach((_, s) => {
            check(res.logits!, s, want[s]!, `decode ${step} of sequence ${s} at ${lengths[s]}`);
            lengths[s]!++;
          });
        }
      } finally {
        runner.destroy();
      }
    },
  );
}
