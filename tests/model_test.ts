/**
 * The whole decoder on every backend (WebGPU, WebAssembly) against the float64
 * reference written from the specification: logits after prefill, after decode
 * steps that reuse the paged KV cache, for several sequences in one step, and
 * greedy generation token for token.
 */
import { assert, assertEquals } from "./_assert.ts";
import { rng } from "./_gpu.ts";
import { ReferenceModel } from "./reference.ts";
import { Engine } from "../engine/engine.ts";
import { DEFAULT_SAMPLING } from "../engine/types.ts";
import { backendTest } from "./_runners.ts";
import { relError } from "./_gpu.ts";

const MODELS = ["models/ernie-tiny", "models/ernie-tiny-paddle"];

for (const dir of MODELS) {
  backendTest(
    `logits match the float64 reference for prefill and decode (${dir})`,
    async (make) => {
      const ref = await ReferenceModel.load("models/ernie-tiny");
      const runner = await make(dir, 16);
      const V = runner.shape.vocabSize;
      const r = rng(dir.length);
      // Two sequences with scattered blocks; prompts of 37 and 5 tokens, then 4 decode steps each.
      const prompts = [37, 5].map((n) =>
        Array.from({ length: n }, () => 3 + Math.floor(r() * 1000))
      );
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
    },
  );
}

backendTest("a prompt prefilled in chunks gives the same logits as in one step", async (make) => {
  const runner = await make("models/ernie-tiny", 4);
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

backendTest("greedy generation matches the reference token for token", async (_, options) => {
  const ref = await ReferenceModel.load("models/ernie-tiny");
  const engine = await Engine.load("models/ernie-tiny", {
    ...options,
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
