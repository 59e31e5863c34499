/**
 * The seam between the engine and a compute backend. A runner holds the
 * model's weights and KV pool in its own layout and computes one scheduled
 * step: WebGPU (`engine/model_runner.ts`) or WebAssembly SIMD on the CPU
 * (`engine/backends/wasm/`). The engine, scheduler and sampler know nothing
 * else about the backend.
 *
 * @module
 */
import { GREEDY_ROW, type RowSampling } from "./gpu/sampling.ts";
import type { KernelProfile } from "./gpu/profile.ts";

/** Capacities fixed when a runner is created; nothing is allocated per step. */
export interface RunnerOptions {
  /** Most tokens computed in one step (T). */
  readonly maxNumBatchedTokens: number;
  /** Most sequences in one step (S). */
  readonly maxNumSeqs: number;
  /** KV blocks in the pool, and tokens per block. */
  readonly numBlocks: number;
  readonly blockSize: number;
  /** Block-table row length: ceil(maxModelLen / blockSize). */
  readonly maxBlocksPerSeq: number;
  /** Logits at ids ≥ this are padding and never chosen by argmax. */
  readonly validVocab: number;
}

/** One sequence's share of a step. */
export interface StepSeq {
  /** The ids computed in this step, at positions start, start+1, ... */
  readonly tokens: ArrayLike<number>;
  readonly start: number;
  /** Physical KV blocks; must cover positions up to start + tokens.length − 1. */
  readonly blockTable: readonly number[];
  /**
   * What the step returns for this sequence: nothing; the next token (logits or
   * argmax of the last position); or final-normed hidden states of the last or
   * of every position (embeddings).
   */
  readonly output: "none" | "sample" | "hidden-last" | "hidden-all";
  /**
   * How a "sample" row picks its token on a runner with `deviceSampling` (ignored
   * otherwise, and when the step asks for every row's logits): a draw on the device,
   * or `"logits"` to read the row's logits back for the CPU sampler. Without it the
   * row gets the greedy id.
   */
  readonly sampling?: RowSampling | "logits";
  /**
   * The step before this one (still in flight when this one was launched) drew this
   * sequence's first token for its sample row `fromSampleRow`: the runner feeds that id
   * from the device, and `tokens[0]` is only a placeholder. Only on a runner whose
   * `feedsNextStep()` said so for that step.
   */
  readonly fromSampleRow?: number;
}

/** What a step returns, in the order of the step's sequences. */
export interface StepResult {
  /** Sample rows (one per "sample" sequence): argmax ids when logits were not asked for. */
  readonly ids?: Uint32Array;
  /** Sample rows' logits: (sampleRows, vocab), or only the rows `logitIndex` names. */
  readonly logits?: Float32Array;
  /**
   * With device sampling: for each sample row, its row in `logits` (the rows that
   * asked for `"logits"`), or −1 when the device chose its id.
   */
  readonly logitIndex?: Int32Array;
  /** Hidden rows (one per "hidden-last", one per token of "hidden-all"): (rows, hidden). */
  readonly hidden?: Float32Array;
}

/** What limits a backend puts on the engine's sizes, known before weights load. */
export interface BackendLimits {
  /** Largest KV pool of one layer's K (or V), in bytes (a storage binding, a wasm memory). */
  readonly maxKvBytesPerLayer: number;
  /** Default KV pool budget in bytes when the user sets none. */
  readonly defaultKvBytes: number;
  /** Most logit rows one step can hold: caps the sequences per step. */
  readonly maxLogitRows: number;
  /** Bytes per cached key or value element (default 4, f32; 2 for an f16 cache). */
  readonly kvBytesPerValue?: number;
}

/** A model on a compute backend, with its step buffers and KV pool. */
export interface Runner {
  /** Which backend this is, for logs and benchmarks ("webgpu: llvmpipe …", "wasm: 2 threads"). */
  readonly description: string;
  readonly options: RunnerOptions;
  /** Bytes of the KV pool. */
  readonly kvBytes: number;
  /** Bytes of the weights as the backend holds them. */
  readonly weightBytes: number;
  /** Samples rows on the device from `StepSeq.sampling` (only ids come back). */
  readonly deviceSampling?: boolean;
  /**
   * Called right after `step()` (whose choice is made before it first awaits): whether that
   * step leaves every sample row's id on the device, so the next step may be launched at
   * once with `fromSampleRow` inputs while this one runs. Absent: steps run one at a time.
   */
  feedsNextStep?(): boolean;
  /**
   * Runs one forward step over the scheduled sequences. Sample rows get argmax
   * ids, or their full logits when `wantLogits` (for the CPU sampler).
   */
  step(
    seqs: readonly StepSeq[],
    wantLogits: boolean,
    /** Resolves once the `mask`s of this step's rows are filled (device sampling only). */
    masksReady?: Promise<unknown>,
  ): Promise<StepResult>;
  /** Per-kernel time so far, when the backend was asked to profile (engine/gpu/profile.ts). */
  kernelProfile?(): KernelProfile | undefined;
  /** Forgets the profile so far. */
  resetProfile?(): void;
  /** Releases the weights, the KV pool and the step buffers. */
  destroy(): void;
}

