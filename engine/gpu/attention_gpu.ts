/**
 * GPU-class attention: flash-decoding for decode rows (`attention_decode.wgsl`
 * then `attention_merge.wgsl`) and a tiled kernel for prefill chunks
 * (`attention_prefill.wgsl`). Both run the same per-row arithmetic
 * (`attention_tile.wgsl`, `attention_lse.wgsl`): the context is cut into
 * pieces of a fixed number of keys at fixed absolute positions, each piece's
 * softmax partials are merged in key order. So a token's output is
 * bit-identical whether it is decoded or prefilled, and whatever else is in the
 * step.
 *
 * Which kernel a token takes: a sequence with one token in the step is a
 * decode row; a sequence with more is cut into tiles of `tileTokens`
 * consecutive tokens. {@linkcode attentionWork} computes both lists on the CPU.
 *
 * @module
 */
import tileSrc from "../../shaders/attention_tile.wgsl" with { type: "text" };
import lseSrc from "../../shaders/attention_lse.wgsl" with { type: "text" };
import decodeSrc from "../../shaders/attention_decode.wgsl" with { type: "text" };
import mergeSrc from "../../shaders/attention_merge.wgsl" with { type: "text" };
import prefillSrc from "../../shaders/attention_prefill.wgsl" with { type: "text" };
import type { Gpu, Kernel } from "./device.ts";
import type { Dispatch, StepShape } from "./kernels.ts";

const KERNELS = {
  decode: { name: "attention_decode", source: tileSrc + decodeSrc },
  merge: { name: "attention_merge", source: lseSrc + mergeSrc },
  prefill: { name: "attention_prefill", source: tileSrc + lseSrc + prefillSrc },
} as const satisfies Record<string, Kernel>;

/** Keys per sub-tile (KT in attention_tile.wgsl) and output elements per invocation (ACC). */
const KT = 16;
const ACC = 32;
const DECODE_WG = 64;
const PREFILL_WG = 256;
/** Pieces of the longest context stay at most this many: it sizes the partials buffer. */
const MAX_PIECES = 64;

/** The model's attention shape and the KV cache's. */
export interface AttentionShape {
  readonly heads: number;
  readonly kvHeads: number;
  readonly headDim: number;
  readonly blockSize: number;
  /** Block-table row length; maxBlocks · blockSize bounds a position. */
  readonly maxBlocks: number;
  /** The cache holds f16 pairs packed in u32 (else f32). */
  readonly kvF16: boolean;
}

/** How GPU-class attention is cut, fixed at load from the model and the cache, never from a batch. */
export interface AttentionLayout {
  /** Keys per flash-decoding piece (a multiple of 256). */
  readonly piece: number;
  /** Pieces of the longest context: ceil(maxBlocks · blockSize / piece) ≤ 64. */
  readonly pieces: number;
  /** Query heads per decode workgroup (a divisor of heads / kvHeads). */
  readonly decodeHeads: number;
  /** Query heads per prefill workgroup, and tokens per prefill tile. */
  readonly prefillHeads: number;
  readonly tileTokens: number;
}

/** Largest divisor of n that is at most cap (at least 1). */
function largestDivisor(n: number, cap: number): number {
  for (let d = Math.min(n, cap); d > 1; d--) if (n % d === 0) return d;
  return 1;
}

/** Bytes of shared memory a workgroup of `rows` rows uses (see attention_tile.wgsl). */
function sharedBytes(headDim: number, rows: number): number {
  return 4 * (KT * (headDim + 1) + rows * KT + 6 * rows + 4);
}

/** Chooses the pieces and tiles for a model on a device. */
export function attentionLayout(gpu: Gpu, a: AttentionShape): AttentionLayout {
  const D = a.headDim;
  if (D > 256 || D % 2 !== 0) throw new Error(`head_dim ${D} must be even and ≤ 256`);
  const group = a.heads / a.kvHeads;
  const limit = gpu.device.limits.maxComputeWorkgroupStorageSize;
  const decodeHeads = largestDivisor(group, Math.min(DECODE_WG, Math.floor(DECODE_WG * ACC / D)));
  const prefillHeads = largestDivisor(
    group,
    Math.min(PREFILL_WG, Math.floor(PREFILL_WG * ACC / D)),
  );
  const maxRows = Math.min(PREFILL_WG, Math.floor(PREFILL_WG * ACC / D));
  let tileTokens = Math.max(1, Math.floor(maxRows / prefillHeads));
  while (tileTokens > 1 && sharedBytes(D, tileTokens * prefillHeads) > limit) tileTokens--;
  if (sharedBytes(D, Math.max(decodeHeads, tileTokens * prefillHeads)) > limit) {
    throw new Error(
      `GPU-class attention at head_dim ${D} needs ${
        sharedBytes(D, tileTokens * prefillHeads)
      } bytes of workgroup memory; this device allows ${limit}: use --kernels cpu`,
    );
  }
  const positions = a.maxBlocks * a.blockSize;
  let piece = 256;
  while (Math.ceil(positions / piece) > MAX_PIECES) piece *= 2;
  return {
    piece,
    pieces: Math.ceil(positions / piece),
    decodeHeads,
    prefillHeads,
    tileTokens,
  };
}

