/**
 * The WebAssembly SIMD backend (engine/backends/wasm/) against the float64
 * reference: long prompts, positions past 4096, batch invariance of the matmul
 * and of whole steps, greedy generation through the Engine at 1 and 64
 * sequences per step, clean process exit, and the committed module being the
 * one kernels.c compiles to. (The reference checks shared with the WebGPU
 * runner are in model_test.ts and model_variants_test.ts.)
 */
import { assert, assertEquals, assertThrows } from "./_assert.ts";
import { fromBf16, randomArray, rng, toBf16 } from "./_gpu.ts";
import { ReferenceModel } from "./reference.ts";
import { makeWasmRunner } from "./_runners.ts";
import { relError } from "./_gpu.ts";
import { WasmMatmul } from "../engine/backends/wasm/matmul.ts";
import { wasmLimits } from "../engine/backends/wasm/wasm_runner.ts";
import { compileKernels, hasClang, moduleText, OUTPUT } from "../tools/build_wasm.ts";
import { Engine } from "../engine/engine.ts";
import { Gpu, NoGpuError } from "../engine/gpu/device.ts";
import { chooseKernelClass } from "../engine/gpu/registry.ts";
import { makeModelDir } from "../tools/make_fixture.ts";
import { buildTokenizerFiles } from "../tools/_tokenizer_files.ts";
import { DEFAULT_SAMPLING } from "../engine/types.ts";
import { loadModelConfig } from "../engine/loader/config.ts";

const clang = await hasClang();

Deno.test({
  name: "the committed kernels_wasm.ts is what kernels.c compiles to",
  ignore: !clang,
  async fn() {
    const committed = await Deno.readTextFile(OUTPUT);
    assert(
      committed === moduleText(await compileKernels()),
      "kernels_wasm.ts is stale: run `deno run -A tools/build_wasm.ts` and commit it",
    );
  },
});
if (!clang) console.error("wasm module freshness test skipped: clang-19 is not installed");

Deno.test("wasm matmul matches float64 and a row is bit-identical at M = 1 and M = 70", async () => {
  const r = rng(3);
  for (const [n, k, dtype] of [[37, 29, "bf16"], [70, 64, "f32"], [9, 130, "bf16"]] as const) {
    const w32 = randomArray(n * k, r, 0.5);
    const bits = toBf16(w32);
    const w = dtype === "bf16" ? fromBf16(bits) : w32;
    const mm = await WasmMatmul.create(
      { shape: [n, k], dtype, data: dtype === "bf16" ? bits : w32 },
      70,
      2,
    );
    const x = randomArray(70 * k, r);
    const y70 = await mm.multiply(x, 70);
    for (let row = 0; row < 70; row++) {
      for (let c = 0; c < n; c++) {
        let want = 0;
        for (let i = 0; i < k; i++) want += x[row * k + i]! * w[c * k + i]!;
        const got = y70[row * n + c]!;
        assert(
          Math.abs(got - want) <= 1e-4 * (1 + Math.abs(want)),
          `${n}×${k} ${dtype}: y[${row}, ${c}] = ${got}, expected ${want}`,
        );
      }
    }
    for (const row of [0, 5, 66, 69]) {
      const y1 = await mm.multiply(x.slice(row * k, (row + 1) * k), 1);
      assertEquals([...y1], [...y70.subarray(row * n, (row + 1) * n)], `row ${row}`);
    }
    mm.destroy();
  }
});

Deno.test("wasm logits match the reference over a 4150-token prompt in 512-token chunks and decode past 4096", async () => {
  const dir = "models/ernie-tiny";
  const ref = await ReferenceModel.load(dir);
  const runner = await makeWasmRunner(dir, {
    blockSize: 16,
    numBlocks: 300,
    maxBlocksPerSeq: 280,
    maxNumBatchedTokens: 512,
  });
  const V = runner.shape.vocabSize;
  const r = rng(11);
  const table = Array.from({ length: 280 }, (_, i) => 299 - i);
  const prompt = Array.from({ length: 4150 }, () => 3 + Math.floor(r() * 2000));
  const cache = ref.newCache();
  const all = ref.step(cache, prompt, 0);
  // Prefill in chunks of 512, checking the last position of each chunk.
  for (let start = 0; start < prompt.length; start += 512) {
    const tokens = prompt.slice(start, start + 512);
    const res = await runner.step([{ tokens, start, blockTable: table, output: "sample" }], true);
    const pos = start + tokens.length - 1;
    const err = relError(res.logits!, all[pos]!);
    assert(err < 1e-3, `position ${pos}: relative error ${err}`);
  }
  // Decode steps past 4096.
  for (let i = 0; i < 3; i++) {
    const id = 3 + Math.floor(r() * 2000);
    const pos = prompt.length + i;
    const want = ref.step(cache, [id], pos)[0]!;
    const res = await runner.step(
      [{ tokens: [id], start: pos, blockTable: table, output: "sample" }],
      true,
    );
    const err = relError(res.logits!.subarray(0, V), want);
    assert(err < 1e-3, `decode at ${pos}: relative error ${err}`);
  }
  runner.destroy();
});

