/**
 * Engine behaviours a broken cache, sampler key or pool sizing would change
 * without failing the other tests: the prefix cache keyed by the whole prefix
 * (not one block), a seeded request's text independent of the engine's
 * history, mean pooling over every prompt position with a warm prefix cache,
 * and a KV pool inside its byte budget.
 */
import { assert, assertEquals } from "./_assert.ts";
import { assertClose, gpuTest, rng } from "./_gpu.ts";
import { ReferenceModel } from "./reference.ts";
import { Engine } from "../engine/engine.ts";
import { ModelRunner } from "../engine/model_runner.ts";
import { DEFAULT_SAMPLING, type SamplingParams } from "../engine/types.ts";

const MODEL = "models/ernie-tiny";
const GREEDY: SamplingParams = {
  ...DEFAULT_SAMPLING,
  temperature: 0,
  maxTokens: 4,
  ignoreEos: true,
};

/** `n` consecutive ids from `from`: one KV block's worth of distinct tokens. */
const run = (from: number, n: number) => Array.from({ length: n }, (_, i) => from + i);

gpuTest(
  "prompts that share a middle block but not the prefix before it do not share its KV",
  async (gpu) => {
    const engine = await Engine.load(MODEL, { gpu, blockSize: 8, kvCacheMemory: 4 << 20 });
    try {
      const ref = await ReferenceModel.load(MODEL, { vocabLimit: engine.validVocab });
      const [x, y, middle] = [run(400, 8), run(600, 8), run(800, 8)];
      const prompts = {
        a: [...x, ...middle, 1001, 1002],
        b: [...y, ...middle, 1003], // the same second block as a, after a different first one
        c: [...y, ...middle, 1004, 1005], // b's prefix: both of b's full blocks are reusable
      };
      const out: Record<string, { tokenIds: readonly number[]; cachedTokens: number }> = {};
      for (const [id, promptIds] of Object.entries(prompts)) {
        out[id] = await engine.generate({ id, promptIds, sampling: GREEDY });
      }
      assertEquals(out.b!.cachedTokens, 0, "b shares no KV with a: its first block differs");
      assertEquals(out.c!.cachedTokens, 16, "c reuses both of b's blocks");
      for (const [id, promptIds] of Object.entries(prompts)) {
        assertEquals(out[id]!.tokenIds, ref.greedy(promptIds, GREEDY.maxTokens), `prompt ${id}`);
      }
    } finally {
      await engine.close();
    }
  },
);

gpuTest(
  "a seeded request samples the same text on a fresh engine and after unrelated traffic on it",
  async (gpu) => {
    const engine = await Engine.load(MODEL, { gpu, maxNumSeqs: 16, kvCacheMemory: 4 << 20 });
    try {
      const r = rng(41);
      const ids = (n: number) => Array.from({ length: n }, () => 300 + Math.floor(r() * 1500));
      const target = {
        id: "target",
        promptIds: ids(21),
        sampling: { ...DEFAULT_SAMPLING, temperature: 0.9, topP: 0.95, seed: 1234, maxTokens: 12 },
      };
      const first = await engine.generate(target);
      const traffic = (tag: string) =>
        [5, 17, 30, 9].map((n, i) =>
          engine.generate({
            id: `${tag}${i}`,
            promptIds: ids(n),
            sampling: { ...DEFAULT_SAMPLING, maxTokens: 3 + 5 * i, ignoreEos: true },
          })
        );
      await Promise.all(traffic("before"));
      assert(engine.stats.steps > first.tokenIds.length + 5, "the engine has stepped on");
      const after = await engine.generate({ ...target, id: "after" });
      const [among] = await Promise.all([
        engine.generate({ ...target, id: "among" }),
        ...traffic("beside"),
      ]);
      assertEquals(after.tokenIds, first.tokenIds, "after unrelated traffic");
      assertEquals(among!.tokenIds, first.tokenIds, "among unrelated traffic");
    } finally {
      await engine.close();
    }
  },
);

/** The L2-normalised mean, or last row, of float64 rows. */
function pooled(rows: Float64Array[], pooling: "mean" | "last"): Float64Array {
  const v = new Float64Array(rows[0]!.length);
  const used = pooling === "mean" ? rows : [rows.at(-1)!];
  for (const row of used) row.forEach((x, c) => (v[c]! += x / used.length));
  const norm = Math.hypot(...v);
  return v.map((x) => x / norm);
}

for (const pooling of ["mean", "last"] as const) {
  gpuTest(
    `${pooling} pooling matches the float64 reference when prompts share a cached prefix`,
    async (gpu) => {
      const engine = await Engine.load(MODEL, {
        gpu,
        pooling,
        blockSize: 8,
        kvCacheMemory: 4 << 20,
      });
      try {
        const ref = await ReferenceModel.load(MODEL);
        const system = run(500, 24); // three full blocks
        const prompts = [[...system, 1001, 1002, 1003], [...system, 1004, 1005], [1006, 1007]];
        for (const [i, promptIds] of prompts.entries()) {
          // One at a time, so the second finds the first's blocks in the prefix cache.
          const { embedding } = await engine.embed({ id: `e${i}`, promptIds });
          assertClose(embedding, pooled(ref.hiddenStates(promptIds), pooling), {
            rtol: 1e-3,
            atol: 1e-4,
            what: `${pooling} embedding of prompt ${i}`,
          });
        }
      } finally {
        await engine.close();
      }
    },
  );
}

gpuTest("the KV pool stays within --kv-cache-memory and uses it", async (gpu) => {
  // One block of the tiny model: 16 tokens × 2 layers × (K, V) × 2 heads × 32 dims × 4 bytes.
  const blockBytes = 16 * 2 * 2 * 2 * 32 * 4;
  for (const budget of [1 << 20, 1_000_003, 5 * blockBytes - 1]) {
    const engine = await Engine.load(MODEL, { gpu, kvCacheMemory: budget, blockSize: 16 });
    try {
      const runner = engine.runner;
      assert(runner instanceof ModelRunner);
      const { kCache, vCache } = runner.buffers;
      const allocated = [...kCache, ...vCache].reduce((n, b) => n + b.size, 0);
      assertEquals(runner.kvBytes, allocated, "kvBytes reports the buffers' size");
      assert(allocated <= budget, `the pool has ${allocated} bytes, over the budget ${budget}`);
      assert(
        allocated > budget - blockBytes,
        `the pool has ${allocated} bytes, a block or more under the budget ${budget}`,
      );
      assertEquals(runner.options.numBlocks * blockBytes, allocated);
    } finally {
      await engine.close();
    }
  }
});
