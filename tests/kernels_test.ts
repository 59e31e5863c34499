/**
 * Every WGSL kernel against a small CPU reference on fresh seeded random
 * inputs, at sizes that are not multiples of the tile sizes.
 */
import { assertEquals } from "./_assert.ts";
import type { Gpu } from "../engine/gpu/device.ts";
import * as k from "../engine/gpu/kernels.ts";
import { assertClose, fromBf16, gpuTest, randomArray, rng, toBf16 } from "./_gpu.ts";

function stepUniform(gpu: Gpu, numTokens: number, numRows = 0): GPUBuffer {
  const b = gpu.uniform("step", k.STEP_UNIFORM_BYTES);
  gpu.write(b, new Uint32Array([numTokens, numRows, numRows, 0]));
  return b;
}

async function run(gpu: Gpu, dispatches: k.Dispatch[], shape: k.StepShape): Promise<void> {
  await gpu.checked("kernel test", () => {
    const encoder = gpu.device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    k.encode(pass, dispatches, shape);
    pass.end();
    gpu.device.queue.submit([encoder.finish()]);
  });
}

async function readF32(gpu: Gpu, b: GPUBuffer, n: number): Promise<Float32Array> {
  return new Float32Array(await gpu.read(b, n * 4));
}

/** y = x · Wᵀ in float64 for (M, K) × (N, K). */
function matmulRef(x: Float32Array, w: Float32Array, M: number, N: number, K: number) {
  const out = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let kk = 0; kk < K; kk++) s += x[m * K + kk]! * w[n * K + kk]!;
      out[m * N + n] = s;
    }
  }
  return out;
}

/** Random (N, K) weights, uploaded as bf16 or f32; returns the values the GPU sees. */
function randomWeight(gpu: Gpu, N: number, K: number, bf16: boolean, r: () => number) {
  let w = randomArray(N * K, r);
  const data = bf16 ? toBf16(w) : w;
  if (bf16) w = fromBf16(data as Uint16Array);
  return { w, weight: k.uploadSharded(gpu, "w", N, K, data) };
}

async function runMatmul(gpu: Gpu, x: Float32Array, weight: k.ShardedWeight, M: number) {
  const y = gpu.storage("y", M * weight.rows * 4);
  const step = stepUniform(gpu, M);
  const ds = k.matmul(gpu, step, gpu.upload("x", x), weight, y);
  await run(gpu, ds, { numTokens: M, numRows: 0, numLogitRows: 0 });
  return await readF32(gpu, y, M * weight.rows);
}

// M = 1 runs the GEMV kernel, larger M the 4 × 8 register-tiled one. N, M and K are not
// multiples of the tiles; odd K puts bf16 elements of odd rows across u32 words, and K
// not a multiple of 4 takes the scalar loads and the k tail.
for (const bf16 of [false, true]) {
  for (
    const [M, N, K] of [
      [1, 67, 33],
      [1, 258, 1024],
      [1, 13, 7],
      [2, 9, 3],
      [5, 130, 100],
      [70, 65, 17],
      [3, 200, 257],
      [11, 203, 66],
    ] as const
  ) {
    gpuTest(
      `matmul (${bf16 ? "bf16" : "f32"} weights) matches the CPU at M=${M} N=${N} K=${K}`,
      async (gpu) => {
        const r = rng(M * 1000 + N * 7 + K + (bf16 ? 1 : 0));
        const x = randomArray(M * K, r);
        const { w, weight } = randomWeight(gpu, N, K, bf16, r);
        assertClose(await runMatmul(gpu, x, weight, M), matmulRef(x, w, M, N, K), {
          rtol: 1e-4,
          atol: 1e-4,
          what: "y",
        });
      },
    );
  }
}

for (const [bf16, K] of [[true, 1024], [true, 37], [false, 130]] as const) {
  gpuTest(
    `a row's matmul output is bit-identical at M=1 (GEMV) and M=70 (tiled), K=${K}`,
    async (gpu) => {
      const [N, M] = [75, 70];
      const r = rng(K);
      const x = randomArray(M * K, r);
      const { weight } = randomWeight(gpu, N, K, bf16, r);
      const batch = await runMatmul(gpu, x, weight, M);
      for (const row of [0, 37, 69]) {
        const alone = await runMatmul(gpu, x.slice(row * K, (row + 1) * K), weight, 1);
        const inBatch = batch.subarray(row * N, (row + 1) * N);
        for (let n = 0; n < N; n++) {
          if (!Object.is(alone[n], inBatch[n])) {
            throw new Error(
              `row ${row} column ${n}: ${alone[n]} at M=1 but ${inBatch[n]} at M=${M}`,
            );
          }
        }
      }
    },
  );
}