Deno.test("a wasm step's rows do not depend on the rest of the batch", async () => {
  const runner = await makeWasmRunner("models/ernie-tiny", { maxNumSeqs: 8 });
  const V = runner.shape.vocabSize;
  const r = rng(21);
  const prompts = [5, 33, 1, 17, 64].map((n) =>
    Array.from({ length: n }, () => 3 + Math.floor(r() * 2000))
  );
  const seq = (i: number, base: number) => ({
    tokens: prompts[i]!,
    start: 0,
    blockTable: [base, base + 1, base + 2, base + 3, base + 4],
    output: "sample" as const,
  });
  const alone = await runner.step([seq(1, 0)], true);
  const batched = await runner.step(
    [seq(0, 5), seq(2, 10), seq(1, 15), seq(3, 20), seq(4, 25)],
    true,
  );
  assertEquals([...batched.logits!.subarray(2 * V, 3 * V)], [...alone.logits!]);
  const ids = await runner.step([seq(0, 5), seq(2, 10), seq(1, 15), seq(3, 20), seq(4, 25)], false);
  let best = 0;
  for (let i = 1; i < V; i++) if (alone.logits![i]! > alone.logits![best]!) best = i;
  assertEquals(ids.ids![2], best);
  runner.destroy();
});

Deno.test("wasm hidden rows are the final-normed states of the asked positions", async () => {
  const dir = "models/ernie-tiny";
  const ref = await ReferenceModel.load(dir);
  const runner = await makeWasmRunner(dir, {});
  const H = runner.shape.hiddenSize;
  const prompt = [5, 77, 300, 1200, 9];
  const res = await runner.step([
    { tokens: [7, 8, 9], start: 0, blockTable: [3], output: "sample" },
    { tokens: prompt, start: 0, blockTable: [0, 1], output: "hidden-all" },
  ], false);
  assertEquals(res.ids!.length, 1);
  assertEquals(res.hidden!.length, prompt.length * H);
  for (let t = 0; t < prompt.length; t++) {
    const want = ref.hidden(prompt.slice(0, t + 1)); // causal: position t sees 0..t
    const err = relError(res.hidden!.subarray(t * H, (t + 1) * H), want);
    assert(err < 1e-3, `hidden row ${t}: relative error ${err}`);
  }
  runner.destroy();
});

Deno.test("greedy generation through the Engine is the same at 1 and 64 sequences per step", async () => {
  const dir = "models/ernie-tiny";
  const r = rng(5);
  const prompts = Array.from(
    { length: 12 },
    (_, i) => Array.from({ length: 3 + 7 * i }, () => 3 + Math.floor(r() * 2000)),
  );
  const outputs: number[][][] = [];
  let validVocab = 0;
  for (const maxNumSeqs of [1, 64]) {
    const engine = await Engine.load(dir, {
      backend: "wasm",
      threads: 2,
      maxNumSeqs,
      kvCacheMemory: 16 << 20,
    });
    const results = await Promise.all(prompts.map((p, i) =>
      engine.generate({
        id: `g${i}`,
        promptIds: p,
        sampling: { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 10, ignoreEos: true },
      })
    ));
    outputs.push(results.map((x) => [...x.tokenIds]));
    validVocab = engine.validVocab;
    await engine.close();
  }
  assertEquals(outputs[0], outputs[1]);
  const ref = await ReferenceModel.load(dir, { vocabLimit: validVocab });
  for (const [i, p] of prompts.slice(0, 3).entries()) {
    assertEquals(outputs[0]![i], ref.greedy(p, 10), `prompt ${i}`);
  }
});

