/**
 * `deno task bench`: measures, in one run on this machine,
 *  1. kernels: the matmul's GFLOP/s at the 0.3B model's shapes on each
 *     backend (WGSL on the WebGPU adapter in the kernel class the engine picks
 *     for it; WebAssembly SIMD on worker threads), beside numpy's f32 matmul
 *     on this CPU as a yardstick;
 *  2. end to end on a model with the real 0.3B shapes (random bf16 weights):
 *     64 sequences × (16 prompt + 32 generated tokens), greedy, on our engine
 *     and on node-llama-cpp (prebuilt llama.cpp, in a `node` child process, on
 *     a GGUF of the same model that the bench writes), plus 16 sequences at
 *     once against one at a time on both; a greedy agreement check on the
 *     tiny model shows the peer ran the same network;
 *  3. GEMV bandwidth: each matmul of a one-sequence decode on the wasm backend
 *     (weights streamed from memory at M = 1) in GB/s, beside numpy's f32
 *     GEMV over 512 MiB as what this machine's memory delivers;
 *  4. steps that overlap on WebGPU: async scheduling against one step at a time
 *     at 64 and 256 sequences (real shapes on a GPU, the tiny model on a CPU adapter);
 *  5. host memory of a 50k- and a 200k-line batch (max_tokens 1) on the tiny model.
 * It prints one table and writes every figure to bench/results.json.
 *
 * Flags: --quick (smaller runs),
 * --skip=kernels,bandwidth,e2e,peer,native,overlap,memory,structured,
 * --native (build native llama.cpp from node-llama-cpp's bundled source when no build is there),
 * --backend=auto|webgpu|wasm (the end-to-end backend; default auto),
 * --peer-threads=N (node-llama-cpp's threads; default its cpuMathCores, the physical cores).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { Gpu } from "../engine/gpu/device.ts";
import { makeModelDir, REAL_0_3B_OVERRIDES } from "../tools/make_fixture.ts";
import {
  engineKernelClass,
  type KernelRow,
  MATMUL_SHAPES,
  numpyGflops,
  webgpuMatmulGflops,
} from "./_kernels.ts";
import {
  type BackendFlag,
  BACKENDS,
  greedyOutputs,
  type OursFigures,
  type RunFigures,
  runOurs,
} from "./_e2e.ts";
import { ensureGguf, installPeer, type PeerReport, runPeer } from "./_peer.ts";
import { batchPeakRss, type MemoryFigures } from "./_memory.ts";
import { wasmMatmulGflops } from "../engine/backends/wasm/matmul.ts";
import { FULL_WORKLOAD, PHASE, prompts, QUICK_WORKLOAD } from "./_workload.ts";
import { machineFacts } from "./_machine.ts";
import { type BandwidthFigures, gemvBandwidth, numpyGemvGBs } from "./_bandwidth.ts";
import { buildNative, haveNative, type NativeFigures, runNative } from "./_native.ts";
import { printTable } from "./_table.ts";
import { type OverlapFigures, stepOverlap } from "./_overlap.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean" },
    skip: { type: "string" },
    backend: { type: "string", default: "auto" },
    "peer-threads": { type: "string" },
    native: { type: "boolean" },
  },
});
const quick = flags.quick === true;
const skip = new Set((flags.skip ?? "").split(",").filter(Boolean).map((s) => s.trim()));
if (skip.has("matmul")) skip.add("kernels"); // the flag's earlier name
const backend = flags.backend as BackendFlag;
if (!BACKENDS.includes(backend)) {
  console.error(`--backend=${flags.backend}: expected one of ${BACKENDS.join(", ")}`);
  Deno.exit(2);
}
if (!Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", Deno.makeTempDirSync());
const peerThreads = flags["peer-threads"] === undefined ? undefined : Number(flags["peer-threads"]);
if (peerThreads !== undefined && !(Number.isInteger(peerThreads) && peerThreads > 0)) {
  console.error(`--peer-threads=${flags["peer-threads"]}: expected a positive whole number`);
  Deno.exit(2);
}
const workload = quick ? QUICK_WORKLOAD : FULL_WORKLOAD;
const TMP = join("bench", "tmp");
const MODEL_DIR = join(TMP, "ernie-0.3b-random");
const TINY_DIR = join("models", "ernie-tiny");

const machine = await machineFacts();
console.log(`machine: ${machine.cpu}, ${machine.cores} cores, ${machine.memoryGiB} GiB`);

// --- 1. kernels ---
const kernels: KernelRow[] = [];
let adapter: string | null = null;
if (!skip.has("kernels")) {
  const numpy = new Map<string, number | null>();
  const numpyAt = async (M: number, N: number, K: number) => {
    const key = `${M}x${N}x${K}`;
    if (!numpy.has(key)) numpy.set(key, await numpyGflops(M, N, K));
    return numpy.get(key)!;
  };
  const row = async (kernel: string, name: string, M: number, N: number, K: number, g: number) => {
    const np = await numpyAt(M, N, K);
    const r: KernelRow = {
      kernel,
      name,
      M,
      N,
      K,
      gflops: +g.toFixed(2),
      numpyGflops: np && +np.toFixed(1),
      ratioToNumpy: np && +(g / np).toFixed(3),
    };
    kernels.push(r);
    console.log(
      `${kernel} ${name} M=${M}: ${r.gflops} GFLOP/s (numpy ${r.numpyGflops}, ratio ${r.ratioToNumpy})`,
    );
  };
  const sizes = quick ? [1, 64] : [1, 16, 64, 256];
  let gpu: Gpu | null = null;
  try {
    gpu = await Gpu.open();
  } catch (e) {
    console.log(`no WebGPU adapter, WGSL kernels not measured: ${(e as Error).message}`);
  }
  if (gpu !== null) {
    adapter = gpu.description;
    const cls = engineKernelClass(gpu);
    for (const M of sizes) {
      for (const [name, N, K] of MATMUL_SHAPES) {
        if (name === "lm_head" && M > 64) continue;
        const g = await webgpuMatmulGflops(gpu, cls, M, N, K, quick ? 300 : 1000);
        await row(`webgpu matmul (${cls} class)`, name, M, N, K, g);
      }
    }
    gpu.destroy();
  }
  const threads = navigator.hardwareConcurrency;
  for (const M of sizes) {
    for (const [name, N, K] of MATMUL_SHAPES) {
      if (name === "lm_head" && M > 64) continue;
      const g = await wasmMatmulGflops({ n: N, k: K, rows: M, threads, iterations: quick ? 3 : 5 });
      await row(`wasm matmul (${threads} threads)`, name, M, N, K, g);
    }
  }
}

// --- 2. end to end ---
let ours: OursFigures | null = null;
let peer: (PeerReport & { error?: undefined }) | { error: string } | null = null;
let agreement: Record<string, unknown> | null = null;
if (!skip.has("e2e") || !skip.has("peer") || !skip.has("bandwidth") || !skip.has("overlap")) {
  try {
    await Deno.stat(join(MODEL_DIR, "model.safetensors"));
  } catch {
    console.log(
      `writing a model with the real 0.3B shapes (random bf16 weights) to ${MODEL_DIR} …`,
    );
    await Deno.mkdir(MODEL_DIR, { recursive: true });
    await makeModelDir(MODEL_DIR, REAL_0_3B_OVERRIDES, { seed: 1 });
  }
}
// --- 2a. GEMV bandwidth at M = 1, against what the memory delivers ---
let bandwidth: BandwidthFigures | null = null;
if (!skip.has("bandwidth")) {
  const memoryGBs = await numpyGemvGBs();
  bandwidth = await gemvBandwidth(MODEL_DIR, memoryGBs, quick ? 8 : 24);
  console.log(
    `GEMV at M = 1 (${bandwidth.backend}, ${bandwidth.decodeSteps} decode steps): matmuls ` +
      `${bandwidth.matmulGBs} GB/s of weights, numpy f32 GEMV over 512 MiB ${
        memoryGBs?.toFixed(1)
      } ` +
      `GB/s → ${bandwidth.matmulRatioToMemory}`,
  );
}

if (!skip.has("e2e")) {
  console.log(`e2e on our engine (--backend=${backend}) …`);
  ours = await runOurs(MODEL_DIR, backend, workload);
  console.log(
    `ours (${ours.backend}): ${ours.headline.tokensPerSecond} tok/s at ${workload.sequences} sequences; ` +
      `${ours.batching.tokensPerSecond} at ${workload.batchingSequences}, ` +
      `${ours.oneAtATime.tokensPerSecond} one at a time → ${ours.batchingOverOneAtATime}×`,
  );
}
if (!skip.has("peer")) {
  try {
    await installPeer();
    const gguf = join(TMP, "ernie-0.3b-random.gguf");
    await ensureGguf(MODEL_DIR, gguf);
    const w = workload;
    const report = await runPeer(gguf, [
      {
        name: "headline",
        prompts: prompts(PHASE.headline, w.sequences, w.promptTokens),
        maxTokens: w.generatedTokens,
      },
      {
        name: "batching",
        prompts: prompts(PHASE.batching, w.batchingSequences, w.promptTokens),
        maxTokens: w.generatedTokens,
      },
      {
        name: "oneAtATime",
        prompts: prompts(PHASE.oneAtATime, w.oneAtATime, w.promptTokens),
        maxTokens: w.generatedTokens,
        oneAtATime: true,
      },
    ], { warmup: prompts(PHASE.warmup, 1, w.promptTokens)[0], threads: peerThreads });
    peer = report;
    const [h, b, s] = report.runs;
    console.log(
      `node-llama-cpp ${report.nodeLlamaCpp} ran ${JSON.stringify(report.model)}: ` +
        `${h!.tokensPerSecond} tok/s at ${w.sequences} sequences; ${b!.tokensPerSecond} at ` +
        `${w.batchingSequences}, ${s!.tokensPerSecond} one at a time (${h!.threads} threads)`,
    );
    agreement = await checkAgreement();
  } catch (e) {
    peer = { error: (e as Error).message };
    console.log(`node-llama-cpp not measured: ${(e as Error).message}`);
  }
}

// --- 2b. native llama.cpp built on this machine (the "a quarter of native") ---
let native: NativeFigures | { error: string } | null = null;
if (!skip.has("native") && (flags.native === true || await haveNative())) {
  try {
    if (!(await haveNative())) {
      await installPeer();
      await buildNative();
    }
    const gguf = join(TMP, "ernie-0.3b-random.gguf");
    await ensureGguf(MODEL_DIR, gguf);
    native = await runNative(gguf, workload);
    console.log(
      `native llama.cpp (${native.commit}, ${native.threads} threads): ` +
        native.rows.map((r) => `${r.tokensPerSecond} tok/s at ${r.sequences}`).join(", "),
    );
  } catch (e) {
    native = { error: (e as Error).message };
    console.log(`native llama.cpp not measured: ${(e as Error).message}`);
  }
} else if (!skip.has("native")) {
  console.log(
    "native llama.cpp: no build in bench/tmp/llama.cpp (`deno task bench --native` builds one)",
  );
}

// --- 2c. steps that overlap on WebGPU (async scheduling) against one step at a time ---
let overlap: OverlapFigures | null = null;
if (!skip.has("overlap")) {
  overlap = await stepOverlap(MODEL_DIR, TINY_DIR, workload, quick);
  if ("skipped" in overlap) console.log(`steps overlap: skipped (${overlap.skipped})`);
  else {
    console.log(
      `steps overlap on ${overlap.adapter} (${overlap.model}): ` +
        overlap.rows.map((r) =>
          `${r.async.tokensPerSecond} vs ${r.oneStepAtATime.tokensPerSecond} tok/s at ${r.sequences}`
        ).join(", "),
    );
  }
}

/**
 * Greedy tokens of ours and of the peer on the tiny model, whose GGUF keeps
 * only the tokenizer's rows (ours never picks padding rows; llama.cpp would).
 */