for (const M of [1, 9]) {
  gpuTest(
    `matmul accumulates into y and writes a column range of a wider output (M=${M})`,
    async (gpu) => {
      const [N, K, stride, offset] = [37, 45, 100, 50];
      const r = rng(42 + M);
      const x = randomArray(M * K, r);
      const w = randomArray(N * K, r);
      const y0 = randomArray(M * stride, r);
      const y = gpu.upload("y", y0);
      const step = stepUniform(gpu, 0, M);
      const weight = k.uploadSharded(gpu, "w", N, K, w);
      const ds = k.matmul(gpu, step, gpu.upload("x", x), weight, y, {
        accumulate: true,
        mFromRows: true,
        yStride: stride,
        yOffset: offset,
      });
      await run(gpu, ds, { numTokens: 0, numRows: M, numLogitRows: M });
      const expected = Float64Array.from(y0);
      for (let m = 0; m < M; m++) {
        for (let n = 0; n < N; n++) {
          let s = 0;
          for (let kk = 0; kk < K; kk++) s += x[m * K + kk]! * w[n * K + kk]!;
          expected[m * stride + offset + n]! += s;
        }
      }
      assertClose(await readF32(gpu, y, M * stride), expected, {
        rtol: 1e-4,
        atol: 1e-4,
        what: "y",
      });
    },
  );
}

gpuTest("weights larger than one binding are split into row shards", async (gpu) => {
  // Pretend the binding limit is tiny by sharding by hand through a fake gpu view.
  const [M, N, K] = [4, 50, 24];
  const r = rng(7);
  const x = randomArray(M * K, r);
  const w = randomArray(N * K, r);
  const shards = [0, 17, 34].map((rowStart) => {
    const rows = Math.min(17, N - rowStart);
    return {
      buffer: gpu.upload("w", w.subarray(rowStart * K, (rowStart + rows) * K)),
      rowStart,
      rows,
    };
  });
  const y = gpu.storage("y", M * N * 4);
  const step = stepUniform(gpu, M);
  const ds = k.matmul(gpu, step, gpu.upload("x", x), { rows: N, cols: K, bf16: false, shards }, y);
  assertEquals(ds.length, 6); // a GEMV and a tiled dispatch per shard
  await run(gpu, ds, { numTokens: M, numRows: 0, numLogitRows: 0 });
  const expected = new Float64Array(M * N);
  for (let m = 0; m < M; m++) {
    for (let n = 0; n < N; n++) {
      let s = 0;
      for (let kk = 0; kk < K; kk++) s += x[m * K + kk]! * w[n * K + kk]!;
      expected[m * N + n] = s;
    }
  }
  assertClose(await readF32(gpu, y, M * N), expected, { rtol: 1e-4, atol: 1e-4, what: "y" });
});

for (const bf16 of [false, true]) {
  gpuTest(`embedding gathers rows across shards (${bf16 ? "bf16" : "f32"})`, async (gpu) => {
    const [V, H, T] = [23, 13, 11];
    const r = rng(3);
    let table = randomArray(V * H, r);
    const data = bf16 ? toBf16(table) : table;
    if (bf16) table = fromBf16(data as Uint16Array);
    const shards = [0, 10, 20].map((rowStart) => {
      const rows = Math.min(10, V - rowStart);
      return {
        buffer: gpu.upload("t", data.subarray(rowStart * H, (rowStart + rows) * H)),
        rowStart,
        rows,
      };
    });
    const ids = Uint32Array.from({ length: T }, () => Math.floor(r() * V));
    const out = gpu.storage("out", T * H * 4);
    const step = stepUniform(gpu, T);
    const ds = k.embedding(
      gpu,
      step,
      gpu.upload("ids", ids),
      { rows: V, cols: H, bf16, shards },
      out,
    );
    await run(gpu, ds, { numTokens: T, numRows: 0, numLogitRows: 0 });
    const expected = new Float32Array(T * H);
    ids.forEach((id, t) => expected.set(table.subarray(id * H, (id + 1) * H), t * H));
    assertClose(await readF32(gpu, out, T * H), expected, { rtol: 0, atol: 0, what: "x" });
  });
}

