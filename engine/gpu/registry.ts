/**
 * Kernel classes: which WGSL file, which class-specific `override` constants
 * and which output tile each op dispatches, per class of adapter.
 *
 * - `cpu`: kernels shaped for a CPU rasteriser (Mesa llvmpipe, lavapipe,
 *   SwiftShader): register tiles straight from memory, no shared memory, no
 *   barriers, few large workgroups.
 * - `gpu`: kernels shaped for a discrete GPU: tiles staged through workgroup
 *   memory with coalesced loads, K split across the invocations of a
 *   workgroup, enough workgroups to fill every SM.
 *
 * The class is chosen once, when the model loads, and every op of the forward
 * plan looks its kernel up here; the plan itself has the same shape in both.
 * Within one class every kernel that computes a matmul output reduces over k
 * in the same fixed order, so a row's result does not depend on the batch.
 *
 * @module
 */
import embeddingSrc from "../../shaders/embedding.wgsl" with { type: "text" };
import rmsNormSrc from "../../shaders/rms_norm.wgsl" with { type: "text" };
import matmulIoSrc from "../../shaders/_matmul_io.wgsl" with { type: "text" };
import matmulLanesSrc from "../../shaders/_matmul_lanes.wgsl" with { type: "text" };
import matmulSrc from "../../shaders/matmul.wgsl" with { type: "text" };
import gemvSrc from "../../shaders/gemv.wgsl" with { type: "text" };
import matmulGpuSrc from "../../shaders/matmul_gpu.wgsl" with { type: "text" };
import gemvGpuSrc from "../../shaders/gemv_gpu.wgsl" with { type: "text" };
import rotarySrc from "../../shaders/rotary_kv.wgsl" with { type: "text" };
import attentionSrc from "../../shaders/attention.wgsl" with { type: "text" };
import siluMulSrc from "../../shaders/silu_mul.wgsl" with { type: "text" };
import argmaxSrc from "../../shaders/argmax.wgsl" with { type: "text" };
import attentionTileSrc from "../../shaders/attention_tile.wgsl" with { type: "text" };
import attentionPieceSrc from "../../shaders/attention_piece.wgsl" with { type: "text" };
import attentionMergeSrc from "../../shaders/attention_merge.wgsl" with { type: "text" };
import type { Kernel } from "./device.ts";

/** A family of kernels tuned for one kind of adapter. */
export type KernelClass = "cpu" | "gpu";

/** What a user asks for: a class, or `auto` (chosen from the adapter). */
export type KernelChoice = "auto" | KernelClass;

/** The kernel classes, in the order `--kernels` lists them. */
export const KERNEL_CLASSES: readonly KernelClass[] = ["cpu", "gpu"];

/** The ops of the forward plan that dispatch a kernel. */
export type Op =
  | "embedding"
  | "rmsNorm"
  | "gemv"
  | "matmul"
  | "rotaryKv"
  | "attention"
  | "siluMul"
  | "argmax";

/** One op's kernel in one class. */
export interface KernelVariant {
  readonly kernel: Kernel;
  /** Class-specific `override` constants, merged under the op's own (shape) constants. */
  readonly constants: Readonly<Record<string, number>>;
  /**
   * Outputs one workgroup computes along (n, m) for the matmul family: the op
   * launches ceil(N / n) × ceil(M / m) workgroups. Unused by other ops.
   */
  readonly tile?: { readonly n: number; readonly m: number };
  /**
   * Smaller tiles for weight shards of at most `maxN` outputs (the first that fits
   * wins), so narrow matrices still launch enough workgroups to fill a large GPU.
   */
  readonly narrow?: readonly {
    readonly maxN: number;
    readonly constants: Readonly<Record<string, number>>;
    readonly tile: { readonly n: number; readonly m: number };
  }[];
}

/**
 * GPU-class attention (engine/gpu/attention_gpu.ts): the piece kernel (run as
 * flash-decoding for decode rows and as a tiled kernel for prefill chunks) and
 * the log-sum-exp merge of a token's pieces.
 */
export interface FlashAttentionKernels {
  readonly piece: Kernel;
  readonly merge: Kernel;
}

/** The ops of one class, plus the largest M its GEMV handles (larger M runs `matmul`). */
export interface KernelTable {
  readonly ops: Readonly<Record<Op, KernelVariant>>;
  readonly gemvMaxRows: number;
  /** When present, the `attention` op runs these instead of `ops.attention`. */
  readonly flashAttention?: FlashAttentionKernels;
}

const k = (name: string, source: string): Kernel => ({ name, source });

/**
 * A matmul-family kernel: WGSL has no includes, so the preludes it shares with
 * the other kernels of its family come first in its source (compiler messages
 * count lines from the first prelude's first line).
 */
