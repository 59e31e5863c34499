/**
 * One engine step on the GPU: gather the scheduled tokens' ids, positions,
 * cache slots and block tables, encode the whole forward pass into one command
 * buffer, submit once, and read back once (sampled ids, logits rows, or
 * hidden rows).
 *
 * @module
 */
import type { Gpu } from "./gpu/device.ts";
import {
  EDIT_BYTES,
  maskWords,
  packMasks,
  packRows,
  ROW_BYTES,
  type RowSampling,
  SAMPLE_EDIT_CAPACITY,
  sampleOp,
} from "./gpu/sampling.ts";
import { type KernelProfile, KernelProfiler } from "./gpu/profile.ts";
import { type Dispatch, encode, STEP_UNIFORM_BYTES, type StepShape } from "./gpu/kernels.ts";
import {
  chooseKernelClass,
  chooseKvCacheDtype,
  type KernelChoice,
  type KernelClass,
  kernelTable,
  type KvCacheDtype,
} from "./gpu/registry.ts";
import {
  type AttentionLayout,
  attentionLayout,
  attentionWork,
  maxPrefillTiles,
  partialsSize,
} from "./gpu/attention_gpu.ts";
import {
  type ForwardPlan,
  type ModelShape,
  type ModelWeights,
  planForward,
  ropeInvFreq,
  type StepBuffers,
  uploadWeights,
  type WeightSource,
} from "./model.ts";
import {
  layoutStep,
  type Runner,
  type RunnerOptions,
  sampleRowsOf,
  type StepResult,
  type StepSeq,
} from "./runner.ts";

export type { RunnerOptions, StepResult, StepSeq };

/** WebGPU-only choices, fixed at load. */
export interface WebGpuRunnerOptions {
  /** Kernel class: `auto` (default) picks `cpu` on software adapters, `gpu` elsewhere. */
  readonly kernels?: KernelChoice;
  /** Time every kernel of every step (engine/gpu/profile.ts); steps run one pass per kernel. */
  readonly profile?: boolean;
  /** `destroy()` also destroys the device, last (the engine opened it for this runner). */
  readonly ownsDevice?: boolean;
  /** KV cache storage: `auto` (default) is f16 for the gpu class on a device with shader-f16. */
  readonly kvCacheDtype?: KvCacheDtype;
}

interface DeviceSampling {
  readonly masks: GPUBuffer; // (maxLogitRows, maskWords) grammar bitsets of masked rows
  readonly maskData: Uint32Array; // host staging of `masks`
  readonly rows: GPUBuffer; // (maxLogitRows) Row of sample.wgsl
  readonly edits: GPUBuffer; // (SAMPLE_EDIT_CAPACITY) Edit of sample.wgsl
  readonly rowData: ArrayBuffer;
  readonly editData: ArrayBuffer;
  readonly dispatch: Dispatch;
}