for (const gather of [false, true]) {
  gpuTest(`rms_norm matches the CPU${gather ? " on gathered rows" : ""}`, async (gpu) => {
    const [T, H, eps] = [7, 203, 1e-5];
    const r = rng(11);
    const x = randomArray(T * H, r, 3);
    const w = randomArray(H, r);
    const rows = Uint32Array.from([6, 0, 3]);
    const R = gather ? rows.length : T;
    const out = gpu.storage("out", R * H * 4);
    const step = stepUniform(gpu, T, rows.length);
    const d = k.rmsNorm(gpu, step, gpu.upload("x", x), gpu.upload("w", w), out, {
      hidden: H,
      eps,
      rows: gather ? gpu.upload("rows", rows) : undefined,
    });
    await run(gpu, [d], { numTokens: T, numRows: rows.length, numLogitRows: rows.length });
    const expected = new Float64Array(R * H);
    for (let i = 0; i < R; i++) {
      const src = gather ? rows[i]! : i;
      let ss = 0;
      for (let c = 0; c < H; c++) ss += x[src * H + c]! ** 2;
      const scale = 1 / Math.sqrt(ss / H + eps);
      for (let c = 0; c < H; c++) expected[i * H + c] = w[c]! * x[src * H + c]! * scale;
    }
    assertClose(await readF32(gpu, out, R * H), expected, { rtol: 1e-4, atol: 1e-5, what: "out" });
  });
}

gpuTest("silu_mul matches the CPU", async (gpu) => {
  const [T, I] = [5, 77];
  const r = rng(5);
  const gu = randomArray(T * 2 * I, r, 4);
  const out = gpu.storage("out", T * I * 4);
  const step = stepUniform(gpu, T);
  await run(gpu, [k.siluMul(gpu, step, gpu.upload("gu", gu), out, I)], {
    numTokens: T,
    numRows: 0,
    numLogitRows: 0,
  });
  const expected = new Float64Array(T * I);
  for (let t = 0; t < T; t++) {
    for (let i = 0; i < I; i++) {
      const g = gu[t * 2 * I + i]!;
      expected[t * I + i] = (g / (1 + Math.exp(-g))) * gu[t * 2 * I + I + i]!;
    }
  }
  assertClose(await readF32(gpu, out, T * I), expected, { rtol: 1e-5, atol: 1e-6, what: "out" });
});

gpuTest("argmax picks the largest valid logit, lowest id on ties, never padding", async (gpu) => {
  const [R, stride, valid] = [4, 1000, 900];
  const r = rng(9);
  const logits = randomArray(R * stride, r);
  logits[0 * stride + 950] = 100; // padding: must be ignored
  logits[1 * stride + 5] = 50;
  logits[1 * stride + 700] = 50; // tie → 5
  logits[3 * stride + 899] = 70;
  const ids = gpu.storage("ids", R * 4);
  const step = stepUniform(gpu, 0, R);
  await run(gpu, [k.argmax(gpu, step, gpu.upload("l", logits), ids, { valid, stride })], {
    numTokens: 0,
    numRows: R,
    numLogitRows: R,
  });
  const got = new Uint32Array(await gpu.read(ids, R * 4));
  const expected = [];
  for (let i = 0; i < R; i++) {
    let best = 0;
    for (let v = 1; v < valid; v++) {
      if (logits[i * stride + v]! > logits[i * stride + best]!) best = v;
    }
    expected.push(best);
  }
  assertEquals([...got], expected);
  assertEquals(got[1], 5);
  assertEquals(got[3], 899);
});

/** CPU interleaved RoPE of one head vector, angles in float64. */
function ropeRef(x: Float32Array, pos: number, theta: number): Float64Array {
  const D = x.length;
  const out = new Float64Array(D);
  for (let i = 0; i < D / 2; i++) {
    const a = pos * Math.pow(theta, (-2 * i) / D);
    const [c, s] = [Math.cos(a), Math.sin(a)];
    out[2 * i] = x[2 * i]! * c - x[2 * i + 1]! * s;
    out[2 * i + 1] = x[2 * i + 1]! * c + x[2 * i]! * s;
  }
  return out;
}

function invFreq(D: number, theta: number): Float32Array {
  return Float32Array.from({ length: D / 2 }, (_, i) => 1 / Math.pow(theta, (2 * i) / D));
}