Deno.test("a process that loads and destroys a wasm runner exits", async () => {
  const script = `
    import { makeWasmRunner } from "${new URL("./_runners.ts", import.meta.url)}";
    const runner = await makeWasmRunner("models/ernie-tiny", {});
    await runner.step([{ tokens: [5, 6], start: 0, blockTable: [0], output: "sample" }], false);
    runner.destroy();
    console.log("destroyed");
  `;
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--ext=ts", script],
    stdout: "piped",
    stderr: "piped",
    signal: AbortSignal.timeout(120_000), // a hang is a failure, not a slow pass
  }).output();
  const err = new TextDecoder().decode(stderr);
  assertEquals(code, 0, err);
  assertEquals(new TextDecoder().decode(stdout).trim(), "destroyed");
});

Deno.test("wasm logits match the reference with head_dim 10 and widths that are not multiples of 4", async () => {
  const dir = await Deno.makeTempDir({ prefix: "batchwright-wasm-odd-" });
  const tokenizer = buildTokenizerFiles();
  await makeModelDir(dir, {
    hidden_size: 30,
    num_attention_heads: 3,
    num_key_value_heads: 1,
    head_dim: 10,
    intermediate_size: 45,
    num_hidden_layers: 2,
  }, { seed: 7, tokenizer });
  const ref = await ReferenceModel.load(dir);
  const runner = await makeWasmRunner(dir, { blockSize: 4 });
  const r = rng(8);
  const prompt = Array.from({ length: 41 }, () => 300 + Math.floor(r() * 1500));
  const cache = ref.newCache();
  const want = ref.step(cache, prompt, 0);
  const res = await runner.step(
    [{
      tokens: prompt,
      start: 0,
      blockTable: [9, 3, 5, 1, 0, 2, 4, 6, 7, 8, 10, 11],
      output: "sample",
    }],
    true,
  );
  const err = relError(res.logits!, want.at(-1)!);
  assert(err < 1e-3, `relative error ${err}`);
  runner.destroy();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("backend auto runs wasm on a software or fallback adapter or without one, else WebGPU", async () => {
  let expected = "wasm";
  try {
    const gpu = await Gpu.open();
    const adapter = {
      isFallbackAdapter: gpu.adapter.info.isFallbackAdapter,
      description: gpu.description,
    };
    if (chooseKernelClass("auto", adapter) === "gpu") expected = "webgpu";
    gpu.destroy();
  } catch (e) {
    if (!(e instanceof NoGpuError)) throw e;
  }
  const engine = await Engine.load("models/ernie-tiny", { kvCacheMemory: 1 << 22 });
  assert(
    engine.runner.description.startsWith(`${expected}:`),
    `auto chose "${engine.runner.description}", expected ${expected}`,
  );
  await engine.close();
});

Deno.test("wasm logits are bit-identical on 1, 2, 3 and 8 threads, many rows and one", async () => {
  const r = rng(31);
  const prompts = [9, 40, 3].map((n) =>
    Array.from({ length: n }, () => 3 + Math.floor(r() * 2000))
  );
  const logits: number[][] = [];
  const threadCounts = [1, 2, 3, 8]; // 8: a GEMV's panels are claimed four at a time
  for (const threads of threadCounts) {
    const runner = await makeWasmRunner("models/ernie-tiny", {}, threads);
    const res = await runner.step(
      prompts.map((tokens, i) => ({
        tokens,
        start: 0,
        blockTable: [3 * i, 3 * i + 1, 3 * i + 2],
        output: "sample" as const,
      })),
      true,
    );
    // One token alone: every matmul at M = 1.
    const one = await runner.step(
      [{ tokens: [prompts[0]![0]!], start: 0, blockTable: [9], output: "sample" }],
      true,
    );
    logits.push([...res.logits!, ...one.logits!]);
    runner.destroy();
  }
  threadCounts.forEach((threads, i) => {
    assertEquals(logits[i], logits[0], `${threads} threads vs 1`);
  });
});

Deno.test("wasmLimits fit the 0.3B model in 4 GiB and refuse one whose weights do not fit", () => {
  const shape = {
    hiddenSize: 1024,
    intermediateSize: 3072,
    numLayers: 18,
    numHeads: 16,
    numKvHeads: 2,
    headDim: 128,
    vocabSize: 103424,
    ropeTheta: 500000,
    rmsNormEps: 1e-5,
    compressionRatio: 1,
  };
  const limits = wasmLimits(shape);
  assertEquals(limits.defaultKvBytes, 1024 ** 3);
  assert(limits.maxKvBytesPerLayer * 2 * 18 <= 4 * 1024 ** 3 - 700e6, "KV + weights fit 4 GiB");
  assertThrows(() => wasmLimits({ ...shape, numLayers: 200 }), /--backend webgpu/);
});

Deno.test("a wasm engine with profile: true times every op of every step, tokens unchanged", async () => {
  const { formatProfile } = await import("../engine/gpu/profile.ts");
  const sampling = { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 3, ignoreEos: true };
  const request = { id: "a", promptIds: [5, 6, 7, 8, 9], sampling };
  const plain = await Engine.load("models/ernie-tiny", { backend: "wasm", threads: 2 });
  const want = (await plain.generate(request)).tokenIds;
  assertEquals(plain.kernelProfile(), undefined);
  await plain.close();
  const engine = await Engine.load("models/ernie-tiny", {
    backend: "wasm",
    threads: 2,
    profile: true,
  });
  try {
    assertEquals((await engine.generate(request)).tokenIds, want);
    const p = engine.kernelProfile()!;
    const config = await loadModelConfig("models/ernie-tiny");
    const layers = config.numLayers;
    const op = (label: string) => p.kernels.find((k) => k.label === label)!;
    const table = formatProfile(p);
    assertEquals(p.method, "host-clock", table);
    assertEquals(p.steps, 3, table);
    for (const label of ["input_norm", "qkv", "rotary_kv", "attention", "o_proj", "gate_up"]) {
      assertEquals(op(label).calls, 3 * layers, `${label}\n${table}`);
    }
    assertEquals(op("lm_head").calls, 3, table);
    assertEquals(op("argmax").calls, 3, table);
    const { hiddenSize: H, vocabSize: V } = config;
    assertEquals(op("lm_head").flops, 3 * 2 * V * H, table); // one sample row per step
    assert(p.kernels.every((k) => k.seconds >= 0) && op("gate_up").seconds > 0, table);
    assert(table.includes("host clock"), table);
    engine.resetKernelProfile();
    assertEquals(engine.kernelProfile()!.steps, 0);
  } finally {
    await engine.close();
  }
});

Deno.test("wasm attention: a prompt's rows are bit-identical in one step, in chunks and token by token, for several head layouts", async () => {
  const tokenizer = buildTokenizerFiles();
  // (query heads, KV heads, head_dim): prefill blocks of 16, 4, 32 and 10 tokens (a last
  // row group of 2), head_dim a multiple of 8, of 4 only, and not of 4 (no blocks).
  const layouts = [[4, 2, 32], [8, 1, 16], [3, 3, 12], [6, 2, 8], [2, 1, 10]] as const;
  for (const [heads, kvHeads, headDim] of layouts) {
    const dir = await Deno.makeTempDir({ prefix: "batchwright-wasm-attn-" });
    await makeModelDir(dir, {
      hidden_size: 24,
      num_attention_heads: heads,
      num_key_value_heads: kvHeads,
      head_dim: headDim,
      intermediate_size: 40,
      num_hidden_layers: 2,
    }, { seed: heads * 31 + headDim, tokenizer });
    const runner = await makeWasmRunner(dir, { blockSize: 4 });
    const H = runner.shape.hiddenSize;
    const r = rng(headDim);
    // 70 tokens: the last 64-key chunk is one that tokens of one block see in part.
    const prompt = Array.from({ length: 70 }, () => 300 + Math.floor(r() * 1500));
    const blockTable = Array.from({ length: 18 }, (_, i) => (i * 7) % 64);
    const rows = async (sizes: number[]) => {
      const out: number[] = [];
      let start = 0;
      for (const n of sizes) {
        const res = await runner.step([{
          tokens: prompt.slice(start, start + n),
          start,
          blockTable,
          output: "hidden-all",
        }], false);
        out.push(...res.hidden!);
        start += n;
      }
      return out;
    };
    const whole = await rows([70]);
    const label = `${heads} heads, ${kvHeads} KV heads, head_dim ${headDim}`;
    assertEquals(await rows([7, 7, 7, 7, 7, 7, 7, 7, 7, 7]), whole, `${label}: chunks of 7`);
    assertEquals(await rows([3, 61, 6]), whole, `${label}: chunks of 3, 61 and 6`);
    assertEquals(await rows(new Array(70).fill(1)), whole, `${label}: token by token`);
    const ref = await ReferenceModel.load(dir);
    for (const t of [0, 9, 63, 64, 69]) {
      const err = relError(
        new Float32Array(whole.slice(t * H, (t + 1) * H)),
        ref.hidden(prompt.slice(0, t + 1)),
      );
      assert(err < 1e-3, `${label}, row ${t}: relative error ${err}`);
    }
    runner.destroy();
    await Deno.remove(dir, { recursive: true });
  }
});
