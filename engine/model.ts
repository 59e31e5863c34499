/**
 * The ERNIE-4.5 dense decoder as a sequence of GPU ops: weights uploaded once,
 * dispatches recorded once against the runner's preallocated buffers.
 *
 * @module
 */
import type { Gpu } from "./gpu/device.ts";
import * as ops from "./gpu/kernels.ts";
import type { Dispatch, KernelClass, ShardedWeight } from "./gpu/kernels.ts";
import type { AttentionLayout } from "./gpu/attention_gpu.ts";

/** The config fields the GPU model needs (a ModelConfig satisfies it). */
export interface ModelShape {
  readonly hiddenSize: number;
  readonly intermediateSize: number;
  readonly numLayers: number;
  readonly numHeads: number;
  readonly numKvHeads: number;
  readonly headDim: number;
  readonly vocabSize: number;
  readonly ropeTheta: number;
  readonly rmsNormEps: number;
  readonly compressionRatio: number;
}

/** A canonical tensor from the checkpoint loader: torch [out, in] layout. */
export interface CanonicalTensor {
  readonly shape: readonly number[];
  readonly dtype: "bf16" | "f32";
  readonly data: Uint16Array | Float32Array;
}

/**
 * Where weights come from, by canonical name: `embed`, `lm_head` (null when
 * tied), `norm`, and per layer `layers.{i}.{input_norm,qkv,o,post_norm,gate_up,down}`.
 */
export interface WeightSource {
  get(name: string): Promise<CanonicalTensor | null>;
}

interface LayerWeights {
  readonly inputNorm: GPUBuffer; // (H) f32
  readonly qkv: ShardedWeight; // ((HQ + 2·HKV)·D, H)
  readonly o: ShardedWeight; // (H, HQ·D)
  readonly postNorm: GPUBuffer; // (H) f32
  readonly gateUp: ShardedWeight; // (2·I, H): gate rows, then up rows
  readonly down: ShardedWeight; // (H, I)
}

/** The model's weights on the GPU. */
export interface ModelWeights {
  readonly embed: ShardedWeight; // (V, H)
  readonly lmHead: ShardedWeight; // (V, H); the embedding when tied
  readonly norm: GPUBuffer; // (H) f32
  readonly layers: readonly LayerWeights[];
  /** Bytes held on the GPU. */
  readonly bytes: number;
}

/**
 * The step buffers the dispatches read and write, allocated by the runner. Per
 * step: T tokens, S sequences, R output rows (the L sample rows first, then the
 * rows whose hidden state is returned); buffers are sized for the largest step.
 */
export interface StepBuffers {
  readonly step: GPUBuffer; // uniform {num_tokens: T, num_rows: R, num_logit_rows: L, 0}
  readonly ids: GPUBuffer; // (T) u32
  readonly positions: GPUBuffer; // (T) u32
  readonly slots: GPUBuffer; // (T) u32 cache slot of each token
  readonly seqOf: GPUBuffer; // (T) u32 block-table row of each token
  readonly blockTable: GPUBuffer; // (S, maxBlocks) u32
  readonly rows: GPUBuffer; // (R) u32 token index of each output row
  readonly invFreq: GPUBuffer; // (D/2) f32
  readonly hidden: GPUBuffer; // (T, H) residual stream
  readonly normed: GPUBuffer; // (T, H)
  readonly qkv: GPUBuffer; // (T, (HQ + 2·HKV)·D)
  readonly attn: GPUBuffer; // (T, HQ·D)
  readonly gateUp: GPUBuffer; // (T, 2·I)
  readonly act: GPUBuffer; // (T, I)
  readonly final: GPUBuffer; // (R, H) final-normed rows
  readonly logits: GPUBuffer; // (L, V) logits of the sample rows
  readonly sampled: GPUBuffer; // (L) u32 sampled (or argmax) ids
  readonly kCache: readonly GPUBuffer[]; // per layer (slots, HKV, D) f32, or (slots, HKV, D/2) f16 pairs
  readonly vCache: readonly GPUBuffer[]; // per layer, as kCache
  readonly decodeTiles: GPUBuffer; // (S, 2) u32 token index, 1 of each decode row (gpu-class attention)
  readonly prefillTiles: GPUBuffer; // (tiles, 2) u32 first token, count of each prefill tile (gpu class)
  readonly partials: GPUBuffer; // (T, HQ, pieces, D + 2) f32 attention partials per piece (gpu class)
}

/** The recorded passes of one step. */
export interface ForwardPlan {
  /** Embedding through the last layer, then the final norm of the output rows. */
  readonly body: readonly Dispatch[];
  /** lm_head on the first L output rows (the sample rows). */
  readonly logits: readonly Dispatch[];
  /** Greedy ids of the L sample rows. */
  readonly argmax: readonly Dispatch[];
}

function checkShape(name: string, t: CanonicalTensor, shape: readonly number[]): void {
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new Error(`Weight "${name}" has shape [${t.shape}], expected [${shape}]`);
  }
}

