/**
 * `deno task bench`: measures, in one run on whatever adapter Deno finds,
 *  1. the matmul kernel's GFLOP/s at the 0.3B model's shapes, beside numpy's
 *     f32 matmul on the CPU of this machine as a yardstick;
 *  2. end-to-end generation on a model with the real 0.3B shapes (random
 *     weights): batched throughput, and the same requests one at a time;
 *  3. host memory of a 50k- and a 200k-line batch (max_tokens 1) on the tiny model.
 * Results go to bench/results.json. Flags: --quick (smaller runs), --skip=matmul,e2e,memory.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { Gpu } from "../engine/gpu/device.ts";
import * as ops from "../engine/gpu/kernels.ts";
import { Engine } from "../engine/engine.ts";
import { DEFAULT_SAMPLING, type GenerateRequest } from "../engine/types.ts";
import { makeModelDir, REAL_0_3B_OVERRIDES } from "../tools/make_fixture.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: { quick: { type: "boolean" }, skip: { type: "string" } },
});
const quick = flags.quick === true;
const skip = new Set((flags.skip ?? "").split(",").filter(Boolean));
if (!Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", Deno.makeTempDirSync());

const results: Record<string, unknown> = { date: new Date().toISOString(), quick };
const gpu = await Gpu.open();
results.adapter = gpu.description;
console.log(`adapter: ${gpu.description}`);

function bf16Random(n: number, seed: number): Uint16Array {
  const out = new Uint16Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = 0x3c00 | (s >>> 25); // small positive bf16 values in [2^-7, 2^-6)
  }
  return out;
}

/** GFLOP/s of y = x·Wᵀ for [M, K] × [N, K] with bf16 weights, timed over repeated dispatches in one submit. */
async function matmulGflops(M: number, N: number, K: number): Promise<number> {
  const w = ops.uploadSharded(gpu, "w", N, K, bf16Random(N * K, N + K));
  const x = gpu.upload("x", new Float32Array(M * K).fill(0.01));
  const y = gpu.storage("y", M * N * 4);
  const step = gpu.uniform("step", ops.STEP_UNIFORM_BYTES);
  gpu.write(step, new Uint32Array([M, M, M, 0]));
  const ds = ops.matmul(gpu, step, x, w, y);
  const shape = { numTokens: M, numRows: M, numLogitRows: M };
  const run = async (iters: number) => {
    const encoder = gpu.device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    for (let i = 0; i < iters; i++) ops.encode(pass, ds, shape);
    pass.end();
    gpu.device.queue.submit([encoder.finish()]);
    await gpu.device.queue.onSubmittedWorkDone();
  };
  await run(1);
  let iters = 1;
  let ms = 0;
  for (;;) {
    const t0 = performance.now();
    await run(iters);
    ms = performance.now() - t0;
    if (ms > (quick ? 300 : 1000) || iters >= 4096) break;
    iters *= 2;
  }
  w.shards.forEach((s) => s.buffer.destroy());
  x.destroy();
  y.destroy();
  return (2 * M * N * K * iters) / (ms / 1000) / 1e9;
}

/** numpy's f32 matmul GFLOP/s for the same shape (the CPU yardstick), or null without numpy. */
async function numpyGflops(M: number, N: number, K: number): Promise<number | null> {
  const script = `
import numpy as np, time
x = np.random.rand(${M}, ${K}).astype(np.float32); w = np.random.rand(${N}, ${K}).astype(np.float32)
x @ w.T
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < 0.5: x @ w.T; n += 1
print(2 * ${M} * ${N} * ${K} * n / (time.perf_counter() - t0) / 1e9)`;
  try {
    const out = await new Deno.Command("python3", { args: ["-c", script], stderr: "null" })
      .output();
    return out.success ? Number(new TextDecoder().decode(out.stdout).trim()) : null;
  } catch {
    return null;
  }
}

if (!skip.has("matmul")) {
  const shapes: [string, number, number][] = [
    ["qkv", 2560, 1024],
    ["o_proj", 1024, 2048],
    ["gate_up", 6144, 1024],
    ["down", 1024, 3072],
    ["lm_head", 103424, 1024],
  ];
  const rows = [];
  for (const M of quick ? [1, 64] : [1, 16, 64, 256]) {
    for (const [name, N, K] of shapes) {
      if (name === "lm_head" && M > 64) continue;
      const gflops = await matmulGflops(M, N, K);
      const numpy = await numpyGflops(M, N, K);
      rows.push({
        name,
        M,
        N,
        K,
        gflops: +gflops.toFixed(2),
        numpyGflops: numpy && +numpy.toFixed(2),
      });
      console.log(
        `matmul ${name.padEnd(8)} M=${String(M).padStart(3)} N=${N} K=${K}: ${
          gflops.toFixed(2)
        } GFLOP/s` +
          (numpy
            ? ` (numpy f32 on this CPU: ${numpy.toFixed(1)}, ratio ${(gflops / numpy).toFixed(3)})`
            : ""),
      );
    }
  }
  results.matmul = rows;
}

/** Runs requests through an engine and reports generated tokens per second. */
async function generateAll(engine: Engine, reqs: GenerateRequest[], oneAtATime: boolean) {
  const t0 = performance.now();
  const before = { ...engine.stats };
  let tokens = 0;
  if (oneAtATime) {
    for (const r of reqs) tokens += (await engine.generate(r)).tokenIds.length;
  } else {
    const out = await Promise.all(reqs.map((r) => engine.generate(r)));
    tokens = out.reduce((n, r) => n + r.tokenIds.length, 0);
  }
  const s = (performance.now() - t0) / 1000;
  const steps = engine.stats.steps - before.steps;
  return {
    requests: reqs.length,
    generatedTokens: tokens,
    seconds: +s.toFixed(2),
    tokensPerSecond: +(tokens / s).toFixed(2),
    promptTokensPerSecond: +((engine.stats.promptTokensComputed - before.promptTokensComputed) / s)
      .toFixed(2),
    steps,
    meanBatchOccupancy: +((engine.stats.seqsInSteps - before.seqsInSteps) / Math.max(1, steps))
      .toFixed(2),
  };
}

