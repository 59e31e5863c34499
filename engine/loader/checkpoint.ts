/**
 * Turns whatever layout a checkpoint has into canonical torch-layout tensors
 * (`[out, in]`, fused QKV and gate/up rows), one at a time, so memory stays
 * bounded by the largest tensor. Three layouts occur in published checkpoints:
 * torch (`model.` prefix, separate q/k/v and gate/up), torch with fused
 * `qkv_proj` / `up_gate_proj` rows (sometimes under `ernie.`), and Paddle
 * (`ernie.` prefix, `[in, out]`, fused columns). The orientation of the whole
 * checkpoint is decided once from a weight whose two dimensions differ.
 *
 * Canonical names and shapes:
 * ```
 * embed                 [vocab, hidden]
 * layers.{i}.input_norm [hidden]
 * layers.{i}.qkv        [(heads + 2·kvHeads)·headDim, hidden]   rows Q | K | V
 * layers.{i}.o          [hidden, heads·headDim]
 * layers.{i}.post_norm  [hidden]
 * layers.{i}.gate_up    [2·intermediate, hidden]                rows GATE | UP
 * layers.{i}.down       [hidden, intermediate]
 * norm                  [hidden]
 * lm_head               [vocab, hidden]   only when embeddings are not tied
 * ```
 *
 * @module
 */

import type { ModelConfig } from "./config.ts";
import { bf16Bits, type RawTensor, SafetensorsCheckpoint, toFloat32 } from "./safetensors.ts";

/** One canonical tensor: bf16 weights stay raw bits (lossless); f16/f32 become f32. */
export interface CanonicalTensor {
  readonly name: string;
  readonly shape: readonly number[];
  readonly dtype: "bf16" | "f32";
  /** bf16 bits when dtype is "bf16", else f32 values; row-major over `shape`. */
  readonly data: Uint16Array | Float32Array;
}

/** How the checkpoint stores its weights. */
export interface CheckpointLayout {
  /** Key prefix of the decoder tensors: `"model."` or `"ernie."`. */
  readonly prefix: string;
  /** Linear weights stored `[in, out]` (Paddle) rather than `[out, in]` (torch). */
  readonly transposed: boolean;
  readonly fusedQkv: boolean;
  readonly fusedGateUp: boolean;
}

/** Where one canonical tensor's parts come from; parts stack along rows. */
interface Plan {
  readonly name: string;
  readonly shape: readonly number[];
  readonly kind: "norm" | "weight";
  readonly parts: readonly { key: string; transpose: boolean }[];
}

type InfoFn = (key: string) => { shape: readonly number[] } | undefined;

const same = (a: readonly number[], b: readonly number[]) =>
  a.length === b.length && a.every((d, i) => d === b[i]);
const fmt = (s: readonly number[]) => `[${s.join(", ")}]`;

/**
 * Decides prefix, orientation and fusion from tensor names and shapes. The
 * orientation comes from the first layer-0 weight whose dimensions differ;
 * a square one (e.g. `o_proj` when heads·headDim = hidden) cannot tell.
 *
 * @example
 * ```ts ignore
 * const layout = detectLayout((k) => ckpt.has(k) ? ckpt.info(k) : undefined, config, "dir");
 * ```
 */
export function detectLayout(info: InfoFn, c: ModelConfig, source: string): CheckpointLayout {
  const prefix = ["model.", "ernie."].find((p) => info(`${p}embed_tokens.weight`) !== undefined);
  if (prefix === undefined) {
    throw new Error(
      `Cannot load checkpoint "${source}": no "model.embed_tokens.weight" or "ernie.embed_tokens.weight"; is this an ERNIE-4.5 checkpoint?`,
    );
  }
  const l0 = `${prefix}layers.0.`;
  const fusedQkv = info(`${l0}self_attn.qkv_proj.weight`) !== undefined;
  const fusedGateUp = info(`${l0}mlp.up_gate_proj.weight`) !== undefined;
  const q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim, h = c.hiddenSize;
  const inter = c.intermediateSize;
  // [key, torch shape [out, in]]
  const candidates: [string, number[]][] = [
    ["mlp.up_gate_proj.weight", [2 * inter, h]],
    ["self_attn.qkv_proj.weight", [q + 2 * kv, h]],
    ["mlp.gate_proj.weight", [inter, h]],
    ["mlp.down_proj.weight", [h, inter]],
    ["self_attn.q_proj.weight", [q, h]],
    ["self_attn.k_proj.weight", [kv, h]],
    ["self_attn.o_proj.weight", [h, q]],
  ];
  for (const [key, torch] of candidates) {
    const got = info(l0 + key)?.shape;
    if (got === undefined || torch[0] === torch[1]) continue;
    if (same(got, torch)) return { prefix, transposed: false, fusedQkv, fusedGateUp };
    if (same(got, [torch[1]!, torch[0]!])) {
      return { prefix, transposed: true, fusedQkv, fusedGateUp };
    }
    throw new Error(
      `Cannot load checkpoint "${source}": tensor "${l0 + key}" has shape ${fmt(got)}, expected ${
        fmt(torch)
      } ([out, in]) or its transpose for this config.json`,
    );
  }
  throw new Error(
    `Cannot load checkpoint "${source}": cannot tell whether linear weights are [out, in] or [in, out] (no layer-0 weight with two different dimensions)`,
  );
}