gpuTest(
  "rotary_kv rotates adjacent pairs of q and k and appends k, v at their slots",
  async (gpu) => {
    const [T, HQ, HKV, D, theta] = [6, 4, 2, 16, 500000];
    const W = (HQ + 2 * HKV) * D;
    const r = rng(13);
    const qkv = randomArray(T * W, r);
    const positions = Uint32Array.from([0, 1, 2, 77, 1000, 4095]);
    const slots = Uint32Array.from([3, 9, 0, 5, 1, 7]);
    const numSlots = 10;
    const buf = gpu.upload("qkv", qkv);
    const kCache = gpu.storage("k", numSlots * HKV * D * 4);
    const vCache = gpu.storage("v", numSlots * HKV * D * 4);
    const step = stepUniform(gpu, T);
    const d = k.rotaryKv(gpu, step, {
      qkv: buf,
      positions: gpu.upload("p", positions),
      slots: gpu.upload("s", slots),
      invFreq: gpu.upload("f", invFreq(D, theta)),
      kCache,
      vCache,
    }, { heads: HQ, kvHeads: HKV, headDim: D, posScale: 1 });
    await run(gpu, [d], { numTokens: T, numRows: 0, numLogitRows: 0 });
    const got = await readF32(gpu, buf, T * W);
    const kGot = await readF32(gpu, kCache, numSlots * HKV * D);
    const vGot = await readF32(gpu, vCache, numSlots * HKV * D);
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < HQ + HKV; h++) {
        const x = qkv.subarray(t * W + h * D, t * W + (h + 1) * D);
        const want = ropeRef(x, positions[t]!, theta);
        assertClose(got.subarray(t * W + h * D, t * W + (h + 1) * D), want, {
          rtol: 1e-4,
          atol: 2e-5 * Math.max(1, positions[t]! / 64),
          what: `token ${t} head ${h}`,
        });
        if (h >= HQ) {
          const at = (slots[t]! * HKV + h - HQ) * D;
          assertClose(kGot.subarray(at, at + D), got.subarray(t * W + h * D, t * W + (h + 1) * D), {
            rtol: 0,
            atol: 0,
            what: "k cache",
          });
        }
      }
      for (let h = 0; h < HKV; h++) {
        const at = (slots[t]! * HKV + h) * D;
        const src = t * W + (HQ + HKV + h) * D;
        assertClose(vGot.subarray(at, at + D), qkv.subarray(src, src + D), {
          rtol: 0,
          atol: 0,
          what: "v cache",
        });
      }
    }
  },
);

gpuTest(
  "attention is causal GQA over paged blocks, for prefill and decode rows together",
  async (gpu) => {
    const [HQ, HKV, D, B] = [4, 2, 24, 4];
    const W = (HQ + 2 * HKV) * D;
    const r = rng(17);
    // Two sequences: seq 0 has 70 cached positions (> one chunk of 64) and decodes one token at
    // position 70; seq 1 prefills positions 0..4 in this step. Blocks are scattered.
    const tables = [[5, 2, 9, 0, 11, 3, 14, 7, 1, 13, 4, 6, 8, 10, 12, 15, 16, 17, 18, 19], [
      20,
      21,
      22,
      23,
    ]];
    const numBlocks = 24;
    const kc = randomArray(numBlocks * B * HKV * D, r);
    const vc = randomArray(numBlocks * B * HKV * D, r);
    const tokens = [{ seq: 0, pos: 70 }, ...[0, 1, 2, 3, 4].map((pos) => ({ seq: 1, pos }))];
    const T = tokens.length;
    const qkv = randomArray(T * W, r);
    const mb = 20;
    const table = new Uint32Array(2 * mb);
    tables.forEach((row, s) => table.set(row, s * mb));
    const out = gpu.storage("out", T * HQ * D * 4);
    const step = stepUniform(gpu, T);
    const d = k.attention(gpu, step, {
      qkv: gpu.upload("qkv", qkv),
      positions: gpu.upload("p", Uint32Array.from(tokens, (t) => t.pos)),
      seqOf: gpu.upload("s", Uint32Array.from(tokens, (t) => t.seq)),
      blockTable: gpu.upload("bt", table),
      kCache: gpu.upload("k", kc),
      vCache: gpu.upload("v", vc),
      out,
    }, { heads: HQ, kvHeads: HKV, headDim: D, blockSize: B, maxBlocks: mb });
    await run(gpu, d, { numTokens: T, numRows: 0, numLogitRows: 0 });
    const got = await readF32(gpu, out, T * HQ * D);
    const expected = new Float64Array(T * HQ * D);
    tokens.forEach(({ seq, pos }, t) => {
      for (let h = 0; h < HQ; h++) {
        const kvh = Math.floor(h / (HQ / HKV));
        const scores: number[] = [];
        const bases: number[] = [];
        for (let j = 0; j <= pos; j++) {
          const slot = tables[seq]![Math.floor(j / B)]! * B + (j % B);
          const base = (slot * HKV + kvh) * D;
          bases.push(base);
          let s = 0;
          for (let e = 0; e < D; e++) s += qkv[t * W + h * D + e]! * kc[base + e]!;
          scores.push(s / Math.sqrt(D));
        }
        const m = Math.max(...scores);
        const p = scores.map((s) => Math.exp(s - m));
        const z = p.reduce((a, b) => a + b, 0);
        for (let e = 0; e < D; e++) {
          let acc = 0;
          for (let j = 0; j <= pos; j++) acc += (p[j]! / z) * vc[bases[j]! + e]!;
          expected[t * HQ * D + h * D + e] = acc;
        }
      }
    });
    assertClose(got, expected, { rtol: 1e-4, atol: 1e-5, what: "attention" });
  },
);