if (!skip.has("e2e")) {
  const dir = join("bench", "tmp", "ernie-0.3b-random");
  try {
    await Deno.stat(join(dir, "model.safetensors"));
  } catch {
    console.log(`writing a model with the real 0.3B shapes (random bf16 weights) to ${dir} …`);
    await Deno.mkdir(dir, { recursive: true });
    await makeModelDir(dir, REAL_0_3B_OVERRIDES, { seed: 1 });
  }
  const maxNumSeqs = quick ? 16 : 32;
  const engine = await Engine.load(dir, {
    gpu,
    maxNumSeqs,
    maxNumBatchedTokens: 512,
    kvCacheMemory: 1 << 30,
  });
  const n = quick ? 16 : 32;
  const outLen = quick ? 16 : 64;
  // Each phase gets its own prompts (and its own shared system prompt, on half of them), so
  // the one-at-a-time phase does not find the batched phase's prompts in the prefix cache.
  const reqs = (tag: string, phase: number) => {
    const system = Array.from({ length: quick ? 48 : 96 }, (_, i) => 300 + phase * 200 + i);
    return Array.from({ length: n }, (_, i): GenerateRequest => ({
      id: `${tag}${i}`,
      promptIds: [
        ...(i % 2 === 0 ? system : []),
        ...Array.from(
          { length: 16 + (i * 7) % 48 },
          (_, j) => 1000 + ((phase * 977 + i * 31 + j * 17) % 1000),
        ),
      ],
      sampling: { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: outLen, ignoreEos: true },
    }));
  };
  await generateAll(
    engine,
    reqs("warm", 0).slice(0, 2).map((r) => ({ ...r, sampling: { ...r.sampling, maxTokens: 2 } })),
    false,
  );
  const batched = await generateAll(engine, reqs("b", 1), false);
  const single = await generateAll(engine, reqs("s", 2).slice(0, quick ? 3 : 4), true);
  const ratio = batched.tokensPerSecond / single.tokensPerSecond;
  results.e2e = {
    model: "real 0.3B shapes, random bf16 weights",
    maxNumSeqs,
    batched,
    oneAtATime: single,
    batchedOverOneAtATime: +ratio.toFixed(2),
    prefixCacheHitRate: +engine.prefixCacheHitRate.toFixed(3),
    preemptions: engine.stats.preemptions,
    kvCacheMiB: +(engine.runner.kvBytes / 2 ** 20).toFixed(1),
    weightsMiB: +(engine.runner.weightBytes / 2 ** 20).toFixed(1),
    peakRssMiB: +(Deno.memoryUsage().rss / 2 ** 20).toFixed(1),
  };
  console.log(
    `e2e (0.3B shapes): batched ${batched.tokensPerSecond} tok/s (occupancy ${batched.meanBatchOccupancy}), ` +
      `one at a time ${single.tokensPerSecond} tok/s → ${
        ratio.toFixed(2)
      }×; prefill ${batched.promptTokensPerSecond} tok/s; ` +
      `prefix-cache hit rate ${engine.prefixCacheHitRate.toFixed(3)}`,
  );
  await engine.close();
}

/** Peak RSS (VmHWM) of a CLI run over `lines` requests with max_tokens 1. */
async function batchPeakRss(
  lines: number,
): Promise<{ lines: number; peakRssMiB: number; seconds: number }> {
  const tmp = await Deno.makeTempDir({ prefix: "batchwright-bench-" });
  const input = join(tmp, "in.jsonl");
  const file = await Deno.open(input, { write: true, create: true });
  const enc = new TextEncoder();
  let chunk = "";
  for (let i = 0; i < lines; i++) {
    chunk += JSON.stringify({
      custom_id: `r${i}`,
      method: "POST",
      url: "/v1/chat/completions",
      body: { messages: [{ role: "user", content: `Say ${i}` }], max_tokens: 1, temperature: 0 },
    }) + "\n";
    if (chunk.length > 1 << 20) {
      await file.write(enc.encode(chunk));
      chunk = "";
    }
  }
  await file.write(enc.encode(chunk));
  file.close();
  const t0 = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      "cli.ts",
      "run-batch",
      "--model",
      "models/ernie-tiny",
      "-i",
      input,
      "-o",
      join(tmp, "out.jsonl"),
      "-q",
    ],
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  let peak = 0;
  const poll = setInterval(() => {
    try {
      const status = Deno.readTextFileSync(`/proc/${child.pid}/status`);
      const kb = Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0);
      peak = Math.max(peak, kb);
    } catch { /* exited */ }
  }, 200);
  await child.status;
  clearInterval(poll);
  await Deno.remove(tmp, { recursive: true });
  return {
    lines,
    peakRssMiB: +(peak / 1024).toFixed(1),
    seconds: +((performance.now() - t0) / 1000).toFixed(1),
  };
}

if (!skip.has("memory")) {
  const sizes = quick ? [5_000, 20_000] : [50_000, 200_000];
  const runs = [];
  for (const n of sizes) {
    const r = await batchPeakRss(n);
    runs.push(r);
    console.log(`memory: ${n} lines (max_tokens 1): peak RSS ${r.peakRssMiB} MiB in ${r.seconds}s`);
  }
  results.memory = runs;
}

await Deno.writeTextFile(join("bench", "results.json"), JSON.stringify(results, null, 2) + "\n");
console.log("wrote bench/results.json");
gpu.destroy();