/** The canonical tensors of a config and where each comes from in a layout. */
function makePlans(c: ModelConfig, layout: CheckpointLayout, info: InfoFn): Plan[] {
  const { prefix, transposed: t } = layout;
  const q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim, h = c.hiddenSize;
  const inter = c.intermediateSize;
  const one = (key: string, transpose = t) => [{ key, transpose }];
  const plans: Plan[] = [
    {
      name: "embed",
      shape: [c.vocabSize, h],
      kind: "weight",
      parts: one(`${prefix}embed_tokens.weight`, false),
    },
  ];
  for (let i = 0; i < c.numLayers; i++) {
    const l = `${prefix}layers.${i}.`;
    const n = `layers.${i}.`;
    const qkv = layout.fusedQkv
      ? one(`${l}self_attn.qkv_proj.weight`)
      : ["q", "k", "v"].flatMap((x) => one(`${l}self_attn.${x}_proj.weight`));
    const gateUp = layout.fusedGateUp
      ? one(`${l}mlp.up_gate_proj.weight`)
      : ["gate", "up"].flatMap((x) => one(`${l}mlp.${x}_proj.weight`));
    plans.push(
      {
        name: `${n}input_norm`,
        shape: [h],
        kind: "norm",
        parts: one(`${l}input_layernorm.weight`, false),
      },
      { name: `${n}qkv`, shape: [q + 2 * kv, h], kind: "weight", parts: qkv },
      { name: `${n}o`, shape: [h, q], kind: "weight", parts: one(`${l}self_attn.o_proj.weight`) },
      {
        name: `${n}post_norm`,
        shape: [h],
        kind: "norm",
        parts: one(`${l}post_attention_layernorm.weight`, false),
      },
      { name: `${n}gate_up`, shape: [2 * inter, h], kind: "weight", parts: gateUp },
      {
        name: `${n}down`,
        shape: [h, inter],
        kind: "weight",
        parts: one(`${l}mlp.down_proj.weight`),
      },
    );
  }
  plans.push({ name: "norm", shape: [h], kind: "norm", parts: one(`${prefix}norm.weight`, false) });
  if (!c.tieWordEmbeddings) {
    // An untied lm_head may be stored either way; when vocab ≠ hidden its shape tells.
    const lm = info("lm_head.weight")?.shape;
    const lmT = lm !== undefined && c.vocabSize !== h ? same(lm, [h, c.vocabSize]) : t;
    plans.push({
      name: "lm_head",
      shape: [c.vocabSize, h],
      kind: "weight",
      parts: one("lm_head.weight", lmT),
    });
  }
  return plans;
}

/** Row counts of each part of a plan: the split of the canonical rows. */
function partRows(plan: Plan, c: ModelConfig): number[] {
  const rows = plan.shape[0]!;
  if (plan.parts.length === 1) return [rows];
  if (plan.parts.length === 2) return [rows / 2, rows / 2]; // gate, up
  return [c.numHeads * c.headDim, c.numKvHeads * c.headDim, c.numKvHeads * c.headDim]; // q, k, v
}

/** Transposes a row-major [rows, cols] matrix into [cols, rows], in tiles. */
function transpose<T extends Uint16Array | Float32Array>(
  src: T,
  rows: number,
  cols: number,
  out: T,
): T {
  const B = 64;
  for (let r0 = 0; r0 < rows; r0 += B) {
    for (let c0 = 0; c0 < cols; c0 += B) {
      const r1 = Math.min(r0 + B, rows), c1 = Math.min(c0 + B, cols);
      for (let r = r0; r < r1; r++) {
        for (let col = c0; col < c1; col++) out[col * rows + r] = src[r * cols + col]!;
      }
    }
  }
  return out;
}

