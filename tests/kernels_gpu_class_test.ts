/**
 * The gpu-class matmul kernels (gemv_gpu.wgsl, matmul_gpu.wgsl), forced on
 * whatever adapter runs the tests, against a float64 CPU reference on fresh
 * seeded random inputs at sizes that are not tile multiples, and the gpu
 * class's batch invariance: a row's output is bit-identical whatever M is.
 */
import { assertEquals } from "./_assert.ts";
import type { Gpu } from "../engine/gpu/device.ts";
import * as k from "../engine/gpu/kernels.ts";
import { chooseKernelClass, kernelTable } from "../engine/gpu/registry.ts";
import { assertClose, fromBf16, gpuTest, randomArray, rng, toBf16 } from "./_gpu.ts";

const kernels = "gpu";

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

/** Random (N, K) weights split into row shards of `shardRows`, uploaded as bf16 or f32. */
function randomWeight(
  gpu: Gpu,
  N: number,
  K: number,
  o: { bf16: boolean; shardRows?: number },
  r: () => number,
): { w: Float32Array; weight: k.ShardedWeight } {
  let w = randomArray(N * K, r);
  const data = o.bf16 ? toBf16(w) : w;
  if (o.bf16) w = fromBf16(data as Uint16Array);
  const per = o.shardRows ?? N;
  const shards = [];
  for (let rowStart = 0; rowStart < N; rowStart += per) {
    const rows = Math.min(per, N - rowStart);
    const view = data.subarray(rowStart * K, (rowStart + rows) * K);
    shards.push({ buffer: gpu.upload(`w[${rowStart}]`, view), rowStart, rows });
  }
  return { w, weight: { rows: N, cols: K, bf16: o.bf16, shards } };
}

/** y[m, offset + n] (+)= Σ_k x[m, k] · w[n, k] in float64. */
function matmulRef(
  x: Float32Array,
  w: Float32Array,
  [M, N, K]: readonly number[],
  y0?: Float32Array,
  stride = N!,
  offset = 0,
): Float64Array {
  const out = y0 ? Float64Array.from(y0) : new Float64Array(M! * stride);
  for (let m = 0; m < M!; m++) {
    for (let n = 0; n < N!; n++) {
      let s = 0;
      for (let kk = 0; kk < K!; kk++) s += x[m * K! + kk]! * w[n * K! + kk]!;
      if (y0) out[m * stride + offset + n]! += s;
      else out[m * stride + offset + n] = s;
    }
  }
  return out;
}

async function runMatmul(gpu: Gpu, x: Float32Array, weight: k.ShardedWeight, M: number) {
  const y = gpu.storage("y", M * weight.rows * 4);
  const ds = k.matmul(gpu, stepUniform(gpu, M), gpu.upload("x", x), weight, y, { kernels });
  await run(gpu, ds, { numTokens: M, numRows: 0, numLogitRows: 0 });
  return new Float32Array(await gpu.read(y, M * weight.rows * 4));
}

Deno.test("auto picks the cpu class on fallback and software adapters, gpu elsewhere", () => {
  const pick = (description: string, isFallbackAdapter = false) =>
    chooseKernelClass("auto", { description, isFallbackAdapter });
  assertEquals(pick("llvmpipe (LLVM 15.0.6, 256 bits)"), "cpu");
  assertEquals(pick("Intel(R) Graphics (lavapipe)"), "cpu");
  assertEquals(pick("Google SwiftShader"), "cpu");
  assertEquals(pick("some adapter", true), "cpu");
  assertEquals(pick("NVIDIA H100 80GB HBM3"), "gpu");
  assertEquals(chooseKernelClass("gpu", { description: "llvmpipe" }), "gpu");
  assertEquals(chooseKernelClass("cpu", { description: "NVIDIA H100" }), "cpu");
});

