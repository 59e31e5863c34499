/**
 * GPU-class attention: flash attention over fixed pieces of the context for
 * every token. `attention_piece.wgsl` runs one workgroup per (piece, tile of
 * tokens, KV group), staging the piece's K and V once for all the group's
 * query heads and all the tile's tokens, and writes each row's softmax
 * partials over the piece; `attention_merge.wgsl` merges a token's pieces in
 * key order with log-sum-exp.
 *
 * Two launches of the piece kernel: decode rows (a sequence with one token in
 * the step) as one-token tiles, 64 invocations (flash-decoding: the context
 * split across workgroups, one workgroup serving every query head of a KV
 * group); prefill chunks as tiles of `tileTokens` consecutive tokens, 256
 * invocations. Pieces sit at fixed absolute positions and have a size fixed at
 * load, and every row's arithmetic is the same whatever tile it is in, so a
 * token's output is bit-identical whether it is decoded or prefilled, and
 * whatever else is in the step. {@linkcode attentionWork} lists the tiles.
 *
 * @module
 */
import type { Gpu } from "./device.ts";
import type { Dispatch } from "./kernels.ts";
import type { FlashAttentionKernels } from "./registry.ts";

/** Keys per sub-tile (KT in attention_tile.wgsl) and output elements per invocation (ACC). */
const KT = 16;
const ACC = 32;
const DECODE_WG = 64;
const PREFILL_WG = 256;
/** Pieces of the longest context stay at most this many. */
const MAX_PIECES = 64;
/** The partials buffer stays within this many bytes (and one storage binding). */
const MAX_PARTIAL_BYTES = 256 * 1024 * 1024;

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

/** How GPU-class attention is cut, fixed at load from the model and capacities, never from a batch. */
export interface AttentionLayout {
  /** Keys per piece (256 · 2^k). */
  readonly piece: number;
  /** Pieces of the longest context: ceil(maxBlocks · blockSize / piece). */
  readonly pieces: number;
  /** Tokens whose partials the buffer holds (the step's token budget). */
  readonly maxTokens: number;
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
  return 4 * (KT * (headDim + 1) + rows * KT + 5 * rows + 4);
}

/** Floats of the partials of `maxTokens` tokens: (T, HQ, pieces, D + 2). */
function partialFloats(a: AttentionShape, maxTokens: number, pieces: number): number {
  return maxTokens * a.heads * pieces * (a.headDim + 2);
}

/**
 * Chooses the pieces and tiles for a model on a device. Pieces are 256 keys,
 * doubled while the longest context would need more than 64 of them or the
 * partials of `maxTokens` tokens would not fit 256 MiB and one storage binding.
 */
export function attentionLayout(
  gpu: Gpu,
  a: AttentionShape,
  maxTokens: number,
): AttentionLayout {
  const D = a.headDim;
  if (D > 256 || D % 2 !== 0) throw new Error(`head_dim ${D} must be even and ≤ 256`);
  const group = a.heads / a.kvHeads;
  const limit = gpu.device.limits.maxComputeWorkgroupStorageSize;
  const decodeHeads = largestDivisor(group, Math.min(DECODE_WG, Math.floor(DECODE_WG * ACC / D)));
  const maxRows = Math.min(PREFILL_WG, Math.floor(PREFILL_WG * ACC / D));
  const prefillHeads = largestDivisor(group, maxRows);
  let tileTokens = Math.max(1, Math.floor(maxRows / prefillHeads));
  while (tileTokens > 1 && sharedBytes(D, tileTokens * prefillHeads) > limit) tileTokens--;
  const need = sharedBytes(D, Math.max(decodeHeads, tileTokens * prefillHeads));
  if (need > limit) {
    throw new Error(
      `GPU-class attention at head_dim ${D} needs ${need} bytes of workgroup memory; ` +
        `this device allows ${limit}: use --kernels cpu`,
    );
  }
  const positions = a.maxBlocks * a.blockSize;
  const budget = Math.min(MAX_PARTIAL_BYTES, gpu.maxBinding);
  const fits = (piece: number) => {
    const pieces = Math.ceil(positions / piece);
    return pieces <= MAX_PIECES && 4 * partialFloats(a, maxTokens, pieces) <= budget;
  };
  let piece = 256;
  while (piece < positions && !fits(piece)) piece *= 2;
  return {
    piece,
    pieces: Math.ceil(positions / piece),
    maxTokens,
    decodeHeads,
    prefillHeads,
    tileTokens,
  };
}

