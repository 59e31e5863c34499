/**
 * A thin op per kernel that turns buffers and shapes into a
 * {@linkcode Dispatch}: the kernel of the op's class (engine/gpu/registry.ts)
 * specialised by override constants, a bind group made once, and the
 * workgroup count as a function of the step's shape. Every op takes
 * `kernels` (default `cpu`), the class chosen when the model loads.
 *
 * @module
 */
import type { Gpu } from "./device.ts";
import { type KernelClass, kernelTable, type Op } from "./registry.ts";
import type { KernelCost } from "./profile.ts";
import { attentionGpu, type AttentionLayout } from "./attention_gpu.ts";

export type { KernelClass } from "./registry.ts";

/** The pipeline of `op` in class `cls`, specialised by the op's shape constants. */
function pipelineOf(
  gpu: Gpu,
  cls: KernelClass,
  op: Op,
  constants: Readonly<Record<string, number>>,
): GPUComputePipeline {
  const v = kernelTable(cls).ops[op];
  return gpu.pipeline(v.kernel, { ...v.constants, ...constants });
}

/** The per-step sizes every dispatch derives its workgroup count from. */
export interface StepShape {
  /** Tokens computed in this step (T). */
  readonly numTokens: number;
  /** Rows that get the final norm (R): logit rows first, then hidden-only rows. */
  readonly numRows: number;
  /** The first rows that also get logits (L ≤ R). */
  readonly numLogitRows: number;
  /** Σ over the step's tokens of the keys each attends to (set when profiling; for costs). */
  readonly attendedKeys?: number;
  /** GPU-class attention (absent: 0): decode rows, prefill tiles, and the most pieces of each. */
  readonly numDecodeRows?: number;
  readonly numPrefillTiles?: number;
  readonly decodePieces?: number;
  readonly prefillPieces?: number;
}

