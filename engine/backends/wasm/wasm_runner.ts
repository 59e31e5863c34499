/**
 * The ERNIE-4.5 forward step on the CPU in WebAssembly SIMD with threads: the
 * same step semantics as the WebGPU runner (`engine/model_runner.ts`), with the
 * weights, the paged KV pool and the step buffers in one shared wasm memory and
 * the whole step (embedding to the sampled ids) in `kernels.c`.
 *
 * @module
 */
import type { ModelShape, WeightSource } from "../../model.ts";
import { ropeInvFreq } from "../../model.ts";
import {
  type BackendLimits,
  layoutStep,
  type Runner,
  type RunnerOptions,
  sampleRowsOf,
  type StepResult,
  type StepSeq,
} from "../../runner.ts";
import type { KernelCost, KernelProfile, KernelStat } from "../../gpu/profile.ts";
import {
  EDIT_BYTES,
  maskWords,
  packMasks,
  packRows,
  ROW_BYTES,
  type RowSampling,
  SAMPLE_EDIT_CAPACITY,
} from "../../gpu/sampling.ts";
import { WasmThreads } from "./threads.ts";
import { type PackedWeight, packWeight, WEIGHT_WORDS, writeWeight } from "./weights.ts";

/** `Model` in kernels.c, field by field (u32 unless noted f32). */
export const MODEL_FIELDS = [
  "threads",
  "hidden",
  "inter",
  "layers",
  "heads",
  "kv_heads",
  "head_dim",
  "vocab",
  "eps", // f32
  "pos_scale", // f32
  "attn_scale", // f32
  "block_size",
  "max_blocks",
  "valid_vocab",
  "inv_freq",
  "embed",
  "lm_head",
  "norm",
  "layer",
  "x",
  "normed",
  "qkv",
  "attn",
  "act",
  "final_rows",
  "logits",
  "scratch",
  "scratch_floats",
  "tokens",
  "rows",
  "logit_rows",
  "want_ids",
  "ids",
  "positions",
  "slots",
  "seq_of",
  "block_table",
  "out_rows",
  "out_ids",
  "bar_count",
  "bar_gen",
  "work",
  "prof",
  "sample_rows",
  "edits",
  "masks",
  "mask_words",
] as const;
/** A field of kernels.c's `Model`. */
export type ModelField = typeof MODEL_FIELDS[number];
/** Word index of each `Model` field. */
export const F = Object.fromEntries(MODEL_FIELDS.map((f, i) => [f, i])) as Record<
  ModelField,
  number
>;
const LAYER_WORDS = 4 + 4 * WEIGHT_WORDS;

const GIB = 1024 ** 3;
const WASM_MEMORY = 4 * GIB;
/** Room kept for step buffers, stacks and the logits of many rows. */
const ACTIVATION_RESERVE = 384 * 1024 ** 2;
const LOGITS_BYTES = 256 * 1024 ** 2;

/** Byte offsets of the step buffers the main thread writes and reads. */
interface StepBuffers {
  readonly ids: number; // (T) u32
  readonly positions: number; // (T) u32
  readonly slots: number; // (T) u32 KV slot of each token
  readonly seqOf: number; // (T) u32 block-table row of each token
  readonly blockTable: number; // (S, maxBlocks) u32
  readonly rows: number; // (R) u32 token index of each output row
  readonly outIds: number; // (L) u32 chosen ids
  readonly sampleRows: number; // (L) SampleRow (ROW_BYTES each)
  readonly edits: number; // (SAMPLE_EDIT_CAPACITY) Edit
  readonly masks: number; // (L, maskWords) u32 grammar bitsets of masked rows
  readonly logits: number; // (L, V) f32
  readonly final: number; // (R, H) f32 final-normed rows
}

/** Options of the wasm backend. */
export interface WasmOptions {
  /** Worker threads (default `navigator.hardwareConcurrency`). */
  readonly threads?: number;
  /** Time every op of every step (`--profile`): see {@linkcode WasmRunner.kernelProfile}. */
  readonly profile?: boolean;
}

/** The ops of a step, in the order of kernels.c's `enum Op`: the profile's labels. */
const OPS = [
  "embed",
  "input_norm",
  "qkv",
  "rotary_kv",
  "attention",
  "o_proj",
  "post_norm",
  "gate_up",
  "down",
  "final_norm",
  "lm_head",
  "argmax",
  "sample",
] as const;
type Op = typeof OPS[number];