async function checkAgreement(): Promise<Record<string, unknown>> {
  const tj = JSON.parse(await Deno.readTextFile(join(TINY_DIR, "tokenizer.json")));
  const rows = Object.keys(tj.model.vocab).length;
  const gguf = join(TMP, "ernie-tiny-tokenizer-rows.gguf");
  await ensureGguf(TINY_DIR, gguf, rows);
  const ids = prompts(PHASE.agreement, 8, 16);
  const run = { name: "agreement", prompts: ids, maxTokens: 16 };
  const theirs = (await runPeer(gguf, [run], { threads: peerThreads })).runs[0]!.outputs;
  const mine = await greedyOutputs(TINY_DIR, backend, ids, 16);
  let same = 0, prefix = 0, total = 0;
  mine.forEach((m, i) => {
    const t = theirs[i]!;
    let k = 0;
    while (k < m.length && m[k] === t[k]) k++;
    if (k === m.length && m.length === t.length) same++;
    prefix += k;
    total += m.length;
  });
  const result = {
    model: "ernie-tiny (GGUF trimmed to the tokenizer's rows)",
    sequences: ids.length,
    identicalSequences: same,
    tokensBeforeFirstDifference: prefix,
    tokens: total,
  };
  console.log(
    `greedy agreement with node-llama-cpp on ernie-tiny: ${same}/${ids.length} sequences identical, ` +
      `${prefix}/${total} tokens before the first difference`,
  );
  return result;
}