/** One recorded kernel launch, reusable across steps. */
export interface Dispatch {
  readonly label: string;
  readonly pipeline: GPUComputePipeline;
  readonly bindGroup: GPUBindGroup;
  workgroups(shape: StepShape): [number, number, number];
  /** What one launch at this shape computes and moves at least (for --profile). */
  cost?(shape: StepShape): KernelCost;
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

/**
 * Bytes of the uniform all dispatches of a step share, `struct Step` in the
 * shaders: {num_tokens, num_rows, num_logit_rows, 0} u32, the T, R and L of
 * {@linkcode StepShape}.
 */
export const STEP_UNIFORM_BYTES = 16;

const ceil = (a: number, b: number) => Math.ceil(a / b);

/** x[t] = table[ids[t]] for every shard of the table (ids outside a shard are skipped by it). */
export function embedding(
  gpu: Gpu,
  step: GPUBuffer,
  ids: GPUBuffer,
  table: ShardedWeight,
  out: GPUBuffer,
  o: { kernels?: KernelClass } = {},
): Dispatch[] {
  return table.shards.map((shard) => {
    const pipeline = pipelineOf(gpu, o.kernels ?? "cpu", "embedding", {
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
      // Each token's row is read by one of the shards: count the rows evenly across them.
      cost: (s) => ({
        flops: 0,
        bytes: (s.numTokens * table.cols * ((table.bf16 ? 2 : 4) + 4)) / table.shards.length,
      }),
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
  o: { hidden: number; eps: number; rows?: GPUBuffer; kernels?: KernelClass },
): Dispatch {
  const pipeline = pipelineOf(gpu, o.kernels ?? "cpu", "rmsNorm", {
    HIDDEN: o.hidden,
    EPS: o.eps,
    GATHER: o.rows ? 1 : 0,
  });
  return {
    label: "rms_norm",
    pipeline,
    bindGroup: gpu.bindGroup(pipeline, [step, x, weight, o.rows ?? x, out]),
    workgroups: (s) => [o.rows ? s.numRows : s.numTokens, 1, 1],
    cost: (s) => {
      const rows = o.rows ? s.numRows : s.numTokens;
      return { flops: 4 * rows * o.hidden, bytes: (8 * rows + 4) * o.hidden };
    },
  };
}

/**
 * y[:, shard cols] (+)= x · Wᵀ for every row shard of W. Each shard gets two dispatches,
 * the class's GEMV and its tiled kernel, and the step's M picks one (the other launches
 * no workgroups): the GEMV up to the class's `gemvMaxRows`. Both kernels of a class sum
 * every output over k in the same order, so a row's result does not depend on M or on
 * the other rows of the batch.
 */
export function matmul(
  gpu: Gpu,
  step: GPUBuffer,
  x: GPUBuffer,
  w: ShardedWeight,
  y: GPUBuffer,
  o: {
    accumulate?: boolean;
    mFromRows?: boolean;
    yStride?: number;
    yOffset?: number;
    kernels?: KernelClass;
  } = {},
): Dispatch[] {
  const cls = o.kernels ?? "cpu";
  const { gemvMaxRows } = kernelTable(cls);
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
    const launch = (op: "gemv" | "matmul", runs: (m: number) => boolean): Dispatch => {
      const v = kernelTable(cls).ops[op];
      const { tile, constants: tiling } = v.narrow?.find((t) => shard.rows <= t.maxN) ?? v;
      const pipeline = gpu.pipeline(v.kernel, { ...tiling, ...constants });
      return {
        label: op,
        pipeline,
        bindGroup: gpu.bindGroup(pipeline, [step, x, shard.buffer, y]),
        workgroups: (s) => {
          const m = rowsOf(s);
          if (!runs(m)) return [0, 0, 0];
          return [ceil(shard.rows, tile!.n), ceil(m, tile!.m), 1];
        },
        cost: (s) => {
          const [m, n, k] = [rowsOf(s), shard.rows, w.cols];
          const yBytes = m * n * 4 * (o.accumulate ? 2 : 1);
          return { flops: 2 * m * n * k, bytes: n * k * (w.bf16 ? 2 : 4) + m * k * 4 + yBytes };
        },
      };
    };
    return [
      launch("gemv", (m) => m <= gemvMaxRows),
      launch("matmul", (m) => m > gemvMaxRows),
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
  o: {
    heads: number;
    kvHeads: number;
    headDim: number;
    posScale: number;
    /** The cache holds f16 pairs packed in u32 (default f32). */
    kvF16?: boolean;
    kernels?: KernelClass;
  },
): Dispatch {
  const pipeline = pipelineOf(gpu, o.kernels ?? "cpu", "rotaryKv", {
    HQ: o.heads,
    HKV: o.kvHeads,
    D: o.headDim,
    POS_SCALE: o.posScale,
    KV_F16: o.kvF16 ? 1 : 0,
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
    cost: (s) => {
      const [q, kv] = [o.heads * o.headDim, o.kvHeads * o.headDim];
      const cache = 2 * kv * (o.kvF16 ? 2 : 4);
      return { flops: 3 * s.numTokens * (q + kv), bytes: s.numTokens * (8 * (q + kv) + cache) };
    },
  };
}

/**
 * Causal GQA attention through the block tables. A class with flash attention
 * kernels (engine/gpu/attention_gpu.ts) launches flash-decoding, the tiled
 * prefill kernel and their merge, and needs `decodeTiles`, `prefillTiles`,
 * `partials` and `layout`; otherwise one workgroup per (token, query head).
 */
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
    decodeTiles?: GPUBuffer;
    prefillTiles?: GPUBuffer;
    partials?: GPUBuffer;
  },
  o: {
    heads: number;
    kvHeads: number;
    headDim: number;
    blockSize: number;
    maxBlocks: number;
    /** The cache holds f16 pairs packed in u32 (default f32). */
    kvF16?: boolean;
    layout?: AttentionLayout;
    kernels?: KernelClass;
  },
): Dispatch[] {
  if (o.headDim > 256) throw new Error(`head_dim ${o.headDim} > 256 is not supported`);
  const cls = o.kernels ?? "cpu";
  const flash = kernelTable(cls).flashAttention;
  if (flash) {
    if (!o.layout || !b.decodeTiles || !b.prefillTiles || !b.partials) {
      throw new Error(`${cls}-class attention needs a layout and its work buffers`);
    }
    return attentionGpu(
      gpu,
      flash,
      {
        ...b,
        decodeTiles: b.decodeTiles,
        prefillTiles: b.prefillTiles,
        partials: b.partials,
      },
      { ...o, kvF16: o.kvF16 ?? false },
      o.layout,
    );
  }
  const pipeline = pipelineOf(gpu, cls, "attention", {
    HQ: o.heads,
    HKV: o.kvHeads,
    D: o.headDim,
    BLOCK: o.blockSize,
    MAX_BLOCKS: o.maxBlocks,
    SCALE: 1 / Math.sqrt(o.headDim),
    KV_F16: o.kvF16 ? 1 : 0,
  });
  return [{
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
    // q·k and p·v per attended key and query head; each token's keys and values read
    // once per KV head.
    cost: (s) => {
      const keys = s.attendedKeys ?? 0;
      const kvBytes = keys * o.kvHeads * o.headDim * 2 * (o.kvF16 ? 2 : 4);
      return {
        flops: 4 * keys * o.heads * o.headDim,
        bytes: kvBytes + s.numTokens * o.heads * o.headDim * 8,
      };
    },
  }];
}

/** out = silu(gate) ⊙ up from the fused gate|up activations. */
export function siluMul(
  gpu: Gpu,
  step: GPUBuffer,
  gateUp: GPUBuffer,
  out: GPUBuffer,
  intermediate: number,
  o: { kernels?: KernelClass } = {},
): Dispatch {
  const pipeline = pipelineOf(gpu, o.kernels ?? "cpu", "siluMul", { I: intermediate });
  return {
    label: "silu_mul",
    pipeline,
    bindGroup: gpu.bindGroup(pipeline, [step, gateUp, out]),
    workgroups: (s) => [ceil(intermediate, 64), s.numTokens, 1],
    cost: (s) => ({
      flops: 5 * s.numTokens * intermediate,
      bytes: 12 * s.numTokens * intermediate,
    }),
  };
}

/** ids[r] = argmax of logits row r over the first `valid` entries. */
export function argmax(
  gpu: Gpu,
  step: GPUBuffer,
  logits: GPUBuffer,
  ids: GPUBuffer,
  o: { valid: number; stride: number; kernels?: KernelClass },
): Dispatch {
  const pipeline = pipelineOf(gpu, o.kernels ?? "cpu", "argmax", {
    VALID: o.valid,
    STRIDE: o.stride,
  });
  return {
    label: "argmax",
    pipeline,
    bindGroup: gpu.bindGroup(pipeline, [step, logits, ids]),
    workgroups: (s) => [s.numLogitRows, 1, 1],
    cost: (s) => ({ flops: s.numLogitRows * o.valid, bytes: 4 * s.numLogitRows * o.valid }),
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