/** The attention work of one step: which tokens are decode rows, and the prefill tiles. */
export interface AttentionWork {
  /** (DR) token index of each decode row. */
  readonly decodeRows: Uint32Array;
  /** (tiles, 2) first token index and token count of each prefill tile. */
  readonly tiles: Uint32Array;
  /** Most pieces any decode row spans. */
  readonly decodePieces: number;
}

/**
 * Splits a step's sequences, given as (first position, token count) in token
 * order: one-token sequences become decode rows, longer ones tiles of
 * `layout.tileTokens` tokens.
 */
export function attentionWork(
  seqs: readonly { readonly start: number; readonly count: number }[],
  layout: AttentionLayout,
): AttentionWork {
  const decode: number[] = [];
  const tiles: number[] = [];
  let decodePieces = 0;
  let t = 0;
  for (const { start, count } of seqs) {
    if (count === 1) {
      decode.push(t);
      decodePieces = Math.max(decodePieces, Math.floor(start / layout.piece) + 1);
    } else {
      for (let i = 0; i < count; i += layout.tileTokens) {
        tiles.push(t + i, Math.min(layout.tileTokens, count - i));
      }
    }
    t += count;
  }
  return { decodeRows: Uint32Array.from(decode), tiles: Uint32Array.from(tiles), decodePieces };
}

/** Most prefill tiles a step of `maxTokens` tokens in `maxSeqs` sequences can have. */
export function maxAttentionTiles(layout: AttentionLayout, maxTokens: number, maxSeqs: number) {
  return Math.ceil(maxTokens / layout.tileTokens) + maxSeqs;
}

/** Floats of the flash-decoding partials for `maxDecodeRows` decode rows: (DR, HQ, NP, D + 2). */
export function partialsSize(
  a: AttentionShape,
  layout: AttentionLayout,
  maxDecodeRows: number,
): number {
  return maxDecodeRows * a.heads * layout.pieces * (a.headDim + 2);
}

/** The step's buffers GPU-class attention reads and writes. */
export interface AttentionBuffers {
  readonly qkv: GPUBuffer; // (T, (HQ + 2·HKV)·D)
  readonly positions: GPUBuffer; // (T) u32
  readonly seqOf: GPUBuffer; // (T) u32
  readonly blockTable: GPUBuffer; // (S, maxBlocks) u32
  readonly kCache: GPUBuffer; // (slots, HKV, D) f32 or f16 pairs
  readonly vCache: GPUBuffer; // (slots, HKV, D)
  readonly decodeRows: GPUBuffer; // (DR) u32
  readonly tiles: GPUBuffer; // (tiles, 2) u32
  readonly partials: GPUBuffer; // (DR, HQ, NP, D + 2) f32: Σ p·v, m, l of each piece
  readonly out: GPUBuffer; // (T, HQ·D)
}

/** The step sizes GPU-class attention launches by (absent: none). */
export interface AttentionStepShape extends StepShape {
  readonly numDecodeRows?: number;
  readonly numPrefillTiles?: number;
  readonly decodePieces?: number;
}

/** Causal GQA attention through the block tables: flash-decoding, its merge, the prefill tiles. */
export function attentionGpu(
  gpu: Gpu,
  b: AttentionBuffers,
  a: AttentionShape,
  layout: AttentionLayout,
): Dispatch[] {
  const common = {
    HQ: a.heads,
    HKV: a.kvHeads,
    D: a.headDim,
    BLOCK: a.blockSize,
    MAX_BLOCKS: a.maxBlocks,
    SCALE: 1 / Math.sqrt(a.headDim),
    KV_F16: a.kvF16 ? 1 : 0,
    PIECE: layout.piece,
  };
  const group = a.heads / a.kvHeads;
  const cache = [b.qkv, b.positions, b.seqOf, b.blockTable, b.kCache, b.vCache];
  const decode = gpu.pipeline(KERNELS.decode, {
    ...common,
    HEADS: layout.decodeHeads,
    ROWS: layout.decodeHeads,
    WG: DECODE_WG,
    NP: layout.pieces,
  });
  const merge = gpu.pipeline(KERNELS.merge, {
    HQ: a.heads,
    D: a.headDim,
    PIECE: layout.piece,
    NP: layout.pieces,
  });
  const prefill = gpu.pipeline(KERNELS.prefill, {
    ...common,
    HEADS: layout.prefillHeads,
    ROWS: layout.tileTokens * layout.prefillHeads,
    WG: PREFILL_WG,
  });
  const s = (shape: StepShape) => shape as AttentionStepShape;
  return [
    {
      label: "attention_decode",
      pipeline: decode,
      bindGroup: gpu.bindGroup(decode, [...cache, b.decodeRows, b.partials]),
      workgroups: (shape) => [
        s(shape).decodePieces ?? 0,
        s(shape).numDecodeRows ?? 0,
        a.kvHeads * (group / layout.decodeHeads),
      ],
    },
    {
      label: "attention_merge",
      pipeline: merge,
      bindGroup: gpu.bindGroup(merge, [b.positions, b.decodeRows, b.partials, b.out]),
      workgroups: (shape) => [a.heads, s(shape).numDecodeRows ?? 0, 1],
    },
    {
      label: "attention_prefill",
      pipeline: prefill,
      bindGroup: gpu.bindGroup(prefill, [...cache, b.tiles, b.out]),
      workgroups: (shape) => [
        s(shape).numPrefillTiles ?? 0,
        a.kvHeads * (group / layout.prefillHeads),
        1,
      ],
    },
  ];
}
