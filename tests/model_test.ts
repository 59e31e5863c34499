/**
 * The whole decoder on the GPU against the float64 reference written from the
 * specification: logits after prefill, after decode steps that reuse the paged
 * KV cache, for several sequences in one step, and greedy generation token for token.
 */
import { assert, assertEquals } from "./_assert.ts";
import { gpuTest, rng } from "./_gpu.ts";
import { ReferenceModel } from "./reference.ts";
import { loadModelConfig } from "../engine/loader/config.ts";
import { Checkpoint } from "../engine/loader/checkpoint.ts";
import { ModelRunner } from "../engine/model_runner.ts";
import { Engine } from "../engine/engine.ts";
import { DEFAULT_SAMPLING } from "../engine/types.ts";
import type { Gpu } from "../engine/gpu/device.ts";

const MODELS = ["models/ernie-tiny", "models/ernie-tiny-paddle"];

/** max |a − b| / max |b| over the finite entries of b. */
function relError(a: Float32Array, b: Float64Array): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    if (!Number.isFinite(b[i]!)) continue;
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / scale;
}

async function makeRunner(gpu: Gpu, dir: string, blockSize: number): Promise<ModelRunner> {
  const config = await loadModelConfig(dir);
  const ckpt = await Checkpoint.open(dir, config);
  const names = new Set(ckpt.names());
  try {
    return await ModelRunner.create(gpu, config, {
      get: (n) => (names.has(n) ? ckpt.get(n) : Promise.resolve(null)),
    }, {
      maxNumBatchedTokens: 128,
      maxNumSeqs: 4,
      numBlocks: 64,
      blockSize,
      maxBlocksPerSeq: 32,
      validVocab: config.vocabSize,
    });
  } finally {
    ckpt.close();
  }
}

for (const dir of MODELS) {
  gpuTest(`GPU logits match the float64 reference for prefill and decode (${dir})`, async (gpu) => {
    const ref = await ReferenceModel.load("models/ernie-tiny");
    const runner = await makeRunner(gpu, dir, 16);
    const V = runner.shape.vocabSize;
    const r = rng(dir.length);
    // Two sequences with scattered blocks; prompts of 37 and 5 tokens, then 4 decode steps each.
    const prompts = [37, 5].map((n) => Array.from({ length: n }, () => 3 + Math.floor(r() * 1000)));
    const tables = [[7, 2, 9, 4], [11, 0, 5, 3]];
    const caches = prompts.map(() => ref.newCache());
    let wanted = prompts.map((p, i) => ref.step(caches[i]!, p, 0).at(-1)!);
    let res = await runner.step(
      prompts.map((p, i) => ({
        tokens: p,
        start: 0,
        blockTable: tables[i]!,
        output: "sample" as const,
      })),
      true,
    );
    const lengths = prompts.map((p) => p.length);
    for (let step = 0; step < 5; step++) {
      for (let i = 0; i < prompts.length; i++) {
        const got = res.logits!.subarray(i * V, (i + 1) * V);
        const err = relError(got, wanted[i]!);
        assert(err < 1e-3, `step ${step} seq ${i}: relative error ${err}`);
      }
      const next = prompts.map(() => 3 + Math.floor(r() * 1000));
      wanted = next.map((id, i) => ref.step(caches[i]!, [id], lengths[i]!)[0]!);
      res = await runner.step(
        next.map((id, i) => ({
          tokens: [id],
          start: lengths[i]!,
          blockTable: tables[i]!,
          output: "sample" as const,
        })),
        true,
      );
      next.forEach((_, i) => lengths[i]!++);
    }
    runner.destroy();
  });
}

gpuTest("a prompt prefilled in chunks gives the same logits as in one step", async (gpu) => {
  const runner = await makeRunner(gpu, "models/ernie-tiny", 4);
  const r = rng(5);
  const prompt = Array.from({ length: 23 }, () => 3 + Math.floor(r() * 1000));
  const whole = await runner.step([{
    tokens: prompt,
    start: 0,
    blockTable: [0, 1, 2, 3, 4, 5],
    output: "sample",
  }], true);
  const table = [10, 11, 12, 13, 14, 15];
  await runner.step(
    [{ tokens: prompt.slice(0, 9), start: 0, blockTable: table, output: "none" }],
    true,
  );
  await runner.step(
    [{ tokens: prompt.slice(9, 20), start: 9, blockTable: table, output: "none" }],
    true,
  );
  const chunked = await runner.step([{
    tokens: prompt.slice(20),
    start: 20,
    blockTable: table,
    output: "sample",
  }], true);
  assertEquals([...chunked.logits!], [...whole.logits!]);
  runner.destroy();
});

gpuTest("greedy generation matches the reference token for token", async (gpu) => {
  const ref = await ReferenceModel.load("models/ernie-tiny");
  const engine = await Engine.load("models/ernie-tiny", {
    gpu,
    maxNumSeqs: 8,
    kvCacheMemory: 8 << 20,
  });
  const r = rng(77);
  const prompts = [3, 12, 40].map((n) =>
    Array.from({ length: n }, () => 3 + Math.floor(r() * 1000))
  );
  const results = await Promise.all(prompts.map((p, i) =>
    engine.generate({
      id: `g${i}`,
      promptIds: p,
      sampling: { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 12, ignoreEos: true },
    })
  ));
  for (const [i, p] of prompts.entries()) {
    assertEquals([...results[i]!.tokenIds], ref.greedy(p, 12), `prompt ${i}`);
    assertEquals(results[i]!.finishReason, "length");
  }
  await engine.close();
});
