/**
 * The WGSL kernels, imported as text, and a thin op per kernel that turns
 * buffers and shapes into a {@linkcode Dispatch}: a pipeline specialised by
 * override constants, a bind group made once, and the workgroup count as a
 * function of the step's shape.
 *
 * @module
 */
import embeddingSrc from "../../shaders/embedding.wgsl" with { type: "text" };
import rmsNormSrc from "../../shaders/rms_norm.wgsl" with { type: "text" };
import matmulSrc from "../../shaders/matmul.wgsl" with { type: "text" };
import gemvSrc from "../../shaders/gemv.wgsl" with { type: "text" };
import rotarySrc from "../../shaders/rotary_kv.wgsl" with { type: "text" };
import attentionSrc from "../../shaders/attention.wgsl" with { type: "text" };
import siluMulSrc from "../../shaders/silu_mul.wgsl" with { type: "text" };
import argmaxSrc from "../../shaders/argmax.wgsl" with { type: "text" };
import type { Gpu, Kernel } from "./device.ts";

const KERNELS = {
  embedding: { name: "embedding", source: embeddingSrc },
  rmsNorm: { name: "rms_norm", source: rmsNormSrc },
  matmul: { name: "matmul", source: matmulSrc },
  gemv: { name: "gemv", source: gemvSrc },
  rotary: { name: "rotary_kv", source: rotarySrc },
  attention: { name: "attention", source: attentionSrc },
  siluMul: { name: "silu_mul", source: siluMulSrc },
  argmax: { name: "argmax", source: argmaxSrc },
} as const satisfies Record<string, Kernel>;

/** The per-step sizes every dispatch derives its workgroup count from. */
export interface StepShape {
  /** Tokens computed in this step (T). */
  readonly numTokens: number;
  /** Rows that get the final norm (R): logit rows first, then hidden-only rows. */
  readonly numRows: number;
  /** The first rows that also get logits (L ≤ R). */
  readonly numLogitRows: number;
}

/** One recorded kernel launch, reusable across steps. */
export interface Dispatch {
  readonly label: string;
  readonly pipeline: GPUComputePipeline;
  readonly bindGroup: GPUBindGroup;
  workgroups(shape: StepShape): [number, number, number];
}

/** A weight matrix [rows, cols] split by rows into buffers no larger than one binding. */
export interface ShardedWeight {
  readonly rows: number;
  readonly cols: number;
  readonly bf16: boolean;
  readonly shards: readonly {
    readonly buffer: GPUBuffer;
    readonly rowStart: number;
    readonly rows: number;
  }[];
}

/** Bytes of the uniform all dispatches of a step share: {num_tokens, num_rows, num_logit_rows, 0}. */
export const STEP_UNIFORM_BYTES = 16;

const ceil = (a: number, b: number) => Math.ceil(a / b);

/** x[t] = table[ids[t]] for every shard of the table (ids outside a shard are skipped by it). */
export function embedding(
  gpu: Gpu,
  step: GPUBuffer,
  ids: GPUBuffer,
  table: ShardedWeight,
  out: GPUBuffer,
): Dispatch[] {
  return table.shards.map((shard) => {
    const pipeline = gpu.pipeline(KERNELS.embedding, {
      HIDDEN: table.cols,
      ROW_START: shard.rowStart,
      ROWS: shard.rows,
      BF16: table.bf16 ? 1 : 0,
    });
    return {
      label: "embedding",
      pipeline,
      bindGroup: gpu.bindGroup(pipeline, [step, ids, shard.buffer, out]),
      workgroups: (s) => [ceil(table.cols, 64), s.numTokens, 1],
    };
  });
}