/** Uploads every weight, one tensor at a time, splitting large ones into binding-sized shards. */
export async function uploadWeights(
  gpu: Gpu,
  c: ModelShape,
  source: WeightSource,
): Promise<ModelWeights> {
  let bytes = 0;
  const need = async (name: string, shape: readonly number[]): Promise<CanonicalTensor> => {
    const t = await source.get(name);
    if (!t) throw new Error(`Weight "${name}" is missing from the checkpoint`);
    checkShape(name, t, shape);
    bytes += t.data.byteLength;
    return t;
  };
  const matrix = async (name: string, rows: number, cols: number) =>
    ops.uploadSharded(gpu, name, rows, cols, (await need(name, [rows, cols])).data);
  const vector = async (name: string, n: number) => {
    const t = await need(name, [n]);
    const f32 = t.data instanceof Float32Array ? t.data : widenBf16(t.data);
    return gpu.upload(name, f32);
  };
  const { hiddenSize: H, intermediateSize: I, numHeads: HQ, numKvHeads: HKV, headDim: D } = c;
  const embed = await matrix("embed", c.vocabSize, H);
  const layers: LayerWeights[] = [];
  for (let i = 0; i < c.numLayers; i++) {
    const p = `layers.${i}`;
    layers.push({
      inputNorm: await vector(`${p}.input_norm`, H),
      qkv: await matrix(`${p}.qkv`, (HQ + 2 * HKV) * D, H),
      o: await matrix(`${p}.o`, H, HQ * D),
      postNorm: await vector(`${p}.post_norm`, H),
      gateUp: await matrix(`${p}.gate_up`, 2 * I, H),
      down: await matrix(`${p}.down`, H, I),
    });
  }
  const norm = await vector("norm", H);
  const head = await source.get("lm_head");
  let lmHead = embed;
  if (head) {
    checkShape("lm_head", head, [c.vocabSize, H]);
    bytes += head.data.byteLength;
    lmHead = ops.uploadSharded(gpu, "lm_head", c.vocabSize, H, head.data);
  }
  return { embed, lmHead, norm, layers, bytes };
}

/** Widens raw bf16 bits to f32. */
export function widenBf16(bits: Uint16Array): Float32Array {
  const u32 = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) u32[i] = bits[i]! << 16;
  return new Float32Array(u32.buffer);
}

/** RoPE inverse frequencies theta^(−2i/D), rounded to f32 as the reference implementations do. */
export function ropeInvFreq(c: ModelShape): Float32Array {
  return Float32Array.from(
    { length: c.headDim / 2 },
    (_, i) => 1 / Math.pow(c.ropeTheta, (2 * i) / c.headDim),
  );
}

/**
 * Records the decoder's dispatches against the step buffers. `kernels` picks the
 * kernel class; the plan has the same ops, in the same order, in every class.
 */
export function planForward(
  gpu: Gpu,
  c: ModelShape,
  w: ModelWeights,
  b: StepBuffers,
  o: {
    blockSize: number;
    maxBlocks: number;
    validVocab: number;
    kernels: KernelClass;
    /** The KV cache holds f16 pairs (else f32). */
    kvF16: boolean;
    /** How gpu-class attention cuts the context (absent for the cpu class). */
    attention?: AttentionLayout;
  },
): ForwardPlan {
  const { hiddenSize: H, intermediateSize: I, rmsNormEps: eps, step } = { ...c, step: b.step };
  const { kernels } = o;
  const heads = { heads: c.numHeads, kvHeads: c.numKvHeads, headDim: c.headDim, kernels };
  const body: Dispatch[] = [...ops.embedding(gpu, step, b.ids, w.embed, b.hidden, { kernels })];
  w.layers.forEach((layer, i) => {
    const kv = { kCache: b.kCache[i]!, vCache: b.vCache[i]! };
    body.push(
      ops.rmsNorm(gpu, step, b.hidden, layer.inputNorm, b.normed, { hidden: H, eps, kernels }),
      ...ops.matmul(gpu, step, b.normed, layer.qkv, b.qkv, { kernels }),
      ops.rotaryKv(gpu, step, {
        qkv: b.qkv,
        positions: b.positions,
        slots: b.slots,
        invFreq: b.invFreq,
        ...kv,
      }, {
        ...heads,
        posScale: 1 / c.compressionRatio,
        kvF16: o.kvF16,
      }),
      ...ops.attention(gpu, step, {
        qkv: b.qkv,
        positions: b.positions,
        seqOf: b.seqOf,
        blockTable: b.blockTable,
        ...kv,
        out: b.attn,
        decodeTiles: b.decodeTiles,
        prefillTiles: b.prefillTiles,
        partials: b.partials,
      }, {
        ...heads,
        blockSize: o.blockSize,
        maxBlocks: o.maxBlocks,
        kvF16: o.kvF16,
        layout: o.attention,
      }),
      ...ops.matmul(gpu, step, b.attn, layer.o, b.hidden, { accumulate: true, kernels }),
      ops.rmsNorm(gpu, step, b.hidden, layer.postNorm, b.normed, { hidden: H, eps, kernels }),
      ...ops.matmul(gpu, step, b.normed, layer.gateUp, b.gateUp, { kernels }),
      ops.siluMul(gpu, step, b.gateUp, b.act, I, { kernels }),
      ...ops.matmul(gpu, step, b.act, layer.down, b.hidden, { accumulate: true, kernels }),
    );
  });
  body.push(
    ops.rmsNorm(gpu, step, b.hidden, w.norm, b.final, { hidden: H, eps, rows: b.rows, kernels }),
  );
  const logits = ops.matmul(gpu, step, b.final, w.lmHead, b.logits, { mFromRows: true, kernels });
  const argmax = [
    ops.argmax(gpu, step, b.logits, b.sampled, {
      valid: o.validVocab,
      stride: c.vocabSize,
      kernels,
    }),
  ];
  return { body, logits, argmax };
}
