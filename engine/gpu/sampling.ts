/**
 * Sampling on the GPU (`shaders/sample.wgsl`): what the host packs for each
 * logit row (mode, temperature, top-k, top-p, min-p, the uniform draw, and
 * the row's sparse logit edits), and the op that dispatches the kernel.
 *
 * The edits carry everything the CPU sampler (`engine/sampler.ts`) does to a
 * row before truncation, in vLLM's order: logit bias, end ids masked under
 * min_tokens, repetition penalty over prompt and output ids, presence and
 * frequency penalties over output ids. The uniform number comes from the same
 * key as the CPU sampler's (seed, token index), so the GPU draws from the same
 * distribution with the same seeded reproducibility.
 *
 * @module
 */
import sampleSrc from "../../shaders/sample.wgsl" with { type: "text" };
import type { Gpu } from "./device.ts";
import type { Dispatch } from "./kernels.ts";
import type { SamplingParams } from "../types.ts";

const KERNEL = { name: "sample", source: sampleSrc };

/** Temperatures below this are greedy (as in the CPU sampler and vLLM). */
export const GREEDY_EPSILON = 1e-5;
/** What a masked logit has subtracted (a finite "minus infinity": WGSL may not keep infinities). */
const MASK = 3e38;
/** Bytes of one `Row` and one `Edit` of sample.wgsl. */
export const ROW_BYTES = 48;
/** `mask_row` of a row without a grammar mask. */
const NO_MASK = 0xffffffff;
export const EDIT_BYTES = 16;

/** One logit edit: logit' = rep(logit + bias) − sub, rep(v) = v / rep for v > 0 else v · rep. */
export interface LogitEdit {
  readonly id: number;
  readonly bias: number;
  readonly rep: number;
  readonly sub: number;
}

/** How the GPU picks a row's token. */
export interface RowSampling {
  readonly greedy: boolean;
  readonly temperature: number;
  /** 0: off. */
  readonly topK: number;
  /** 1: off. */
  readonly topP: number;
  /** 0: off. */
  readonly minP: number;
  /** Uniform in [0, 1) from the request's key (unused when greedy). */
  readonly u: number;
  readonly edits: readonly LogitEdit[];
  /**
   * A grammar's allowed ids as a bitset over the vocabulary (bit i of word i >> 5),
   * filled by the time the step's masks are ready (engine/grammar.ts).
   */
  readonly mask?: Uint32Array;
}

/** Most logit edits (bias, masks, penalties) one step samples with on the device. */
export const SAMPLE_EDIT_CAPACITY = 1 << 16;

/** The row a "sample" sequence gets without sampling options: the greedy id. */
export const GREEDY_ROW: RowSampling = {
  greedy: true,
  temperature: 0,
  topK: 0,
  topP: 1,
  minP: 0,
  u: 0,
  edits: [],
};

/** What `rowSampling` needs of a sequence besides its sampling parameters. */
export interface RowContext {
  readonly promptIds: readonly number[];
  readonly outputIds: readonly number[];
  /** Ids masked while fewer than min_tokens were generated (the engine's eos ids). */
  readonly eosTokenIds: readonly number[];
  readonly validVocab: number;
}

/**
 * The row a sequence samples with, equivalent to the CPU sampler's processing.
 *
 * @example
 * ```ts
 * import { rowSampling } from "./sampling.ts";
 * import { DEFAULT_SAMPLING } from "../types.ts";
 * const row = rowSampling({ ...DEFAULT_SAMPLING, frequencyPenalty: 0.5 }, {
 *   promptIds: [5], outputIds: [7, 7], eosTokenIds: [2], validVocab: 100,
 * }, 0.25);
 * row.edits; // [{ id: 7, bias: 0, rep: 1, sub: 1 }]
 * ```
 */