/** out = RMSNorm(x) · w per row; with `rows`, row r reads x[rows[r]] (R rows). */
export function rmsNorm(
  gpu: Gpu,
  step: GPUBuffer,
  x: GPUBuffer,
  weight: GPUBuffer,
  out: GPUBuffer,
  o: { hidden: number; eps: number; rows?: GPUBuffer },
): Dispatch {
  const pipeline = gpu.pipeline(KERNELS.rmsNorm, {
    HIDDEN: o.hidden,
    EPS: o.eps,
    GATHER: o.rows ? 1 : 0,
  });
  return {
    label: "rms_norm",
    pipeline,
    bindGroup: gpu.bindGroup(pipeline, [step, x, weight, o.rows ?? x, out]),
    workgroups: (s) => [o.rows ? s.numRows : s.numTokens, 1, 1],
  };
}

/** Batches of at most this many rows run `gemv.wgsl`; larger ones `matmul.wgsl`. */
export const GEMV_MAX_ROWS = 1;

/** Outputs per invocation along (n, m) and invocations per workgroup of each kernel. */
const GEMV_TILE = { n: 4, m: 1, invocations: 64 };
const MATMUL_TILE = { n: 8, m: 4, invocations: 64 };

/**
 * y[:, shard cols] (+)= x · Wᵀ for every row shard of W. Each shard gets two dispatches,
 * a GEMV and a register-tiled kernel, and the step's M picks one (the other launches no
 * workgroups). Both sum every output over k in the same order, so a row's result does
 * not depend on M or on the other rows of the batch.
 */
export function matmul(
  gpu: Gpu,
  step: GPUBuffer,
  x: GPUBuffer,
  w: ShardedWeight,
  y: GPUBuffer,
  o: { accumulate?: boolean; mFromRows?: boolean; yStride?: number; yOffset?: number } = {},
): Dispatch[] {
  const rowsOf = (s: StepShape) => o.mFromRows ? s.numLogitRows : s.numTokens;
  return w.shards.flatMap((shard) => {
    const constants = {
      K: w.cols,
      N: shard.rows,
      N_TOTAL: o.yStride ?? w.rows,
      COL_OFFSET: (o.yOffset ?? 0) + shard.rowStart,
      BF16: w.bf16 ? 1 : 0,
      ACCUMULATE: o.accumulate ? 1 : 0,
      M_FROM_ROWS: o.mFromRows ? 1 : 0,
    };
    const launch = (
      label: string,
      kernel: Kernel,
      tile: typeof GEMV_TILE,
      runs: (m: number) => boolean,
    ): Dispatch => {
      const pipeline = gpu.pipeline(kernel, constants);
      return {
        label,
        pipeline,
        bindGroup: gpu.bindGroup(pipeline, [step, x, shard.buffer, y]),
        workgroups: (s) => {
          const m = rowsOf(s);
          if (!runs(m)) return [0, 0, 0];
          return [ceil(shard.rows, tile.n * tile.invocations), ceil(m, tile.m), 1];
        },
      };
    };
    return [
      launch("gemv", KERNELS.gemv, GEMV_TILE, (m) => m <= GEMV_MAX_ROWS),
      launch("matmul", KERNELS.matmul, MATMUL_TILE, (m) => m > GEMV_MAX_ROWS),
    ];
  });
}

/** Rotates q and k in place (interleaved RoPE) and appends k, v to the paged cache. */
export function rotaryKv(
  gpu: Gpu,
  step: GPUBuffer,
  b: {
    qkv: GPUBuffer;
    positions: GPUBuffer;
    slots: GPUBuffer;
    invFreq: GPUBuffer;
    kCache: GPUBuffer;
    vCache: GPUBuffer;
  },
  o: { heads: number; kvHeads: number; headDim: number; posScale: number },
): Dispatch {
  const pipeline = gpu.pipeline(KERNELS.rotary, {
    HQ: o.heads,
    HKV: o.kvHeads,
    D: o.headDim,
    POS_SCALE: o.posScale,
  });
  return {
    label: "rotary_kv",
    pipeline,
    bindGroup: gpu.bindGroup(pipeline, [
      step,
      b.qkv,
      b.positions,
      b.slots,
      b.invFreq,
      b.kCache,
      b.vCache,
    ]),
    workgroups: (s) => [s.numTokens, 1, 1],
  };
}

