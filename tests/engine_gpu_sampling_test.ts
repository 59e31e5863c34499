/**
 * Sampling on the device, end to end, on both backends that do it (the gpu kernel
 * class samples on the GPU, the wasm backend on its worker threads; both read
 * back ids only): seeded draws independent of the batch and of the engine's
 * history, logit edits (bias, penalties, min_tokens) applied on the device, and
 * rows that need the host (logprobs) still answered from their logits.
 */
import { assert, assertEquals } from "./_assert.ts";
import { gpuTest } from "./_gpu.ts";
import { Engine } from "../engine/engine.ts";
import { DEFAULT_SAMPLING, type GenerateRequest, type SamplingParams } from "../engine/types.ts";

const MODEL = "models/ernie-tiny";

/** Registers a test for the gpu kernel class (when there is an adapter) and the wasm backend. */
function deviceTest(name: string, fn: (load: () => Promise<Engine>) => Promise<void>): void {
  gpuTest(`gpu class: ${name}`, (gpu) => fn(() => Engine.load(MODEL, { gpu, kernels: "gpu" })));
  Deno.test(`wasm: ${name}`, () => fn(() => Engine.load(MODEL, { backend: "wasm", threads: 2 })));
}

function req(id: string, prompt: number[], p: Partial<SamplingParams>): GenerateRequest {
  return { id, promptIds: prompt, sampling: { ...DEFAULT_SAMPLING, maxTokens: 12, ...p } };
}

deviceTest(
  "device sampling: a seeded draw is the same alone, in a batch, and after other traffic",
  async (load) => {
    const engine = await load();
    try {
      assert(engine.runner.deviceSampling === true, "the runner samples on the device");
      const params = { temperature: 0.9, topP: 0.9, topK: 40, seed: 1234, ignoreEos: true };
      const alone = await engine.generate(req("alone", [5, 6, 7, 8], params));
      const others = Array.from({ length: 20 }, (_, i) =>
        engine.generate(
          req(`o${i}`, [9 + i, 10, 11 + i], { temperature: 1.1, seed: i, ignoreEos: true }),
        ));
      const batched = engine.generate(req("batched", [5, 6, 7, 8], params));
      await Promise.all(others);
      assertEquals((await batched).tokenIds, alone.tokenIds);
      const again = await engine.generate(req("again", [5, 6, 7, 8], params));
      assertEquals(again.tokenIds, alone.tokenIds);
      // A different seed draws something else (the key reaches the GPU).
      const other = await engine.generate(req("seed", [5, 6, 7, 8], { ...params, seed: 99 }));
      assert(other.tokenIds.join() !== alone.tokenIds.join(), "seed changes the draw");
    } finally {
      await engine.close();
    }
  },
);

deviceTest("device sampling applies logit bias, penalties and min_tokens", async (load) => {
  const engine = await load();
  try {
    // A +100 bias makes id 77 certain at any temperature.
    const biased = await engine.generate(
      req("bias", [5, 6, 7], {
        temperature: 1,
        seed: 1,
        logitBias: new Map([[77, 100]]),
        maxTokens: 5,
      }),
    );
    assertEquals(biased.tokenIds, [77, 77, 77, 77, 77]);
    // The same with a large frequency penalty: 77 once, then never twice in a row's count.
    const penalised = await engine.generate(
      req("pen", [5, 6, 7], {
        temperature: 1,
        seed: 1,
        logitBias: new Map([[77, 100]]),
        frequencyPenalty: 2,
        presencePenalty: 2,
        repetitionPenalty: 1,
        maxTokens: 4,
      }),
    );
    assertEquals(penalised.tokenIds[0], 77);
    // 100 − 2·count − 2 stays far above every other logit: still 77.
    assertEquals(penalised.tokenIds, [77, 77, 77, 77]);
    // min_tokens masks the end ids: a bias toward eos (2) cannot end the answer early.
    const held = await engine.generate(
      req("min", [5, 6, 7], {
        temperature: 0.8,
        seed: 3,
        logitBias: new Map([[2, 100]]),
        minTokens: 4,
        maxTokens: 10,
      }),
    );
    assertEquals(held.tokenIds.length, 5, "4 tokens, then the eos the bias makes certain");
    assertEquals(held.tokenIds.at(-1), 2);
    assert(!held.tokenIds.slice(0, 4).includes(2), "no eos before min_tokens");
  } finally {
    await engine.close();
  }
});

gpuTest(
  "device sampling: greedy ids equal the cpu class's, and logprob rows still come back",
  async (gpu) => {
    const gpuEngine = await Engine.load(MODEL, { gpu, kernels: "gpu" });
    const cpuEngine = await Engine.load(MODEL, { gpu, kernels: "cpu" });
    try {
      const greedy = { temperature: 0, ignoreEos: true, repetitionPenalty: 1.3 };
      const a = await gpuEngine.generate(req("g", [3, 1, 4, 1, 5], greedy));
      const b = await cpuEngine.generate(req("c", [3, 1, 4, 1, 5], greedy));
      assertEquals(a.tokenIds, b.tokenIds);
      const withLogprobs = await gpuEngine.generate(
        req("lp", [3, 1, 4], { temperature: 0.7, seed: 5, logprobs: true, topLogprobs: 2 }),
      );
      assertEquals(withLogprobs.logprobs?.length, withLogprobs.tokenIds.length);
      for (const step of withLogprobs.logprobs!) assert(step.logprob <= 0 && step.top.length === 2);
    } finally {
      await gpuEngine.close();
      await cpuEngine.close();
    }
  },
);

deviceTest(
  "device sampling: a greedy row with a penalty picks what the host sampler picks",
  async (load) => {
    const engine = await load();
    try {
      const greedy = { temperature: 0, ignoreEos: true, repetitionPenalty: 1.3, maxTokens: 16 };
      const device = await engine.generate(req("d", [3, 1, 4, 1, 5], greedy));
      // logprobs send the row's logits to the host sampler.
      const host = await engine.generate(req("h", [3, 1, 4, 1, 5], { ...greedy, logprobs: true }));
      assertEquals(device.tokenIds, host.tokenIds);
    } finally {
      await engine.close();
    }
  },
);