/**
 * A model checkpoint read as canonical tensors. All shapes are checked
 * against the config when it opens, before any data is read.
 *
 * @example
 * ```ts
 * import { loadModelConfig } from "./config.ts";
 * const config = await loadModelConfig("models/ernie-tiny");
 * const ckpt = await Checkpoint.open("models/ernie-tiny", config);
 * for await (const t of ckpt.tensors()) console.log(t.name, t.shape);
 * ckpt.close();
 * ```
 */
export class Checkpoint {
  private constructor(
    private readonly st: SafetensorsCheckpoint,
    private readonly config: ModelConfig,
    readonly layout: CheckpointLayout,
    private readonly plans: Map<string, Plan>,
  ) {}

  /** Opens the safetensors files in `dir`, detects the layout and checks every shape. */
  static async open(dir: string, config: ModelConfig): Promise<Checkpoint> {
    const st = await SafetensorsCheckpoint.open(dir);
    try {
      const info = (k: string) => (st.has(k) ? st.info(k) : undefined);
      const layout = detectLayout(info, config, dir);
      const plans = makePlans(config, layout, info);
      for (const plan of plans) {
        const rows = partRows(plan, config);
        plan.parts.forEach((part, j) => {
          const cols = plan.shape.length === 2 ? plan.shape[1]! : undefined;
          const want = cols === undefined
            ? [plan.shape[0]!]
            : part.transpose
            ? [cols, rows[j]!]
            : [rows[j]!, cols];
          const got = info(part.key)?.shape;
          if (got === undefined) {
            throw new Error(`Cannot load checkpoint "${dir}": tensor "${part.key}" is missing`);
          }
          if (!same(got, want)) {
            throw new Error(
              `Cannot load checkpoint "${dir}": tensor "${part.key}" has shape ${
                fmt(got)
              }, expected ${fmt(want)} (from config.json, ${
                part.transpose ? "[in, out]" : "torch"
              } layout)`,
            );
          }
        });
      }
      return new Checkpoint(st, config, layout, new Map(plans.map((p) => [p.name, p])));
    } catch (e) {
      st.close();
      throw e;
    }
  }

  /** Canonical tensor names, in model order. */
  names(): string[] {
    return [...this.plans.keys()];
  }

  /** Shape of a canonical tensor without reading it. */
  shape(name: string): readonly number[] {
    return this.plan(name).shape;
  }

  /** Reads, converts and (if needed) transposes and stacks one canonical tensor. */
  async get(name: string): Promise<CanonicalTensor> {
    const plan = this.plan(name);
    const raws: RawTensor[] = [];
    for (const p of plan.parts) raws.push(await this.st.read(p.key));
    if (plan.kind === "norm") {
      return { name, shape: plan.shape, dtype: "f32", data: toFloat32(raws[0]!) };
    }
    const bf16 = raws.every((r) => r.dtype === "BF16" || r.dtype === "U16");
    if (raws.length === 1 && !plan.parts[0]!.transpose) {
      // Already canonical: no copy (the embedding of the real model is 200 MB).
      const raw = raws[0]!;
      return bf16
        ? { name, shape: plan.shape, dtype: "bf16", data: bf16Bits(raw) }
        : { name, shape: plan.shape, dtype: "f32", data: toFloat32(raw) };
    }
    const cols = plan.shape[1]!;
    const rows = partRows(plan, this.config);
    const size = plan.shape[0]! * cols;
    const data = bf16 ? new Uint16Array(size) : new Float32Array(size);
    let offset = 0;
    raws.forEach((raw, j) => {
      const r = rows[j]!;
      const src = bf16 ? bf16Bits(raw) : toFloat32(raw);
      const dst = data.subarray(offset, offset + r * cols);
      // stored [cols, r] ([in, out]) when transposed, else [r, cols]
      if (plan.parts[j]!.transpose) transpose(src, cols, r, dst);
      else dst.set(src);
      offset += r * cols;
    });
    return bf16
      ? { name, shape: plan.shape, dtype: "bf16", data }
      : { name, shape: plan.shape, dtype: "f32", data };
  }

  /** Yields every canonical tensor in model order, one read at a time. */
  async *tensors(): AsyncGenerator<CanonicalTensor> {
    for (const name of this.plans.keys()) yield await this.get(name);
  }

  /** Closes the underlying files. */
  close(): void {
    this.st.close();
  }

  private plan(name: string): Plan {
    const p = this.plans.get(name);
    if (p === undefined) throw new Error(`Checkpoint has no canonical tensor "${name}"`);
    return p;
  }
}