/** Bytes of the weights as the wasm backend holds bf16 checkpoints (an untied lm_head counted). */
function weightEstimate(s: ModelShape): number {
  const { hiddenSize: H, intermediateSize: I, numHeads: HQ, numKvHeads: HKV, headDim: D } = s;
  const layer = (HQ + 2 * HKV) * D * H + H * HQ * D + 2 * I * H + H * I;
  return 2 * (2 * s.vocabSize * H + s.numLayers * layer);
}

/**
 * What the wasm backend allows: all of weights, KV pool and activations live in
 * one 4 GiB wasm32 memory. The default KV budget is 1 GiB or what is left.
 */
export function wasmLimits(shape: ModelShape): BackendLimits {
  const weights = weightEstimate(shape);
  const kv = WASM_MEMORY - weights - ACTIVATION_RESERVE;
  if (kv < 64 * 1024 ** 2) {
    throw new Error(
      `The model's weights (about ${(weights / GIB).toFixed(1)} GiB as bf16) leave no room for a ` +
        `KV cache in a 4 GiB WebAssembly memory: use --backend webgpu`,
    );
  }
  return {
    maxKvBytesPerLayer: Math.floor(kv / (2 * shape.numLayers)),
    defaultKvBytes: Math.min(GIB, kv),
    maxLogitRows: Math.max(1, Math.floor(LOGITS_BYTES / (shape.vocabSize * 4))),
  };
}

/** Bytes of the packed weights one call of each matmul op reads. */
interface OpWeightBytes {
  readonly qkv: number;
  readonly o: number;
  readonly gateUp: number;
  readonly down: number;
  readonly lmHead: number;
  /** One embedding row. */
  readonly embedRow: number;
}

/** The step's sizes that the op costs depend on. */
interface StepSizes {
  readonly tokens: number;
  readonly rows: number;
  readonly logitRows: number;
  /** Keys attended, summed over the step's tokens. */
  readonly keys: number;
}

/**
 * What one call of each op computes and moves (a fused multiply-add is 2
 * FLOPs; bytes are read or written at least once): the profile's GFLOP/s and GB/s.
 */
function opCosts(s: ModelShape, w: OpWeightBytes, z: StepSizes): Record<Op, KernelCost> {
  const { hiddenSize: H, intermediateSize: I, numHeads: HQ, numKvHeads: HKV, headDim: D } = s;
  const { tokens: T, rows: R, logitRows: L, keys } = z;
  const V = s.vocabSize;
  const QKV = (HQ + 2 * HKV) * D;
  const norm = (n: number) => ({ flops: 4 * n * H, bytes: (2 * n * H + H) * 4 });
  // n rows · (out, k) weight; `written` outputs per row, `added` rows read back (residual adds).
  const matmul = (n: number, out: number, k: number, weight: number, written = out, added = 0) => ({
    flops: 2 * n * out * k,
    bytes: weight + n * (k + written + added) * 4,
  });
  return {
    embed: { flops: 0, bytes: T * (w.embedRow + 4 * H) },
    input_norm: norm(T),
    qkv: matmul(T, QKV, H, w.qkv),
    rotary_kv: { flops: 6 * T * (HQ + HKV) * (D / 2), bytes: T * (2 * QKV + 2 * HKV * D) * 4 },
    attention: { flops: 4 * HQ * D * keys, bytes: (2 * keys * HKV * D + 2 * T * HQ * D) * 4 },
    o_proj: matmul(T, H, HQ * D, w.o, H, H),
    post_norm: norm(T),
    gate_up: matmul(T, 2 * I, H, w.gateUp, I), // silu(gate)·up: I values per row written
    down: matmul(T, H, I, w.down, H, H),
    final_norm: norm(R),
    lm_head: matmul(L, V, H, w.lmHead),
    argmax: { flops: 0, bytes: L * V * 4 },
    sample: { flops: 0, bytes: L * V * 4 },
  };
}

/** Per-op totals of a profiled runner. */
class OpProfile {
  readonly #totals = new Map<
    Op,
    { calls: number; seconds: number; flops: number; bytes: number }
  >();
  steps = 0;

  add(op: Op, calls: number, seconds: number, cost: KernelCost): void {
    let t = this.#totals.get(op);
    if (!t) this.#totals.set(op, t = { calls: 0, seconds: 0, flops: 0, bytes: 0 });
    t.calls += calls;
    t.seconds += seconds;
    t.flops += calls * cost.flops;
    t.bytes += calls * cost.bytes;
  }

