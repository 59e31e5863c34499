/**
 * The wasm backend's matmul on its own, for kernel tests and benchmarks:
 * y (rows, n) = x (rows, k) · Wᵀ with W packed into panels and the work split
 * over the worker threads exactly as in a model step.
 *
 * @example
 * ```ts
 * import { wasmMatmulGflops } from "./matmul.ts";
 * const gflops = await wasmMatmulGflops({ n: 1024, k: 2048, rows: 64 });
 * ```
 *
 * @module
 */
import type { CanonicalTensor } from "../../model.ts";
import { WasmThreads } from "./threads.ts";
import { type PackedWeight, packWeight, WEIGHT_WORDS, writeWeight } from "./weights.ts";

/** A packed weight and its input/output buffers in a pool of its own. */
export class WasmMatmul {
  private constructor(
    readonly pool: WasmThreads,
    readonly weight: PackedWeight,
    readonly maxRows: number,
    readonly model: number,
    readonly weightStruct: number,
    readonly x: number,
    readonly y: number,
  ) {}

  /** Packs `w` (n, k) and allocates room for `maxRows` rows. */
  static async create(
    w: CanonicalTensor,
    maxRows: number,
    threads = navigator.hardwareConcurrency ?? 1,
  ): Promise<WasmMatmul> {
    const pool = await WasmThreads.start(threads);
    const packed = packWeight(pool, w);
    // run_matmul reads `threads` and the barrier and work words of the Model struct only.
    const model = pool.alloc(pool.structWords.model * 4);
    pool.u32(model, 1)[0] = threads;
    const ws = pool.alloc(WEIGHT_WORDS * 4);
    writeWeight(pool.u32(ws, WEIGHT_WORDS), 0, packed);
    const x = pool.alloc(maxRows * packed.k * 4);
    const y = pool.alloc(maxRows * packed.n * 4);
    return new WasmMatmul(pool, packed, maxRows, model, ws, x, y);
  }

  /** Writes `rows` rows of x (rows, k); returns y (rows, n), a copy. */
  async multiply(x: Float32Array, rows: number): Promise<Float32Array> {
    const { k, n } = this.weight;
    if (rows > this.maxRows || x.length !== rows * k) {
      throw new Error(`multiply: ${x.length} values for ${rows} rows of ${k}`);
    }
    this.pool.f32(this.x, rows * k).set(x);
    await this.run(rows);
    return this.pool.f32(this.y, rows * n).slice();
  }

  /** Runs the matmul on whatever the input buffer holds. */
  run(rows: number): Promise<void> {
    return this.pool.run("run_matmul", this.model, this.weightStruct, this.x, this.y, rows);
  }

  /** Stops the pool's workers. */
  destroy(): void {
    this.pool.close();
  }
}

/**
 * GFLOP/s of the wasm matmul at one shape: bf16 W (n, k) and x (rows, k),
 * best of `iterations` timed runs after one warm-up.
 */
export async function wasmMatmulGflops(
  { n, k, rows, threads, iterations = 5 }: {
    n: number;
    k: number;
    rows: number;
    threads?: number;
    iterations?: number;
  },
): Promise<number> {
  const bits = new Uint16Array(n * k);
  for (let i = 0; i < bits.length; i++) bits[i] = 0x3c00 + (Math.imul(i, 2654435761) >>> 24);
  const mm = await WasmMatmul.create({ shape: [n, k], dtype: "bf16", data: bits }, rows, threads);
  try {
    mm.pool.f32(mm.x, rows * k).fill(0.5);
    await mm.run(rows);
    let best = Infinity;
    for (let i = 0; i < iterations; i++) {
      const t0 = performance.now();
      await mm.run(rows);
      best = Math.min(best, performance.now() - t0);
    }
    return (2 * n * k * rows) / (best * 1e6);
  } finally {
    mm.destroy();
  }
}