// M ≤ gemvMaxRows runs gemv_gpu.wgsl, larger M the tiled kernel: 16 × 32 tiles for shards
// of N ≤ 1024, 32 × 32 up to 4096, 64 × 32 beyond (the last sizes below; the sharded one
// has a 4100-row shard and a 900-row one). N and K are not tile multiples; K % 4 ≠ 0 takes
// the zero-padded last chunk (and, for bf16 with odd K, rows that start in the middle of
// a u32 word); K < 32 leaves k lanes without a chunk.
for (const bf16 of [false, true]) {
  for (
    const [M, N, K, shardRows] of [
      [1, 67, 33, undefined],
      [1, 258, 1024, 100],
      [2, 13, 7, undefined],
      [4, 130, 100, undefined],
      [5, 130, 100, 47],
      [70, 65, 17, undefined],
      [70, 200, 258, 64],
      [130, 203, 66, undefined],
      [33, 9, 3, undefined],
      [33, 1100, 9, undefined],
      [40, 4200, 9, undefined],
      [40, 5000, 6, 4100],
    ] as const
  ) {
    gpuTest(
      `gpu-class matmul (${bf16 ? "bf16" : "f32"} weights) matches the CPU at ` +
        `M=${M} N=${N} K=${K}${shardRows ? `, shards of ${shardRows} rows` : ""}`,
      async (gpu) => {
        const r = rng(M * 1000 + N * 7 + K + (bf16 ? 1 : 0));
        const x = randomArray(M * K, r);
        const { w, weight } = randomWeight(gpu, N, K, { bf16, shardRows }, r);
        assertClose(await runMatmul(gpu, x, weight, M), matmulRef(x, w, [M, N, K]), {
          rtol: 1e-4,
          atol: 1e-4,
          what: "y",
        });
      },
    );
  }
}

for (const M of [1, 3, 9, 70]) {
  gpuTest(
    `gpu-class matmul accumulates into a column range of a wider output, M from rows (M=${M})`,
    async (gpu) => {
      const [N, K, stride, offset] = [37, 45, 100, 50];
      const r = rng(42 + M);
      const x = randomArray(M * K, r);
      const { w, weight } = randomWeight(gpu, N, K, { bf16: true, shardRows: 20 }, r);
      const y0 = randomArray(M * stride, r);
      const y = gpu.upload("y", y0);
      // num_tokens is 0: only M_FROM_ROWS makes the kernels see the M rows.
      const ds = k.matmul(gpu, stepUniform(gpu, 0, M), gpu.upload("x", x), weight, y, {
        accumulate: true,
        mFromRows: true,
        yStride: stride,
        yOffset: offset,
        kernels,
      });
      await run(gpu, ds, { numTokens: 0, numRows: M, numLogitRows: M });
      assertClose(
        new Float32Array(await gpu.read(y, M * stride * 4)),
        matmulRef(x, w, [M, N, K], y0, stride, offset),
        { rtol: 1e-4, atol: 1e-4, what: "y" },
      );
    },
  );
}

for (const [bf16, K] of [[true, 1024], [true, 37], [false, 130]] as const) {
  gpuTest(
    `gpu class: a row's matmul output is bit-identical at every M from 1 (GEMV) to 70 (tiled), K=${K}`,
    async (gpu) => {
      const [N, M] = [75, 70];
      const r = rng(K);
      const x = randomArray(M * K, r);
      const { weight } = randomWeight(gpu, N, K, { bf16, shardRows: 40 }, r);
      const batch = await runMatmul(gpu, x, weight, M);
      const gemvMax = kernelTable("gpu").gemvMaxRows;
      for (const [row, m] of [[0, 1], [0, gemvMax], [1, gemvMax + 1], [37, 38], [69, 70]]) {
        // The first m rows: row `row` runs as part of a GEMV or a smaller tiled batch.
        const small = await runMatmul(gpu, x.slice(0, m! * K), weight, m!);
        for (let n = 0; n < N; n++) {
          const a = small[row! * N + n]!;
          const b = batch[row! * N + n]!;
          if (!Object.is(a, b)) {
            throw new Error(`row ${row} column ${n}: ${a} at M=${m} but ${b} at M=${M}`);
          }
        }
      }
    },
  );
}
