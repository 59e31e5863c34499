/**
 * Kernel throughput at the 0.3B model's matmul shapes, beside numpy's f32
 * matmul on this machine's CPU as the yardstick.
 *
 * @module
 */
import type { Gpu } from "../engine/gpu/device.ts";
import * as ops from "../engine/gpu/kernels.ts";
import { chooseKernelClass, type KernelClass } from "../engine/gpu/registry.ts";

/** The model's matmuls, y = x·Wᵀ with W [N, K]. */
export const MATMUL_SHAPES: readonly (readonly [string, number, number])[] = [
  ["qkv", 2560, 1024],
  ["o_proj", 1024, 2048],
  ["gate_up", 6144, 1024],
  ["down", 1024, 3072],
  ["lm_head", 103424, 1024],
];

/** One kernel row of the table. */
export interface KernelRow {
  /** Which implementation, e.g. "webgpu matmul (cpu class)". */
  readonly kernel: string;
  readonly name: string;
  readonly M: number;
  readonly N: number;
  readonly K: number;
  readonly gflops: number;
  readonly numpyGflops: number | null;
  readonly ratioToNumpy: number | null;
}

function bf16Random(n: number, seed: number): Uint16Array {
  const out = new Uint16Array(n);
  let s = seed >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out[i] = 0x3c00 | (s >>> 25); // small positive bf16 values in [2^-7, 2^-6)
  }
  return out;
}

/** The kernel class the engine would choose on this adapter. */
export function engineKernelClass(gpu: Gpu): KernelClass {
  return chooseKernelClass("auto", {
    isFallbackAdapter: gpu.adapter.info.isFallbackAdapter,
    description: gpu.description,
  });
}

/**
 * GFLOP/s of the WebGPU matmul for [M, K] × [N, K] with bf16 weights, timed
 * over repeated dispatches in one submission (doubling until one run takes `minMs`).
 */
export async function webgpuMatmulGflops(
  gpu: Gpu,
  kernels: KernelClass,
  M: number,
  N: number,
  K: number,
  minMs: number,
): Promise<number> {
  const w = ops.uploadSharded(gpu, "w", N, K, bf16Random(N * K, N + K));
  const x = gpu.upload("x", new Float32Array(M * K).fill(0.01));
  const y = gpu.storage("y", M * N * 4);
  const step = gpu.uniform("step", ops.STEP_UNIFORM_BYTES);
  gpu.write(step, new Uint32Array([M, M, M, 0]));
  const ds = ops.matmul(gpu, step, x, w, y, { kernels });
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
    if (ms > minMs || iters >= 4096) break;
    iters *= 2;
  }
  w.shards.forEach((s) => s.buffer.destroy());
  x.destroy();
  y.destroy();
  step.destroy();
  return (2 * M * N * K * iters) / (ms / 1000) / 1e9;
}

/** numpy's f32 matmul GFLOP/s for the same shape (the CPU yardstick), or null without numpy. */
export async function numpyGflops(M: number, N: number, K: number): Promise<number | null> {
  const script = `
import numpy as np, time
x = np.random.rand(${M}, ${K}).astype(np.float32); w = np.random.rand(${N}, ${K}).astype(np.float32)
x @ w.T
n, t0 = 0, time.perf_counter()
while time.perf_counter() - t0 < 0.5: x @ w.T; n += 1
print(2 * ${M} * ${N} * ${K} * n / (time.perf_counter() - t0) / 1e9)`;
  return await pythonNumber(script);
}

/** The number a python3 script prints, or null without python3 (or numpy). */
export async function pythonNumber(script: string): Promise<number | null> {
  try {
    const out = await new Deno.Command("python3", { args: ["-c", script], stderr: "null" })
      .output();
    return out.success ? Number(new TextDecoder().decode(out.stdout).trim()) : null;
  } catch {
    return null;
  }
}