// --- 3. memory ---
let memory: MemoryFigures[] | null = null;
if (!skip.has("memory")) {
  memory = [];
  for (const n of quick ? [5_000, 20_000] : [50_000, 200_000]) {
    const r = await batchPeakRss(n);
    memory.push(r);
    console.log(`memory: ${n} lines (max_tokens 1): peak RSS ${r.peakRssMiB} MiB in ${r.seconds}s`);
  }
}

// --- 4. structured output: a batch with and without schemas, in one run ---
let structuredOutput: Record<string, unknown> | null = null;
if (!skip.has("structured")) {
  // bench/structured_output.ts in a child: mask cost at ERNIE's 103,424-token vocabulary, then
  // 64 seeded requests free vs json_schema vs json_object on the same engine (tiny model).
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", join("bench", "structured_output.ts"), "--backend", backend],
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (out.success) {
    structuredOutput = JSON.parse(new TextDecoder().decode(out.stdout));
    const t = structuredOutput!.throughput as Record<string, { tokensPerSecond: number }>;
    console.log(
      `structured output (tiny model, 64 seeded requests): free text ${t.free?.tokensPerSecond} ` +
        `tok/s, json_schema ${t.jsonSchema?.tokensPerSecond}, json_object ` +
        `${t.jsonObject?.tokensPerSecond}, free text again ${t.freeAgain?.tokensPerSecond}`,
    );
  } else {
    const why = new TextDecoder().decode(out.stderr).trim().split("\n").at(-1);
    structuredOutput = { error: why };
    console.log(`structured output: skipped (${why})`);
  }
}