  report(adapter: string): KernelProfile {
    const kernels: KernelStat[] = [...this.#totals].map(([label, t]) => ({ label, ...t }))
      .sort((a, b) => b.seconds - a.seconds);
    return { method: "host-clock", adapter, steps: this.steps, kernels };
  }

  reset(): void {
    this.#totals.clear();
    this.steps = 0;
  }
}

/** The model in a shared wasm memory, computed by worker threads. */
export class WasmRunner implements Runner {
  readonly description: string;
  readonly #model: number;
  readonly #buf: StepBuffers;
  /** Host staging of the sample rows and their edits (packRows writes plain buffers). */
  readonly #rowData: ArrayBuffer;
  readonly #editData = new ArrayBuffer(SAMPLE_EDIT_CAPACITY * EDIT_BYTES);
  /** Set when profiling: where kernels.c adds each op's milliseconds, and the totals. */
  #profile?: { readonly at: number; readonly ops: OpProfile; readonly weights: OpWeightBytes };

  private constructor(
    readonly pool: WasmThreads,
    readonly shape: ModelShape,
    readonly options: RunnerOptions,
    readonly weightBytes: number,
    readonly kvBytes: number,
    readonly maxLogitRows: number,
    readonly maxRows: number,
    model: number,
    buf: StepBuffers,
  ) {
    this.description = `wasm: ${pool.threads} thread${pool.threads === 1 ? "" : "s"}`;
    this.#model = model;
    this.#buf = buf;
    this.#rowData = new ArrayBuffer(maxLogitRows * ROW_BYTES);
  }

  /** Starts the workers, packs the weights and allocates the KV pool and step buffers. */
  static async create(
    shape: ModelShape,
    source: WeightSource,
    o: RunnerOptions,
    wasm: WasmOptions = {},
  ): Promise<WasmRunner> {
    const threads = wasm.threads ?? navigator.hardwareConcurrency ?? 1;
    const pool = await WasmThreads.start(threads);
    try {
      return await WasmRunner.#build(pool, shape, source, o, wasm);
    } catch (e) {
      pool.close();
      throw e;
    }
  }

  static async #build(
    pool: WasmThreads,
    s: ModelShape,
    source: WeightSource,
    o: RunnerOptions,
    wasm: WasmOptions,
  ): Promise<WasmRunner> {
    const {
      hiddenSize: H,
      intermediateSize: I,
      numHeads: HQ,
      numKvHeads: HKV,
      headDim: D,
      vocabSize: V,
      numLayers: L,
    } = s;
    const sizes = pool.structWords;
    if (
      sizes.model !== MODEL_FIELDS.length || sizes.weight !== WEIGHT_WORDS ||
      sizes.layer !== LAYER_WORDS || sizes.ops !== OPS.length ||
      sizes.sampleRow * 4 !== ROW_BYTES
    ) {
      throw new Error(
        `wasm backend: kernels.c structs do not match wasm_runner.ts (${JSON.stringify(sizes)})`,
      );
    }
    if (HQ % HKV !== 0) throw new Error(`num_attention_heads ${HQ} is not a multiple of ${HKV}`);
    if (D % 2 !== 0) throw new Error(`head_dim ${D} must be even for interleaved rotary`);
    let weightBytes = 0;
    const need = async (name: string, shape: readonly number[]) => {
      const t = await source.get(name);
      if (!t) throw new Error(`Weight "${name}" is missing from the checkpoint`);
      if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
        throw new Error(`Weight "${name}" has shape [${t.shape}], expected [${shape}]`);
      }
      return t;
    };
    const matrix = async (name: string, rows: number, cols: number, layout?: "gate_up") => {
      const w = packWeight(pool, await need(name, [rows, cols]), layout);
      weightBytes += w.bytes;
      return w;
    };
    const f32s = (values: ArrayLike<number>) => {
      const at = pool.alloc(values.length * 4);
      pool.f32(at, values.length).set(values);
      return at;
    };
    const vector = async (name: string, n: number) => {
      const t = await need(name, [n]);
      const data = t.data instanceof Float32Array ? t.data : widen(t.data);
      weightBytes += n * 4;
      return f32s(data);
    };

