/**
 * Weights in the layout the SIMD matmul reads contiguously: panels of 8 output
 * columns × k, two groups of 4 lanes (A, B) per k. bf16 stays bf16, two columns
 * to a u32 word (A in the high half, B in the low half, widened in registers by
 * a mask and a shift); f32 checkpoints keep f32.
 *
 * @module
 */
import type { CanonicalTensor } from "../../model.ts";
import type { WasmThreads } from "./threads.ts";

/** `Weight` in kernels.c, as u32 words. */
export const WEIGHT_WORDS = 5;

/** How a matrix's rows (output columns) map to panel lanes. */
export type PanelLayout = "plain" | "gate_up";

/** A packed weight in the shared memory. */
export interface PackedWeight {
  readonly data: number; // byte offset of the panels
  readonly n: number; // output columns (gate_up: the intermediate size)
  readonly k: number;
  readonly panels: number;
  readonly bf16: boolean;
  readonly bytes: number;
}

/**
 * Packs W (rows, k), torch layout, into panels in the pool's memory.
 * "plain": panel p has A_j = row 8p + j, B_j = row 8p + 4 + j.
 * "gate_up" (rows = 2·I, gate rows first): A_j = gate row 4p + j, B_j = up row I + 4p + j,
 * so one tile holds a gate and its up value and the kernel applies silu(gate)·up.
 */
export function packWeight(
  pool: WasmThreads,
  t: CanonicalTensor,
  layout: PanelLayout = "plain",
): PackedWeight {
  const [rows, k] = t.shape as [number, number];
  const n = layout === "plain" ? rows : rows / 2;
  const width = layout === "plain" ? 8 : 4; // output columns per panel
  const panels = Math.ceil(n / width);
  const row = (p: number, j: number, b: 0 | 1): number => {
    if (layout === "plain") {
      const c = p * 8 + b * 4 + j;
      return c < n ? c : -1;
    }
    const c = p * 4 + j;
    return c < n ? b * n + c : -1;
  };
  const bf16 = t.dtype === "bf16";
  const bytes = panels * k * (bf16 ? 16 : 32);
  const data = pool.alloc(bytes);
  if (bf16) {
    const src = t.data as Uint16Array;
    const dst = pool.u32(data, panels * k * 4);
    for (let p = 0; p < panels; p++) {
      for (let j = 0; j < 4; j++) {
        const a = row(p, j, 0), b = row(p, j, 1);
        const base = p * k * 4 + j;
        for (let i = 0; i < k; i++) {
          const hi = a < 0 ? 0 : src[a * k + i]!;
          const lo = b < 0 ? 0 : src[b * k + i]!;
          dst[base + i * 4] = (hi << 16) | lo;
        }
      }
    }
  } else {
    const src = t.data as Float32Array;
    const dst = pool.f32(data, panels * k * 8);
    for (let p = 0; p < panels; p++) {
      for (let j = 0; j < 8; j++) {
        const r = row(p, j & 3, j < 4 ? 0 : 1);
        if (r < 0) continue;
        const base = p * k * 8 + j;
        for (let i = 0; i < k; i++) dst[base + i * 8] = src[r * k + i]!;
      }
    }
  }
  return { data, n, k, panels, bf16, bytes };
}

/** Writes a `Weight` struct (kernels.c) at word index `at` of `words`. */
export function writeWeight(words: Uint32Array, at: number, w: PackedWeight): void {
  words.set([w.data, w.n, w.k, w.panels, w.bf16 ? 1 : 0], at);
}