// --- the table and bench/results.json ---
const peerOk = peer !== null && peer.error === undefined ? peer : null;
const peerRun = (name: string): RunFigures | undefined => {
  const r = peerOk?.runs.find((r) => r.name === name);
  if (r === undefined) return undefined;
  const { outputs: _, name: _n, ...figures } = r;
  return figures;
};
const peerFigures = peerOk && {
  nodeLlamaCpp: peerOk.nodeLlamaCpp,
  llamaCpp: peerOk.llamaCppRelease,
  buildType: peerOk.buildType,
  threads: peerOk.runs[0]?.threads,
  model: peerOk.model,
  headline: peerRun("headline"),
  batching: peerRun("batching"),
  oneAtATime: peerRun("oneAtATime"),
  batchingOverOneAtATime: +(peerRun("batching")!.tokensPerSecond /
    peerRun("oneAtATime")!.tokensPerSecond).toFixed(2),
};
const results = {
  date: new Date().toISOString(),
  quick,
  machine: { ...machine, loadAverageAtEnd: Deno.loadavg() },
  adapter,
  backend: { requested: backend, ran: ours?.backend ?? null },
  workload,
  kernels,
  bandwidth,
  e2e: {
    model: "real 0.3B shapes (ERNIE-4.5-0.3B), random bf16 weights, tied embeddings",
    ours,
    nodeLlamaCpp: peerFigures ?? (peer?.error !== undefined ? { error: peer.error } : null),
    oursOverNodeLlamaCpp: ours && peerFigures?.headline
      ? +(ours.headline.tokensPerSecond / peerFigures.headline.tokensPerSecond).toFixed(3)
      : null,
    agreement,
    nativeLlamaCpp: native,
    oursOverNativeLlamaCpp: ours && native && !("error" in native)
      ? +(ours.headline.tokensPerSecond /
        native.rows.find((r) => r.sequences === workload.sequences)!.tokensPerSecond).toFixed(3)
      : null,
  },
  overlap,
  memory,
  structuredOutput,
};
printTable(results);
await Deno.writeTextFile(join("bench", "results.json"), JSON.stringify(results, null, 2) + "\n");
console.log("wrote bench/results.json");
