/**
 * `--profile`: per-kernel GPU time from timestamp queries (or, without them,
 * separate submits), each kernel's FLOPs and bytes from its shapes, and the
 * table the CLI and the bench print. Profiling must not change any result.
 */
import { assert, assertEquals } from "./_assert.ts";
import { gpuTest, rng } from "./_gpu.ts";
import type { Gpu } from "../engine/gpu/device.ts";
import { loadModelConfig } from "../engine/loader/config.ts";
import { Checkpoint } from "../engine/loader/checkpoint.ts";
import { ModelRunner } from "../engine/model_runner.ts";
import { kernelTable } from "../engine/gpu/registry.ts";
import { Engine } from "../engine/engine.ts";
import { DEFAULT_SAMPLING } from "../engine/types.ts";
import {
  formatProfile,
  type KernelProfile,
  KernelProfiler,
  peakOf,
} from "../engine/gpu/profile.ts";

const MODEL = "models/ernie-tiny";

async function runner(gpu: Gpu, kernels: "cpu" | "gpu", profile: boolean) {
  const config = await loadModelConfig(MODEL);
  const ckpt = await Checkpoint.open(MODEL, config);
  const names = new Set(ckpt.names());
  try {
    return await ModelRunner.create(gpu, config, {
      get: (n) => (names.has(n) ? ckpt.get(n) : Promise.resolve(null)),
    }, {
      maxNumBatchedTokens: 64,
      maxNumSeqs: 4,
      numBlocks: 16,
      blockSize: 16,
      maxBlocksPerSeq: 8,
      validVocab: config.vocabSize,
    }, { kernels, profile });
  } finally {
    ckpt.close();
  }
}

const stat = (p: KernelProfile, label: string) => p.kernels.find((k) => k.label === label);

Deno.test("known cards are recognised by their adapter description", () => {
  assertEquals(peakOf("NVIDIA H100 80GB HBM3")?.name, "NVIDIA H100 SXM5");
  assertEquals(peakOf("NVIDIA H100 PCIe")?.name, "NVIDIA H100 PCIe");
  assertEquals(peakOf("NVIDIA H200")?.bytesPerSecond, 4.8e12);
  assertEquals(peakOf("llvmpipe (LLVM 15.0.6, 256 bits)"), undefined);
});

for (const kernels of ["cpu", "gpu"] as const) {
  gpuTest(
    `profiling a ${kernels}-class step times every kernel, counts its FLOPs from the shapes, ` +
      "and leaves the logits unchanged",
    async (gpu) => {
      const r = rng(11);
      const prompts = [21, 2].map((n) =>
        Array.from({ length: n }, () => 3 + Math.floor(r() * 900))
      );
      const seqs = prompts.map((p, i) => ({
        tokens: p,
        start: 0,
        blockTable: [2 * i, 2 * i + 1],
        output: "sample" as const,
      }));
      const plain = await runner(gpu, kernels, false);
      const want = await plain.step(seqs, true);
      plain.destroy();
      const profiled = await runner(gpu, kernels, true);
      const got = await profiled.step(seqs, true);
      assertEquals([...got.logits!], [...want.logits!]);
      const p = profiled.kernelProfile()!;
      profiled.destroy();
      assertEquals(p.steps, 1);
      assertEquals(p.method, gpu.hasTimestamps ? "timestamp-query" : "separate-submits");
      // T = 23 tokens take the tiled kernel in every layer; the L = 2 logit rows the GEMV
      // in the gpu class (gemvMaxRows 4), the tiled kernel in the cpu class (gemvMaxRows 1).
      const c = profiled.shape;
      const [T, L, H, I, D] = [23, 2, c.hiddenSize, c.intermediateSize, c.headDim];
      const qkv = (c.numHeads + 2 * c.numKvHeads) * D;
      const perLayer = 2 * T * H * (qkv + c.numHeads * D + 2 * I + I);
      const lmHead = 2 * L * c.vocabSize * H;
      const gemv = L <= kernelTable(kernels).gemvMaxRows;
      assertEquals(stat(p, "matmul")!.flops, c.numLayers * perLayer + (gemv ? 0 : lmHead));
      assertEquals(stat(p, "matmul")!.calls, 4 * c.numLayers + (gemv ? 0 : 1));
      assertEquals(stat(p, "gemv")?.flops, gemv ? lmHead : undefined);
      for (const k of p.kernels) assert(k.seconds > 0, `${k.label} took ${k.seconds} s`);
      const table = formatProfile(p);
      for (const label of ["embedding", "rms_norm", "matmul", "silu_mul", "attention"]) {
        assert(table.includes(label), `the table lists ${label}:\n${table}`);
      }
      assert(table.includes("GFLOP/s") && table.includes("GB/s"), table);
    },
  );
}

gpuTest("without timestamp-query, kernels are timed by separate submits", async (gpu) => {
  // The same device, seen as one without the feature.
  const bare = Object.create(gpu, { hasTimestamps: { value: false } }) as Gpu;
  const profiler = new KernelProfiler(bare, 64);
  const plain = await runner(gpu, "gpu", false);
  const shape = { numTokens: 3, numRows: 1, numLogitRows: 1 };
  gpu.write(plain.buffers.step, new Uint32Array([3, 1, 1, 0]));
  const encoder = gpu.device.createCommandEncoder();
  await profiler.record(encoder, plain.plan.body, shape);
  gpu.device.queue.submit([encoder.finish()]);
  await profiler.collect();
  const p = profiler.report();
  plain.destroy();
  assertEquals(p.method, "separate-submits");
  assertEquals(stat(p, "gemv")!.calls, 4 * plain.shape.numLayers);
  assert(stat(p, "gemv")!.seconds > 0);
  assert(formatProfile(p).includes("no timestamp-query"), formatProfile(p));
});

gpuTest("an engine loaded with profile: true reports its kernels after generating", async (gpu) => {
  const engine = await Engine.load(MODEL, { gpu, profile: true, kernels: "gpu" });
  const sampling = { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 3, ignoreEos: true };
  await engine.generate({ id: "a", promptIds: [5, 6, 7, 8], sampling });
  const p = engine.kernelProfile()!;
  assertEquals(p.steps, 3);
  assert(stat(p, "gemv")!.calls > 0 && stat(p, "sample")!.calls === 3, formatProfile(p));
  engine.resetKernelProfile();
  assertEquals(engine.kernelProfile()!.kernels.length, 0);
  await engine.close();
  const plain = await Engine.load(MODEL, { gpu });
  assertEquals(plain.kernelProfile(), undefined);
  await plain.close();
});
