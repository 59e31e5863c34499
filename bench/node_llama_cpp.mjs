// The benchmark's peer: node-llama-cpp (prebuilt llama.cpp, CPU) generating
// from a GGUF written by tools/ernie_gguf.ts. bench/_peer.ts copies this file
// into bench/tmp/peer/, installs node-llama-cpp there with npm and runs
//   node node_llama_cpp.mjs JOB.json
// JOB.json: { model, threads?, warmup?: number[], runs: [{ name, prompts: number[][], maxTokens, oneAtATime? }] }
// Each run is one context with one sequence per prompt, all generating at
// once (node-llama-cpp batches its sequences into shared decode calls),
// greedy, not stopping at end-of-generation tokens (our engine's ignore_eos).
// Prints one JSON object on stdout: the model's own metadata as llama.cpp read
// it, and each run's generated tokens, seconds and outputs.
import { readFile } from "node:fs/promises";
import { getLlama, LlamaLogLevel } from "node-llama-cpp";

const job = JSON.parse(await readFile(process.argv[2], "utf8"));
const llama = await getLlama({
  gpu: false,
  build: "never",
  usePrebuiltBinaries: true,
  progressLogs: false,
  logLevel: LlamaLogLevel.warn,
});
const threads = job.threads ?? llama.cpuMathCores;
const model = await llama.loadModel({ modelPath: job.model, gpuLayers: 0 });

/** Generates maxTokens greedy tokens after each prompt, all sequences in one context. */
async function generate(prompts, maxTokens) {
  const longest = Math.max(...prompts.map((p) => p.length));
  const context = await model.createContext({
    sequences: prompts.length,
    contextSize: longest + maxTokens + 16,
    batchSize: 512,
    threads,
  });
  const t0 = performance.now();
  const outputs = await Promise.all(prompts.map(async (prompt) => {
    const sequence = context.getSequence();
    const out = [];
    for await (const token of sequence.evaluate(prompt, { temperature: 0, yieldEogToken: true })) {
      out.push(token);
      if (out.length >= maxTokens) break;
    }
    return out;
  }));
  const seconds = (performance.now() - t0) / 1000;
  const usedThreads = context.currentThreads;
  await context.dispose();
  return { seconds, outputs, threads: usedThreads };
}

if (job.warmup) await generate([job.warmup], 2); // pages the weights in, like our warm-up
const runs = [];
for (const run of job.runs) {
  // oneAtATime: each prompt alone in a context of its own, one after another.
  const groups = run.oneAtATime ? run.prompts.map((p) => [p]) : [run.prompts];
  let seconds = 0, usedThreads = 0;
  const outputs = [];
  for (const group of groups) {
    const r = await generate(group, run.maxTokens);
    seconds += r.seconds;
    usedThreads = r.threads;
    outputs.push(...r.outputs);
  }
  const tokens = outputs.reduce((n, o) => n + o.length, 0);
  runs.push({
    name: run.name,
    sequences: run.prompts.length,
    generatedTokens: tokens,
    seconds: +seconds.toFixed(2),
    tokensPerSecond: +(tokens / seconds).toFixed(2),
    threads: usedThreads,
    outputs,
  });
}

const meta = model.fileInfo.metadata;
const arch = meta.general.architecture;
const pkg = new URL("./node_modules/node-llama-cpp/package.json", import.meta.url);
console.log(JSON.stringify({
  nodeLlamaCpp: JSON.parse(await readFile(pkg, "utf8")).version,
  llamaCppRelease: llama.llamaCppRelease,
  buildType: llama.buildType,
  cpuMathCores: llama.cpuMathCores,
  model: {
    architecture: arch,
    name: meta.general.name,
    fileType: meta.general.file_type,
    blockCount: meta[arch]?.block_count,
    embeddingLength: meta[arch]?.embedding_length,
    feedForwardLength: meta[arch]?.feed_forward_length,
    headCount: meta[arch]?.attention?.head_count,
    headCountKv: meta[arch]?.attention?.head_count_kv,
    keyLength: meta[arch]?.attention?.key_length,
    tokenizer: meta.tokenizer?.ggml?.model,
    vocabulary: meta.tokenizer?.ggml?.tokens?.length,
    tensors: model.fileInfo.fullTensorInfo?.length ?? model.fileInfo.tensorInfo?.length,
    sizeBytes: model.size,
  },
  runs,
}));
await model.dispose();
await llama.dispose();