/** Causal GQA attention through the block tables. */
export function attention(
  gpu: Gpu,
  step: GPUBuffer,
  b: {
    qkv: GPUBuffer;
    positions: GPUBuffer;
    seqOf: GPUBuffer;
    blockTable: GPUBuffer;
    kCache: GPUBuffer;
    vCache: GPUBuffer;
    out: GPUBuffer;
  },
  o: { heads: number; kvHeads: number; headDim: number; blockSize: number; maxBlocks: number },
): Dispatch {
  if (o.headDim > 256) throw new Error(`head_dim ${o.headDim} > 256 is not supported`);
  const pipeline = gpu.pipeline(KERNELS.attention, {
    HQ: o.heads,
    HKV: o.kvHeads,
    D: o.headDim,
    BLOCK: o.blockSize,
    MAX_BLOCKS: o.maxBlocks,
    SCALE: 1 / Math.sqrt(o.headDim),
  });
  return {
    label: "attention",
    pipeline,
    bindGroup: gpu.bindGroup(pipeline, [
      step,
      b.qkv,
      b.positions,
      b.seqOf,
      b.blockTable,
      b.kCache,
      b.vCache,
      b.out,
    ]),
    workgroups: (s) => [s.numTokens, o.heads, 1],
  };
}

/** out = silu(gate) ⊙ up from the fused gate|up activations. */
export function siluMul(
  gpu: Gpu,
  step: GPUBuffer,
  gateUp: GPUBuffer,
  out: GPUBuffer,
  intermediate: number,
): Dispatch {
  const pipeline = gpu.pipeline(KERNELS.siluMul, { I: intermediate });
  return {
    label: "silu_mul",
    pipeline,
    bindGroup: gpu.bindGroup(pipeline, [step, gateUp, out]),
    workgroups: (s) => [ceil(intermediate, 64), s.numTokens, 1],
  };
}

/** ids[r] = argmax of logits row r over the first `valid` entries. */
export function argmax(
  gpu: Gpu,
  step: GPUBuffer,
  logits: GPUBuffer,
  ids: GPUBuffer,
  o: { valid: number; stride: number },
): Dispatch {
  const pipeline = gpu.pipeline(KERNELS.argmax, { VALID: o.valid, STRIDE: o.stride });
  return {
    label: "argmax",
    pipeline,
    bindGroup: gpu.bindGroup(pipeline, [step, logits, ids]),
    workgroups: (s) => [s.numLogitRows, 1, 1],
  };
}

/** Records dispatches into one compute pass, skipping empty launches. */
export function encode(
  pass: GPUComputePassEncoder,
  dispatches: readonly Dispatch[],
  shape: StepShape,
): void {
  for (const d of dispatches) {
    const [x, y, z] = d.workgroups(shape);
    if (x === 0 || y === 0 || z === 0) continue;
    pass.setPipeline(d.pipeline);
    pass.setBindGroup(0, d.bindGroup);
    pass.dispatchWorkgroups(x, y, z);
  }
}

/** Splits a [rows, cols] weight into row shards that each fit one storage binding. */
export function uploadSharded(
  gpu: Gpu,
  label: string,
  rows: number,
  cols: number,
  data: Uint16Array | Float32Array,
): ShardedWeight {
  const bf16 = data instanceof Uint16Array;
  const bytesPerRow = cols * (bf16 ? 2 : 4);
  const rowsPerShard = Math.max(1, Math.floor((gpu.maxBinding - 16) / bytesPerRow));
  const shards = [];
  for (let rowStart = 0; rowStart < rows; rowStart += rowsPerShard) {
    const n = Math.min(rowsPerShard, rows - rowStart);
    const view = data.subarray(rowStart * cols, (rowStart + n) * cols);
    shards.push({ buffer: gpu.upload(`${label}[${rowStart}]`, view), rowStart, rows: n });
  }
  return { rows, cols, bf16, shards };
}