export function rowSampling(p: SamplingParams, ctx: RowContext, u: number): RowSampling {
  const edits = new Map<number, { bias: number; rep: number; sub: number }>();
  const edit = (id: number) => {
    let e = edits.get(id);
    if (!e) edits.set(id, e = { bias: 0, rep: 1, sub: 0 });
    return e;
  };
  const valid = (id: number) => Number.isInteger(id) && id >= 0 && id < ctx.validVocab;
  for (const [id, bias] of p.logitBias) if (valid(id)) edit(id).bias += bias;
  if (ctx.outputIds.length < p.minTokens) {
    for (const id of [...ctx.eosTokenIds, ...p.stopTokenIds]) if (valid(id)) edit(id).sub = MASK;
  }
  if (p.repetitionPenalty !== 1) {
    for (const id of ctx.promptIds) if (valid(id)) edit(id).rep = p.repetitionPenalty;
    for (const id of ctx.outputIds) if (valid(id)) edit(id).rep = p.repetitionPenalty;
  }
  if (p.presencePenalty !== 0 || p.frequencyPenalty !== 0) {
    const counts = new Map<number, number>();
    for (const id of ctx.outputIds) counts.set(id, (counts.get(id) ?? 0) + 1);
    for (const [id, n] of counts) {
      if (!valid(id)) continue;
      const e = edit(id);
      if (e.sub !== MASK) e.sub += p.frequencyPenalty * n + p.presencePenalty;
    }
  }
  return {
    greedy: p.temperature < GREEDY_EPSILON,
    temperature: p.temperature,
    topK: p.topK,
    topP: p.topP,
    minP: p.minP,
    u,
    edits: [...edits].map(([id, e]) => ({ id, ...e })),
  };
}

/**
 * Writes rows (null: sampled on the CPU, skipped by the kernel) and their edits
 * into host staging arrays; returns how many edits were written, or -1 when
 * they do not fit `editCapacity`.
 */
export function packRows(
  rows: readonly (RowSampling | null)[],
  rowData: ArrayBuffer,
  editData: ArrayBuffer,
  editCapacity: number,
): number {
  const ru = new Uint32Array(rowData);
  const rf = new Float32Array(rowData);
  const eu = new Uint32Array(editData);
  const ef = new Float32Array(editData);
  let e = 0;
  let masked = 0; // masks go to the mask buffer in row order
  rows.forEach((row, r) => {
    if (e < 0) return;
    const o = r * (ROW_BYTES / 4);
    if (!row) {
      ru.fill(0, o, o + ROW_BYTES / 4);
      return;
    }
    if (e + row.edits.length > editCapacity) {
      e = -1;
      return;
    }
    ru[o] = row.greedy ? 1 : 2;
    rf[o + 1] = row.greedy ? 1 : row.temperature;
    ru[o + 2] = row.topK > 0 ? row.topK : 0;
    rf[o + 3] = row.topP;
    rf[o + 4] = row.minP;
    rf[o + 5] = row.u;
    ru[o + 6] = e;
    ru[o + 7] = row.edits.length;
    ru[o + 8] = row.mask ? masked++ : NO_MASK;
    for (const ed of row.edits) {
      const q = e * (EDIT_BYTES / 4);
      eu[q] = ed.id;
      ef[q + 1] = ed.bias;
      ef[q + 2] = ed.rep;
      ef[q + 3] = ed.sub;
      e++;
    }
  });
  return e;
}

/** Words of one grammar mask for logit rows of `stride` ids. */
export function maskWords(stride: number): number {
  return Math.ceil(stride / 32);
}

/**
 * Copies the masks of the rows that have one, in row order, into `out` (the mask
 * buffer's host staging); returns how many words were written.
 */
export function packMasks(
  rows: readonly (RowSampling | null)[],
  out: Uint32Array,
  words: number,
): number {
  let n = 0;
  for (const row of rows) {
    if (!row?.mask) continue;
    out.set(row.mask.subarray(0, words), n);
    n += words;
  }
  return n;
}

/** ids[r] = the token sampled from logits row r per rows[r] (rows with mode 0 are left alone). */
export function sampleOp(
  gpu: Gpu,
  step: GPUBuffer,
  b: { logits: GPUBuffer; rows: GPUBuffer; edits: GPUBuffer; ids: GPUBuffer; masks: GPUBuffer },
  o: { valid: number; stride: number },
): Dispatch {
  const pipeline = gpu.pipeline(KERNEL, {
    VALID: o.valid,
    STRIDE: o.stride,
    MASK_WORDS: maskWords(o.stride),
  });
  return {
    label: "sample",
    pipeline,
    bindGroup: gpu.bindGroup(pipeline, [step, b.logits, b.rows, b.edits, b.ids, b.masks]),
    workgroups: (s) => [s.numLogitRows, 1, 1],
  };
}