/** Where a step's tokens and output rows sit, as both runners lay them out. */
export interface StepLayout {
  /** Tokens in the step (T). */
  readonly numTokens: number;
  /** Token index of each sample row, in the order of the step's "sample" sequences (L). */
  readonly sampleRows: readonly number[];
  /** Token index of each hidden row, after the sample rows in the output (R − L). */
  readonly hiddenRows: readonly number[];
  /** Tokens fed from the previous step: token index, then that step's sample row. */
  readonly fed: readonly (readonly [token: number, row: number])[];
}

/**
 * Checks a step against the runner's capacities (`limits`: its logit and output rows) and
 * writes each token's id, position,
 * KV slot (`blockTable[pos / B] * B + pos % B`) and block-table row into `out`
 * (arrays of at least T entries).
 *
 * @example
 * ```ts
 * const o = {
 *   maxNumBatchedTokens: 8, maxNumSeqs: 2, numBlocks: 4, blockSize: 2,
 *   maxBlocksPerSeq: 2, validVocab: 100,
 * };
 * const out = { ids: new Uint32Array(8), positions: new Uint32Array(8), slots: new Uint32Array(8), seqOf: new Uint32Array(8) };
 * const layout = layoutStep([{ tokens: [5, 6, 7], start: 0, blockTable: [3, 1], output: "sample" }], o, out);
 * console.log(layout.sampleRows, [...out.slots.subarray(0, 3)]); // [2] [6, 7, 2]
 * ```
 */
export function layoutStep(
  seqs: readonly StepSeq[],
  o: RunnerOptions,
  out: { ids: Uint32Array; positions: Uint32Array; slots: Uint32Array; seqOf: Uint32Array },
  limits?: { readonly maxLogitRows: number; readonly maxRows: number },
): StepLayout {
  const T = seqs.reduce((n, s) => n + s.tokens.length, 0);
  if (T > o.maxNumBatchedTokens) throw new Error(`step has ${T} tokens > ${o.maxNumBatchedTokens}`);
  if (seqs.length > o.maxNumSeqs) {
    throw new Error(`step has ${seqs.length} sequences > ${o.maxNumSeqs}`);
  }
  const sampleRows: number[] = [];
  const hiddenRows: number[] = [];
  const fed: [number, number][] = [];
  let t = 0;
  seqs.forEach((s, si) => {
    if (s.blockTable.length > o.maxBlocksPerSeq) {
      throw new Error("block table longer than maxBlocksPerSeq");
    }
    const n = s.tokens.length;
    if (s.fromSampleRow !== undefined) fed.push([t, s.fromSampleRow]);
    for (let i = 0; i < n; i++, t++) {
      const pos = s.start + i;
      const block = s.blockTable[Math.floor(pos / o.blockSize)];
      if (block === undefined) throw new Error(`no KV block for position ${pos}`);
      if (block >= o.numBlocks) throw new Error(`KV block ${block} ≥ ${o.numBlocks}`);
      out.ids[t] = i === 0 && s.fromSampleRow !== undefined ? 0 : s.tokens[i]!;
      out.positions[t] = pos;
      out.slots[t] = block * o.blockSize + (pos % o.blockSize);
      out.seqOf[t] = si;
      const last = i === n - 1;
      if (s.output === "sample" && last) sampleRows.push(t);
      if (s.output === "hidden-all" || (s.output === "hidden-last" && last)) hiddenRows.push(t);
    }
  });
  const L = sampleRows.length;
  const R = L + hiddenRows.length;
  if (limits && L > limits.maxLogitRows) {
    throw new Error(`step has ${L} sample rows > ${limits.maxLogitRows}`);
  }
  if (limits && R > limits.maxRows) {
    throw new Error(`step has ${R} output rows > ${limits.maxRows}`);
  }
  return { numTokens: T, sampleRows, hiddenRows, fed };
}

/**
 * How a device-sampling runner treats each "sample" row of a step, in order: the
 * row's draw (the greedy row when a sequence gives none), or null for a row whose
 * logits go back to the host; `logitRows` lists those rows' indices.
 *
 * @example
 * ```ts
 * const { rows, logitRows } = sampleRowsOf([
 *   { tokens: [1], start: 0, blockTable: [0], output: "sample" },
 *   { tokens: [2], start: 0, blockTable: [1], output: "sample", sampling: "logits" },
 * ]);
 * console.log(rows[0]?.greedy, rows[1], logitRows); // true null [1]
 * ```
 */
export function sampleRowsOf(
  seqs: readonly StepSeq[],
): { rows: (RowSampling | null)[]; logitRows: number[] } {
  const rows: (RowSampling | null)[] = [];
  const logitRows: number[] = [];
  for (const s of seqs) {
    if (s.output !== "sample") continue;
    if (s.sampling === "logits") logitRows.push(rows.length);
    rows.push(s.sampling === "logits" ? null : s.sampling ?? GREEDY_ROW);
  }
  return { rows, logitRows };
}