const withPreludes = (name: string, ...sources: string[]): Kernel => k(name, sources.join("\n"));

const SHARED = {
  embedding: { kernel: k("embedding", embeddingSrc), constants: {} },
  rmsNorm: { kernel: k("rms_norm", rmsNormSrc), constants: {} },
  rotaryKv: { kernel: k("rotary_kv", rotarySrc), constants: {} },
  attention: { kernel: k("attention", attentionSrc), constants: {} },
  siluMul: { kernel: k("silu_mul", siluMulSrc), constants: {} },
  argmax: { kernel: k("argmax", argmaxSrc), constants: {} },
} as const satisfies Partial<Record<Op, KernelVariant>>;

/** Outputs per workgroup of gemv_gpu.wgsl (its ROWS override): 1024 / 8 = 128 workgroups. */
const GEMV_GPU_ROWS = 8;

const TABLES: Readonly<Record<KernelClass, KernelTable>> = {
  cpu: {
    ops: {
      ...SHARED,
      // 64 invocations × 4 columns; one row per workgroup.
      gemv: {
        kernel: withPreludes("gemv", matmulIoSrc, gemvSrc),
        constants: {},
        tile: { n: 256, m: 1 },
      },
      // 64 invocations × (4 rows × 8 columns).
      matmul: {
        kernel: withPreludes("matmul", matmulIoSrc, matmulSrc),
        constants: {},
        tile: { n: 512, m: 4 },
      },
    },
    gemvMaxRows: 1,
  },
  gpu: {
    ops: {
      ...SHARED,
      gemv: {
        kernel: withPreludes("gemv_gpu", matmulIoSrc, matmulLanesSrc, gemvGpuSrc),
        constants: { ROWS: GEMV_GPU_ROWS },
        tile: { n: GEMV_GPU_ROWS, m: 1 },
      },
      // BN × BM = 8·PN × 32 output tiles: 64 × 32, and for N ≤ 4096 (qkv at 0.3B) 32 × 32,
      // for N ≤ 1024 (o, down) 16 × 32, so that 64 rows of N = 1024 launch 128 workgroups.
      matmul: {
        kernel: withPreludes("matmul_gpu", matmulIoSrc, matmulLanesSrc, matmulGpuSrc),
        constants: { PN: 8 },
        tile: { n: 64, m: 32 },
        narrow: [
          { maxN: 1024, constants: { PN: 2 }, tile: { n: 16, m: 32 } },
          { maxN: 4096, constants: { PN: 4 }, tile: { n: 32, m: 32 } },
        ],
      },
    },
    gemvMaxRows: 4,
    flashAttention: {
      piece: k("attention_piece", attentionTileSrc + attentionPieceSrc),
      merge: k("attention_merge", attentionMergeSrc),
    },
  },
};

/** The kernels of one class. */
export function kernelTable(cls: KernelClass): KernelTable {
  return TABLES[cls];
}

/** Software renderers that report themselves only through the adapter description. */
const SOFTWARE_RENDERERS = /llvmpipe|lavapipe|softpipe|swiftshader|microsoft basic render/i;

/**
 * Resolves `auto` from the adapter: `cpu` for a fallback adapter or a known
 * software renderer, `gpu` for everything else. An explicit class is kept.
 *
 * @example
 * ```ts
 * chooseKernelClass("auto", { isFallbackAdapter: false, description: "llvmpipe (LLVM 15)" }); // "cpu"
 * ```
 */
export function chooseKernelClass(
  choice: KernelChoice,
  info: { readonly isFallbackAdapter?: boolean; readonly description: string },
): KernelClass {
  if (choice !== "auto") return choice;
  if (info.isFallbackAdapter || SOFTWARE_RENDERERS.test(info.description)) return "cpu";
  return "gpu";
}

/** How the KV cache stores keys and values: `auto` resolves to one of the others at load. */
export type KvCacheDtype = "auto" | "f16" | "f32";

/**
 * Resolves `auto`: f16 (half the bytes per token, so twice the tokens per GiB)
 * for the gpu class on a device with `shader-f16`, f32 otherwise, which keeps
 * the cpu class's results exactly as they were. An explicit dtype is kept: f16
 * KV is stored as packed pairs (core WGSL), so it works on any adapter.
 *
 * @example
 * ```ts
 * chooseKvCacheDtype("auto", "gpu", true); // "f16"
 * ```
 */
export function chooseKvCacheDtype(
  choice: KvCacheDtype,
  cls: KernelClass,
  hasF16: boolean,
): "f16" | "f32" {
  if (choice !== "auto") return choice;
  return cls === "gpu" && hasF16 ? "f16" : "f32";
}