/** The model on the GPU with its step buffers and KV pool. */
export class ModelRunner implements Runner {
  /**
   * Readback buffers, used in turn: a step may start while the one before it is still
   * being read (the second is made by the first step that follows another in flight).
   */
  readonly #staging: GPUBuffer[];
  readonly #stagingBytes: number;
  /** Which of `#staging` (and of the host's `results`) the step last started reads through. */
  #parity = 0;
  /** Whether the last step left every sample row's id in `buffers.sampled` (feedsNextStep). */
  #feeds = false;
  /** Sampling on the device (gpu kernel class): its buffers, host staging and dispatch. */
  #sampling?: DeviceSampling;
  /** Each block-table row as last uploaded (rows are rewritten only when they change). */
  readonly #tableRows: Uint32Array[];
  /** Host-side step inputs and the results buffer, allocated once. */
  readonly #host: {
    readonly step: Uint32Array; // (4) the step uniform
    readonly ids: Uint32Array; // (T)
    readonly positions: Uint32Array; // (T)
    readonly slots: Uint32Array; // (T)
    readonly seqOf: Uint32Array; // (T)
    readonly rows: Uint32Array; // (R)
    readonly results: ArrayBuffer[]; // as the staging buffers
  };
  #profiler?: KernelProfiler;
  #ownsDevice = false;
  readonly description: string;
  readonly weightBytes: number;

  private constructor(
    readonly gpu: Gpu,
    readonly shape: ModelShape,
    readonly options: RunnerOptions,
    readonly weights: ModelWeights,
    readonly buffers: StepBuffers,
    readonly plan: ForwardPlan,
    /** Most rows with logits in one step. */
    readonly maxLogitRows: number,
    readonly maxRows: number,
    /** Bytes of the KV pool. */
    readonly kvBytes: number,
    /** The kernel class every dispatch of the plan uses. */
    readonly kernelClass: KernelClass,
    /** How the KV cache stores keys and values. */
    readonly kvCacheDtype: "f16" | "f32",
    /** How gpu-class attention cuts the context (absent for the cpu class). */
    readonly attentionLayout: AttentionLayout | undefined,
  ) {
    this.description = `webgpu: ${gpu.description} (${kernelClass} kernels, ${kvCacheDtype} KV)`;
    this.weightBytes = weights.bytes;
    const bytes = maxLogitRows * (shape.vocabSize + 1) * 4 + maxRows * shape.hiddenSize * 4;
    this.#stagingBytes = bytes;
    this.#staging = [gpu.readback("staging", bytes)];
    const T = options.maxNumBatchedTokens;
    this.#host = {
      step: new Uint32Array(4),
      ids: new Uint32Array(T),
      positions: new Uint32Array(T),
      slots: new Uint32Array(T),
      seqOf: new Uint32Array(T),
      rows: new Uint32Array(maxRows),
      results: [new ArrayBuffer(bytes)],
    };
    this.#tableRows = Array.from({ length: options.maxNumSeqs }, () => new Uint32Array(0));
  }

  /** Uploads the weights and allocates every buffer a step needs. */
  static async create(
    gpu: Gpu,
    shape: ModelShape,
    source: WeightSource,
    o: RunnerOptions,
    webgpu: WebGpuRunnerOptions = {},
  ): Promise<ModelRunner> {
    const kernels = chooseKernelClass(webgpu.kernels ?? "auto", {
      isFallbackAdapter: gpu.adapter.info.isFallbackAdapter,
      description: gpu.description,
    });
    const weights = await gpu.checked(
      "Uploading the weights to the GPU",
      () => uploadWeights(gpu, shape, source),
      "the model does not fit this GPU",
    );
    const {
      hiddenSize: H,
      intermediateSize: I,
      numHeads: HQ,
      numKvHeads: HKV,
      headDim: D,
      vocabSize: V,
    } = shape;
    const T = o.maxNumBatchedTokens;
    const maxRows = Math.max(o.maxNumSeqs, T);
    const maxLogitRows = Math.min(o.maxNumSeqs, Math.floor(gpu.maxBinding / (V * 4)));
    if (maxLogitRows < 1) throw new Error(`vocab ${V} is too large for one storage binding`);
    const kvCacheDtype = chooseKvCacheDtype(webgpu.kvCacheDtype ?? "auto", kernels, gpu.hasF16);
    const kvF16 = kvCacheDtype === "f16";
    const slotBytes = o.numBlocks * o.blockSize * HKV * D * (kvF16 ? 2 : 4);
    const attention = {
      heads: HQ,
      kvHeads: HKV,
      headDim: D,
      blockSize: o.blockSize,
      maxBlocks: o.maxBlocksPerSeq,
      kvF16,
    };
    const layout = kernelTable(kernels).flashAttention
      ? attentionLayout(gpu, attention, o.maxNumBatchedTokens)
      : undefined;
    const f32 = (label: string, n: number) => gpu.storage(label, n * 4);
    const checkBinding = (what: string, bytes: number) => {
      if (bytes > gpu.maxBinding) {
        throw new Error(
          `${what} needs ${bytes} bytes, more than one storage binding allows (${gpu.maxBinding}); ` +
            `lower --max-num-batched-tokens or the KV cache size`,
        );
      }
    };
    checkBinding("The KV cache of one layer", slotBytes);
    checkBinding("The MLP activations", T * 2 * I * 4);
    const partials = layout ? partialsSize(attention, layout) : 1;
    checkBinding("The attention partials", partials * 4);
    // The KV pool first: it is the largest allocation, and the one the user sizes.
    const kvPool = await gpu.checked(
      `Allocating the KV cache (${o.numBlocks} blocks of ${o.blockSize} tokens, ` +
        `${(2 * slotBytes * shape.numLayers / 2 ** 20).toFixed(1)} MiB)`,
      () => ({
        k: Array.from(
          { length: shape.numLayers },
          (_, i) => gpu.storage(`k_cache.${i}`, slotBytes),
        ),
        v: Array.from(
          { length: shape.numLayers },
          (_, i) => gpu.storage(`v_cache.${i}`, slotBytes),
        ),
      }),
      "lower --kv-cache-memory",
    );
    gpu.pushErrorScopes();
    const buffers: StepBuffers = {
      step: gpu.uniform("step", STEP_UNIFORM_BYTES),
      ids: f32("ids", T),
      positions: f32("positions", T),
      slots: f32("slots", T),
      seqOf: f32("seq_of", T),
      blockTable: f32("block_table", o.maxNumSeqs * o.maxBlocksPerSeq),
      rows: f32("rows", maxRows),
      invFreq: gpu.upload("inv_freq", ropeInvFreq(shape)),
      hidden: f32("hidden", T * H),
      normed: f32("normed", T * H),
      qkv: f32("qkv", T * (HQ + 2 * HKV) * D),
      attn: f32("attn", T * HQ * D),
      gateUp: f32("gate_up", T * 2 * I),
      act: f32("act", T * I),
      final: f32("final", maxRows * H),
      logits: f32("logits", maxLogitRows * V),
      sampled: f32("sampled", maxRows),
      kCache: kvPool.k,
      vCache: kvPool.v,
      decodeTiles: f32("decode_tiles", 2 * o.maxNumSeqs),
      prefillTiles: f32("prefill_tiles", layout ? 2 * maxPrefillTiles(layout, T, o.maxNumSeqs) : 1),
      partials: f32("partials", partials),
    };
    await gpu.popErrorScopes(
      "Allocating the step buffers",
      "lower --max-num-batched-tokens or --max-num-seqs",
    );
    gpu.pushErrorScopes();
    const plan = planForward(gpu, shape, weights, buffers, {
      blockSize: o.blockSize,
      maxBlocks: o.maxBlocksPerSeq,
      validVocab: o.validVocab,
      kernels,
      kvF16,
      attention: layout,
    });
    await gpu.popErrorScopes("Compiling the kernels");
    const runner = new ModelRunner(
      gpu,
      shape,
      o,
      weights,
      buffers,
      plan,
      maxLogitRows,
      maxRows,
      2 * slotBytes * shape.numLayers,
      kernels,
      kvCacheDtype,
      layout,
    );
    runner.#ownsDevice = webgpu.ownsDevice === true;
    if (kernels === "gpu") {
      const rows = gpu.storage("sample_rows", maxLogitRows * ROW_BYTES);
      const edits = gpu.storage("sample_edits", SAMPLE_EDIT_CAPACITY * EDIT_BYTES);
      const words = maskWords(shape.vocabSize);
      const masks = gpu.storage("sample_masks", maxLogitRows * words * 4);
      runner.#sampling = {
        rows,
        edits,
        masks,
        maskData: new Uint32Array(maxLogitRows * words),
        rowData: new ArrayBuffer(maxLogitRows * ROW_BYTES),
        editData: new ArrayBuffer(SAMPLE_EDIT_CAPACITY * EDIT_BYTES),
        dispatch: sampleOp(gpu, buffers.step, {
          logits: buffers.logits,
          rows,
          edits,
          ids: buffers.sampled,
          masks,
        }, { valid: o.validVocab, stride: shape.vocabSize }),
      };
    }
    if (webgpu.profile) {
      const passes = plan.body.length + plan.logits.length + plan.argmax.length;
      runner.#profiler = new KernelProfiler(gpu, passes);
    }
    return runner;
  }

  /**
   * Runs one forward step over the scheduled sequences. Sample rows get argmax
   * ids, or their full logits when `wantLogits` (for the CPU sampler). With
   * device sampling (and not `wantLogits`), each sample row is drawn on the GPU
   * as its `sampling` says, and only rows that ask for `"logits"` read theirs back.
   */
  step(
    seqs: readonly StepSeq[],
    wantLogits: boolean,
    masksReady?: Promise<unknown>,
  ): Promise<StepResult> {
    const fedFrom = this.#feeds;
    this.#feeds = false;
    return this.#step(seqs, wantLogits, masksReady, fedFrom);
  }

  /**
   * Whether the step last started leaves its sample rows' ids on the device for the
   * next step's `fromSampleRow` (not when it samples on the host, waits for grammar
   * masks or is profiled: those submit after an await).
   */
  feedsNextStep(): boolean {
    return this.#feeds;
  }

  /** {@linkcode step}; `fedFrom`: the step before left its ids in `buffers.sampled`. */
  async #step(
    seqs: readonly StepSeq[],
    wantLogits: boolean,
    masksReady: Promise<unknown> | undefined,
    fedFrom: boolean,
  ): Promise<StepResult> {
    if (this.gpu.failure) throw this.gpu.failure;
    const host = this.#host;
    const { numTokens: T, sampleRows, hiddenRows, fed } = layoutStep(
      seqs,
      this.options,
      host,
      this,
    );
    if (fed.length > 0 && !fedFrom) {
      throw new Error("A step is fed ids that the step before it did not leave on the device");
    }
    const device = !wantLogits && this.#sampling !== undefined;
    // Per sample row (the "sample" sequences in order): how the device picks its token,
    // or null for a row whose logits come back to the host.
    const { rows: rowSampling, logitRows } = device
      ? sampleRowsOf(seqs)
      : { rows: [], logitRows: [] }; // logitRows: sample rows whose logits come back
    const ids = host.ids.subarray(0, T);
    const positions = host.positions.subarray(0, T);
    const slots = host.slots.subarray(0, T);
    const seqOf = host.seqOf.subarray(0, T);
    const L = sampleRows.length;
    const R = L + hiddenRows.length;
    const b = this.buffers;
    const gpu = this.gpu;
    // Every error of this step's writes and commands is caught here, not lost.
    gpu.pushErrorScopes();
    host.step.set([T, R, L, 0]);
    gpu.write(b.step, host.step);
    gpu.write(b.ids, ids);
    gpu.write(b.positions, positions);
    gpu.write(b.slots, slots);
    gpu.write(b.seqOf, seqOf);
    this.#writeBlockTables(seqs);
    host.rows.set(sampleRows);
    host.rows.set(hiddenRows, L);
    gpu.write(b.rows, host.rows.subarray(0, R));

    let shape: StepShape = { numTokens: T, numRows: R, numLogitRows: L };
    if (this.attentionLayout) {
      const work = attentionWork(
        seqs.map((s) => ({ start: s.start, count: s.tokens.length })),
        this.attentionLayout,
      );
      gpu.write(b.decodeTiles, work.decodeTiles);
      gpu.write(b.prefillTiles, work.prefillTiles);
      shape = {
        ...shape,
        numDecodeRows: work.decodeTiles.length / 2,
        numPrefillTiles: work.prefillTiles.length / 2,
        decodePieces: work.decodePieces,
        prefillPieces: work.prefillPieces,
      };
    }
    const encoder = gpu.device.createCommandEncoder();
    // Ids the step before drew for its sample rows, copied in before the forward pass.
    for (let i = 0; i < fed.length;) {
      let n = 1;
      const [t, row] = fed[i]!;
      while (i + n < fed.length && fed[i + n]![0] === t + n && fed[i + n]![1] === row + n) n++;
      encoder.copyBufferToBuffer(b.sampled, row * 4, b.ids, t * 4, n * 4);
      i += n;
    }
    const p = this.plan;
    const sampling = device ? this.#packSampling(rowSampling) : undefined;
    if (device && !sampling) {
      // More logit edits than the device buffer holds: this step samples on the host.
      gpu.popErrorScopes("Engine step").catch(() => {});
      await masksReady;
      // Fed ids are still in `b.sampled`: nothing was submitted since the step before.
      return this.#step(seqs, true, undefined, fedFrom);
    }
    const sampler = sampling ? [sampling] : wantLogits ? [] : p.argmax;
    const dispatches = [...p.body, ...p.logits, ...sampler];
    // Rows under a grammar sample within masks the host computes while the forward pass
    // runs: the forward goes first in a submission of its own, the masks follow it up,
    // then the sampling and the readback (still one readback).
    const masked = sampling !== undefined && rowSampling.some((r) => r?.mask !== undefined);
    let sampleEncoder = encoder;
    if (masked && !this.#profiler) {
      const pass = encoder.beginComputePass();
      encode(pass, [...p.body, ...p.logits], shape);
      pass.end();
      gpu.device.queue.submit([encoder.finish()]);
      await masksReady;
      this.#writeMasks(rowSampling);
      sampleEncoder = gpu.device.createCommandEncoder();
      const samplePass = sampleEncoder.beginComputePass();
      encode(samplePass, sampler, shape);
      samplePass.end();
    } else if (this.#profiler) {
      if (masked) {
        await masksReady;
        this.#writeMasks(rowSampling);
      }
      const attendedKeys = seqs.reduce((n, s) => n + s.tokens.length * (s.start + 1), 0) +
        seqs.reduce((n, s) => n + (s.tokens.length * (s.tokens.length - 1)) / 2, 0);
      await this.#profiler.record(encoder, dispatches, { ...shape, attendedKeys });
    } else {
      const pass = encoder.beginComputePass();
      encode(pass, dispatches, shape);
      pass.end();
    }
    const { vocabSize: V, hiddenSize: H } = this.shape;
    // Staging: sampled ids (L), then logits rows (all L when wantLogits, else `logitRows`),
    // then hidden rows.
    const idBytes = wantLogits ? 0 : L * 4;
    const logitCount = wantLogits ? L : logitRows.length;
    const sampleBytes = idBytes + logitCount * V * 4;
    const hiddenBytes = (R - L) * H * 4;
    const e = sampleEncoder;
    // The step before may still be reading its results back when it left its ids to feed
    // this one (the engine launched this step without waiting): read through the other buffer.
    if (fedFrom) this.#parity ^= 1;
    const which = this.#parity;
    const staging = this.#staging[which] ??= gpu.readback("staging", this.#stagingBytes);
    const result = host.results[which] ??= new ArrayBuffer(this.#stagingBytes);
    if (idBytes > 0) e.copyBufferToBuffer(b.sampled, 0, staging, 0, idBytes);
    if (wantLogits && L > 0) {
      e.copyBufferToBuffer(b.logits, 0, staging, 0, L * V * 4);
    } else {
      logitRows.forEach((row, k) =>
        e.copyBufferToBuffer(b.logits, row * V * 4, staging, idBytes + k * V * 4, V * 4)
      );
    }
    if (hiddenBytes > 0) {
      e.copyBufferToBuffer(b.final, L * H * 4, staging, sampleBytes, hiddenBytes);
    }
    gpu.device.queue.submit([e.finish()]);
    // Submitted without an await since the step began: the next step may follow at once.
    this.#feeds = !wantLogits && !masked && this.#profiler === undefined;
    await gpu.popErrorScopes("Engine step");
    await this.#profiler?.collect();
    const bytes = sampleBytes + hiddenBytes;
    if (bytes === 0) {
      await gpu.device.queue.onSubmittedWorkDone();
      if (gpu.failure) throw gpu.failure;
      return {};
    }
    await staging.mapAsync(GPUMapMode.READ, 0, bytes).catch(async (e: Error) => {
      throw (await gpu.failureAfter()) ??
        new Error(`Reading the step's results back failed: ${e.message}`);
    });
    if (gpu.failure) {
      staging.unmap();
      throw gpu.failure;
    }
    // Into the runner's own result buffer: the engine reads a step's results before it
    // starts the step after next, so two buffers, in turn, serve every step.
    new Uint8Array(result, 0, bytes).set(new Uint8Array(staging.getMappedRange(0, bytes)));
    const copy = result;
    staging.unmap();
    let logitIndex: Int32Array | undefined;
    if (device) {
      logitIndex = new Int32Array(L).fill(-1);
      logitRows.forEach((row, k) => (logitIndex![row] = k));
    }
    return {
      ids: L > 0 && !wantLogits ? new Uint32Array(copy, 0, L) : undefined,
      logits: logitCount > 0 ? new Float32Array(copy, idBytes, logitCount * V) : undefined,
      logitIndex,
      hidden: hiddenBytes > 0 ? new Float32Array(copy, sampleBytes, (R - L) * H) : undefined,
    };
  }

  /** Per-kernel GPU time so far, when the runner was created with `profile`. */
  kernelProfile(): KernelProfile | undefined {
    return this.#profiler?.report();
  }

  /** Forgets the profile so far (for example after warm-up). */
  resetProfile(): void {
    this.#profiler?.reset();
  }

  /**
   * Uploads the block-table rows that differ from what the GPU holds (a decode step
   * usually changes none: a row grows by one block every `blockSize` tokens).
   */
  #writeBlockTables(seqs: readonly StepSeq[]): void {
    const width = this.options.maxBlocksPerSeq;
    seqs.forEach((s, si) => {
      const held = this.#tableRows[si]!;
      const table = s.blockTable;
      let same = held.length === table.length;
      for (let i = 0; same && i < table.length; i++) same = held[i] === table[i];
      if (same) return;
      const row = Uint32Array.from(table);
      this.gpu.write(this.buffers.blockTable, row, si * width * 4);
      this.#tableRows[si] = row;
    });
  }

  /** Uploads the grammar masks of this step's masked rows (in row order). */
  #writeMasks(rows: readonly (RowSampling | null)[]): void {
    const d = this.#sampling!;
    const words = packMasks(rows, d.maskData, maskWords(this.shape.vocabSize));
    if (words > 0) this.gpu.write(d.masks, d.maskData.subarray(0, words));
  }

  /** Writes this step's sampling rows and edits; undefined when the edits do not fit. */
  #packSampling(rows: readonly (RowSampling | null)[]): Dispatch | undefined {
    const d = this.#sampling!;
    const edits = packRows(rows, d.rowData, d.editData, SAMPLE_EDIT_CAPACITY);
    if (edits < 0) return undefined;
    if (rows.length > 0) {
      this.gpu.write(d.rows, new Uint8Array(d.rowData, 0, rows.length * ROW_BYTES));
    }
    if (edits > 0) this.gpu.write(d.edits, new Uint8Array(d.editData, 0, edits * EDIT_BYTES));
    return d.dispatch;
  }

  /** Samples rows on the device (the gpu kernel class); the cpu class leaves it to the host. */
  get deviceSampling(): boolean {
    return this.#sampling !== undefined;
  }

  /** Frees the GPU buffers (weights, KV pool, step buffers), then the device if it owns it. */
  destroy(): void {
    this.#profiler?.destroy();
    this.#sampling?.rows.destroy();
    this.#sampling?.edits.destroy();
    this.#sampling?.masks.destroy();
    const w = this.weights;
    const shards = [w.embed, w.lmHead, ...w.layers.flatMap((l) => [l.qkv, l.o, l.gateUp, l.down])];
    for (const s of shards) for (const x of s.shards) x.buffer.destroy();
    for (const v of Object.values(this.buffers)) {
      if (Array.isArray(v)) v.forEach((x) => x.destroy());
      else (v as GPUBuffer).destroy();
    }
    for (const staging of this.#staging) staging.destroy();
    // The device last, when nothing made on it is left.
    if (this.#ownsDevice) this.gpu.destroy();
  }
}