    // Weights, one tensor at a time.
    const embed = await matrix("embed", V, H);
    const head = await source.get("lm_head");
    const lmHead = head ? await matrix("lm_head", V, H) : embed;
    const layers: {
      inputNorm: number;
      qkv: PackedWeight;
      o: PackedWeight;
      postNorm: number;
      gateUp: PackedWeight;
      down: PackedWeight;
    }[] = [];
    for (let i = 0; i < L; i++) {
      const p = `layers.${i}`;
      layers.push({
        inputNorm: await vector(`${p}.input_norm`, H),
        qkv: await matrix(`${p}.qkv`, (HQ + 2 * HKV) * D, H),
        o: await matrix(`${p}.o`, H, HQ * D),
        postNorm: await vector(`${p}.post_norm`, H),
        gateUp: await matrix(`${p}.gate_up`, 2 * I, H, "gate_up"),
        down: await matrix(`${p}.down`, H, I),
      });
    }
    const norm = await vector("norm", H);

    // KV pool: per layer (slots, HKV, D) f32, K and V.
    const slotBytes = o.numBlocks * o.blockSize * HKV * D * 4;
    const kCache = layers.map(() => pool.alloc(slotBytes));
    const vCache = layers.map(() => pool.alloc(slotBytes));

    // Step buffers.
    const T = o.maxNumBatchedTokens;
    const maxRows = Math.max(o.maxNumSeqs, T);
    const maxLogitRows = Math.min(o.maxNumSeqs, wasmLimits(s).maxLogitRows);
    const G = HQ / HKV;
    // kernels.c's attend and attend_block: queries and accumulators (R, D), scores
    // (R, CHUNK = 64), max and sum (R), for R rows: a token's G heads, or a block of
    // prefill tokens' (BLOCK_ROWS = 32 rows at most).
    const R = G >= 32 ? G : Math.floor(32 / G) * G;
    const scratchFloats = Math.max(D, 2 * R * D + R * 64 + 2 * R) + 16;
    const u32 = (n: number) => pool.alloc(Math.max(1, n) * 4);
    const buf = {
      ids: u32(T),
      positions: u32(T),
      slots: u32(T),
      seqOf: u32(T),
      blockTable: u32(o.maxNumSeqs * o.maxBlocksPerSeq),
      rows: u32(maxRows),
      outIds: u32(maxLogitRows),
      sampleRows: pool.alloc(maxLogitRows * ROW_BYTES),
      edits: pool.alloc(SAMPLE_EDIT_CAPACITY * EDIT_BYTES),
      masks: u32(maxLogitRows * maskWords(V)),
      logits: u32(maxLogitRows * V),
      final: u32(maxRows * H),
    };
    const layerTable = pool.alloc(L * LAYER_WORDS * 4);
    const weightTable = pool.alloc(2 * WEIGHT_WORDS * 4);
    const model = pool.alloc(MODEL_FIELDS.length * 4);
    const fields: Partial<Record<ModelField, number>> = {
      threads: pool.threads,
      hidden: H,
      inter: I,
      layers: L,
      heads: HQ,
      kv_heads: HKV,
      head_dim: D,
      vocab: V,
      block_size: o.blockSize,
      max_blocks: o.maxBlocksPerSeq,
      valid_vocab: o.validVocab,
      inv_freq: f32s(ropeInvFreq(s)),
      embed: weightTable,
      lm_head: weightTable + WEIGHT_WORDS * 4,
      norm,
      layer: layerTable,
      x: u32(T * H),
      normed: u32(T * H),
      qkv: u32(T * (HQ + 2 * HKV) * D),
      attn: u32(T * HQ * D),
      act: u32(T * I),
      final_rows: buf.final,
      logits: buf.logits,
      scratch: u32(pool.threads * scratchFloats),
      scratch_floats: scratchFloats,
      ids: buf.ids,
      positions: buf.positions,
      slots: buf.slots,
      seq_of: buf.seqOf,
      block_table: buf.blockTable,
      out_rows: buf.rows,
      out_ids: buf.outIds,
      sample_rows: buf.sampleRows,
      edits: buf.edits,
      masks: buf.masks,
      mask_words: maskWords(V),
    };
    const words = pool.u32(model, MODEL_FIELDS.length);
    for (const [f, v] of Object.entries(fields)) words[F[f as ModelField]] = v;
    const floats = pool.f32(model, MODEL_FIELDS.length);
    floats[F.eps] = s.rmsNormEps;
    floats[F.pos_scale] = 1 / s.compressionRatio;
    floats[F.attn_scale] = 1 / Math.sqrt(D);
    const wt = pool.u32(weightTable, 2 * WEIGHT_WORDS);
    writeWeight(wt, 0, embed);
    writeWeight(wt, WEIGHT_WORDS, lmHead);
    const lt = pool.u32(layerTable, L * LAYER_WORDS);
    layers.forEach((l, i) => {
      const at = i * LAYER_WORDS;
      lt[at] = l.inputNorm;
      writeWeight(lt, at + 1, l.qkv);
      writeWeight(lt, at + 1 + WEIGHT_WORDS, l.o);
      lt[at + 1 + 2 * WEIGHT_WORDS] = l.postNorm;
      writeWeight(lt, at + 2 + 2 * WEIGHT_WORDS, l.gateUp);
      writeWeight(lt, at + 2 + 3 * WEIGHT_WORDS, l.down);
      lt[at + 2 + 4 * WEIGHT_WORDS] = kCache[i]!;
      lt[at + 3 + 4 * WEIGHT_WORDS] = vCache[i]!;
    });
    const runner = new WasmRunner(
      pool,
      s,
      o,
      weightBytes,
      2 * L * slotBytes,
      maxLogitRows,
      maxRows,
      model,
      buf,
    );
    // V8 runs WebAssembly in its baseline compiler first and swaps in optimised code for a
    // function's later calls once it ran hot. One small step now makes every kernel hot
    // before real work: a cold engine's first 500-token prompt spent 5.2 s in attention,
    // a warm one 0.7 s. Five tokens reach the 4-row tiles, the one-row GEMV, a block of
    // prefill tokens, one token alone, the LM head and the argmax.
    const n = Math.min(
      5,
      o.maxNumBatchedTokens,
      o.blockSize * Math.min(o.numBlocks, o.maxBlocksPerSeq),
    );
    await runner.step([{
      tokens: new Array(n).fill(0),
      start: 0,
      blockTable: Array.from({ length: Math.ceil(n / o.blockSize) }, (_, i) => i),
      output: "sample",
    }], false);
    if (wasm.profile) {
      const at = pool.alloc(OPS.length * 8, 8);
      words[F.prof] = at;
      const l = layers[0]!;
      runner.#profile = {
        at,
        ops: new OpProfile(),
        weights: {
          qkv: l.qkv.bytes,
          o: l.o.bytes,
          gateUp: l.gateUp.bytes,
          down: l.down.bytes,
          lmHead: lmHead.bytes,
          embedRow: embed.bytes / embed.n,
        },
      };
    }
    return runner;
  }

  /**
   * Runs one forward step over the scheduled sequences. Sample rows get argmax
   * ids, or their full logits when `wantLogits` (for the CPU sampler). Otherwise
   * each sample row is drawn on the worker threads as its `sampling` says (the
   * algorithm of shaders/sample.wgsl), and only rows that ask for `"logits"` read
   * theirs back.
   */
  async step(
    seqs: readonly StepSeq[],
    wantLogits: boolean,
    masksReady?: Promise<unknown>,
  ): Promise<StepResult> {
    const o = this.options;
    const pool = this.pool;
    const b = this.#buf;
    const T = seqs.reduce((n, s) => n + s.tokens.length, 0);
    const ids = pool.u32(b.ids, Math.min(T, o.maxNumBatchedTokens));
    const { sampleRows, hiddenRows, fed } = layoutStep(seqs, o, {
      ids,
      positions: pool.u32(b.positions, ids.length),
      slots: pool.u32(b.slots, ids.length),
      seqOf: pool.u32(b.seqOf, ids.length),
    }, this);
    // One step at a time here (a step's inputs live in the memory the threads compute from).
    if (fed.length > 0) throw new Error("the wasm backend cannot feed a step from the one before");
    for (const id of ids) {
      if (id >= this.shape.vocabSize) throw new Error(`token id ${id} ≥ vocab`);
    }
    const table = pool.u32(b.blockTable, seqs.length * o.maxBlocksPerSeq);
    seqs.forEach((s, si) => table.set(s.blockTable, si * o.maxBlocksPerSeq));
    const L = sampleRows.length;
    const R = L + hiddenRows.length;
    pool.u32(b.rows, R).set([...sampleRows, ...hiddenRows]);

    // Per sample row: how the threads pick its token, or null when its logits come back.
    const { rows: rowSampling, logitRows } = wantLogits
      ? { rows: [], logitRows: [] }
      : sampleRowsOf(seqs);
    const drawn = rowSampling.some((r) => r === null || !r.greedy || r.edits.length > 0 || r.mask);
    if (drawn && !this.#packSampling(rowSampling)) {
      // More logit edits than the step's buffer holds: this step samples on the host.
      await masksReady;
      return this.step(seqs, true);
    }
    const masked = rowSampling.some((r) => r?.mask !== undefined);
    const words = pool.u32(this.#model, MODEL_FIELDS.length);
    words[F.tokens] = T;
    words[F.rows] = R;
    words[F.logit_rows] = L;
    // Rows under a grammar are drawn once their masks are ready, after the forward pass.
    words[F.want_ids] = wantLogits || masked ? 0 : drawn ? 2 : 1;
    if (T > 0) {
      const prof = this.#profile &&
        new Float64Array(pool.memory.buffer, this.#profile.at, OPS.length);
      prof?.fill(0);
      await pool.run("run_step", this.#model);
      if (masked) {
        await masksReady;
        packMasks(
          rowSampling,
          pool.u32(b.masks, L * maskWords(this.shape.vocabSize)),
          maskWords(this.shape.vocabSize),
        );
        await pool.run("run_sample", this.#model);
      }
      if (prof) {
        this.#addProfile(
          prof,
          { tokens: T, rows: R, logitRows: L, keys: 0 },
          words[F.want_ids]!,
          masked,
        );
      }
    }
    const { vocabSize: V, hiddenSize: H } = this.shape;
    let logits: Float32Array | undefined;
    let logitIndex: Int32Array | undefined;
    if (wantLogits && L > 0) logits = pool.f32(b.logits, L * V).slice();
    if (!wantLogits && L > 0) {
      logitIndex = new Int32Array(L).fill(-1);
      if (logitRows.length > 0) {
        logits = new Float32Array(logitRows.length * V);
        logitRows.forEach((row, k) => {
          logits!.set(pool.f32(b.logits + row * V * 4, V), k * V);
          logitIndex![row] = k;
        });
      }
    }
    return {
      ids: L > 0 && !wantLogits ? pool.u32(b.outIds, L).slice() : undefined,
      logits,
      logitIndex,
      hidden: R > L ? pool.f32(b.final + L * H * 4, (R - L) * H).slice() : undefined,
    };
  }

  /** Writes this step's sample rows and edits into the shared memory; false when they do not fit. */
  #packSampling(rows: readonly (RowSampling | null)[]): boolean {
    const b = this.#buf;
    const edits = packRows(rows, this.#rowData, this.#editData, SAMPLE_EDIT_CAPACITY);
    if (edits < 0) return false;
    const memory = this.pool.memory.buffer;
    new Uint8Array(memory, b.sampleRows, rows.length * ROW_BYTES)
      .set(new Uint8Array(this.#rowData, 0, rows.length * ROW_BYTES));
    new Uint8Array(memory, b.edits, edits * EDIT_BYTES)
      .set(new Uint8Array(this.#editData, 0, edits * EDIT_BYTES));
    return true;
  }

  /** Samples rows on the worker threads from `StepSeq.sampling` (only ids come back). */
  get deviceSampling(): boolean {
    return true;
  }

  #addProfile(ms: Float64Array, z: StepSizes, wantIds: number, masked: boolean): void {
    const p = this.#profile!;
    const positions = this.pool.u32(this.#buf.positions, z.tokens);
    const keys = positions.reduce((n, pos) => n + pos + 1, 0);
    const costs = opCosts(this.shape, p.weights, { ...z, keys });
    const layers = this.shape.numLayers;
    p.ops.steps++;
    OPS.forEach((op, i) => {
      const ran = op === "lm_head"
        ? z.logitRows > 0
        : op === "argmax"
        ? wantIds === 1 && z.logitRows > 0
        : op === "sample"
        ? (wantIds === 2 || masked) && z.logitRows > 0
        : true;
      if (!ran) return;
      const perLayer = !["embed", "final_norm", "lm_head", "argmax", "sample"].includes(op);
      p.ops.add(op, perLayer ? layers : 1, ms[i]! / 1000, costs[op]);
    });
  }

  /**
   * Per-op time of the steps so far when created with `profile` (else undefined):
   * thread 0 reads the host clock at the barrier that ends each op, so an op's
   * time includes waiting for the slowest thread.
   */
  kernelProfile(): KernelProfile | undefined {
    return this.#profile?.ops.report(this.description);
  }

  /** Forgets the profile so far (for example after warm-up). */
  resetProfile(): void {
    this.#profile?.ops.reset();
  }

  /** Stops the worker threads; the memory goes with the last reference. */
  destroy(): void {
    this.pool.close();
  }
}

function widen(bits: Uint16Array): Float32Array {
  const u = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) u[i] = bits[i]! << 16;
  return new Float32Array(u.buffer);
}