/** The attention work of one step: decode rows and prefill chunks as tiles. */
export interface AttentionWork {
  /** (DR, 2) token index and 1 for each decode row. */
  readonly decodeTiles: Uint32Array;
  /** (tiles, 2) first token index and token count of each prefill tile. */
  readonly prefillTiles: Uint32Array;
  /** Most pieces a decode row, or a prefill tile's last token, spans. */
  readonly decodePieces: number;
  readonly prefillPieces: number;
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
  const prefill: number[] = [];
  let decodePieces = 0;
  let prefillPieces = 0;
  let t = 0;
  const piecesTo = (pos: number) => Math.floor(pos / layout.piece) + 1;
  for (const { start, count } of seqs) {
    if (count === 1) {
      decode.push(t, 1);
      decodePieces = Math.max(decodePieces, piecesTo(start));
    } else if (count > 1) {
      for (let i = 0; i < count; i += layout.tileTokens) {
        prefill.push(t + i, Math.min(layout.tileTokens, count - i));
      }
      prefillPieces = Math.max(prefillPieces, piecesTo(start + count - 1));
    }
    t += count;
  }
  return {
    decodeTiles: Uint32Array.from(decode),
    prefillTiles: Uint32Array.from(prefill),
    decodePieces,
    prefillPieces,
  };
}

/** Most prefill tiles a step of `maxTokens` tokens in `maxSeqs` sequences can have. */
export function maxPrefillTiles(layout: AttentionLayout, maxTokens: number, maxSeqs: number) {
  return Math.ceil(maxTokens / layout.tileTokens) + maxSeqs;
}

/** Floats of the partials buffer: (maxTokens, HQ, pieces, D + 2). */
export function partialsSize(a: AttentionShape, layout: AttentionLayout): number {
  return partialFloats(a, layout.maxTokens, layout.pieces);
}

/** The step's buffers GPU-class attention reads and writes. */
export interface AttentionBuffers {
  readonly qkv: GPUBuffer; // (T, (HQ + 2·HKV)·D)
  readonly positions: GPUBuffer; // (T) u32
  readonly seqOf: GPUBuffer; // (T) u32
  readonly blockTable: GPUBuffer; // (S, maxBlocks) u32
  readonly kCache: GPUBuffer; // (slots, HKV, D) f32 or (slots, HKV, D/2) f16 pairs
  readonly vCache: GPUBuffer; // as kCache
  readonly decodeTiles: GPUBuffer; // (S, 2) u32
  readonly prefillTiles: GPUBuffer; // (tiles, 2) u32
  readonly partials: GPUBuffer; // (T, HQ, pieces, D + 2) f32: Σ p·v, m, l of each piece
  readonly out: GPUBuffer; // (T, HQ·D)
}

/** Causal GQA attention through the block tables: decode rows, prefill tiles, then the merge. */
export function attentionGpu(
  gpu: Gpu,
  kernels: FlashAttentionKernels,
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
    NP: layout.pieces,
  };
  const group = a.heads / a.kvHeads;
  const cache = [b.qkv, b.positions, b.seqOf, b.blockTable, b.kCache, b.vCache];
  const decode = gpu.pipeline(kernels.piece, {
    ...common,
    HEADS: layout.decodeHeads,
    ROWS: layout.decodeHeads,
    WG: DECODE_WG,
  });
  const prefill = gpu.pipeline(kernels.piece, {
    ...common,
    HEADS: layout.prefillHeads,
    ROWS: layout.tileTokens * layout.prefillHeads,
    WG: PREFILL_WG,
  });
  const merge = gpu.pipeline(kernels.merge, {
    HQ: a.heads,
    D: a.headDim,
    PIECE: layout.piece,
    NP: layout.pieces,
  });
  return [
    {
      label: "attention_decode",
      pipeline: decode,
      bindGroup: gpu.bindGroup(decode, [...cache, b.decodeTiles, b.partials]),
      workgroups: (s) => [
        s.decodePieces ?? 0,
        s.numDecodeRows ?? 0,
        a.kvHeads * (group / layout.decodeHeads),
      ],
    },
    {
      label: "attention_prefill",
      pipeline: prefill,
      bindGroup: gpu.bindGroup(prefill, [...cache, b.prefillTiles, b.partials]),
      workgroups: (s) => [
        s.prefillPieces ?? 0,
        s.numPrefillTiles ?? 0,
        a.kvHeads * (group / layout.prefillHeads),
      ],
    },
    {
      label: "attention_merge",
      pipeline: merge,
      bindGroup: gpu.bindGroup(merge, [b.positions, b.partials, b.out]),
      workgroups: (s) => [a.heads, s.numTokens, 1],
    },
  ];
}
