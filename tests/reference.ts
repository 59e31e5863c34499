/**
 * An independent float64 CPU reference of the ERNIE-4.5 forward pass, written
 * straight from the published model code (Hugging Face transformers'
 * `models/ernie4_5/`: RMSNorm with eps inside the root, interleaved RoPE,
 * grouped-query attention, SiLU-gated MLP), for checking the engine. It reads
 * `model.safetensors` (torch layout) with its own minimal parser and decodes
 * bf16 / f16 / f32 itself, sharing no code with `engine/loader/`.
 *
 * @module
 */

/** The shapes the reference needs, read from config.json. */
interface RefConfig {
  hidden: number;
  inter: number;
  layers: number;
  heads: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
  theta: number;
  eps: number;
  compression: number;
}

/** One layer's weights, f64, torch layout [out, in]. */
interface RefLayer {
  inputNorm: Float64Array; // [hidden]
  wq: Float64Array; // [heads·headDim, hidden]
  wk: Float64Array; // [kvHeads·headDim, hidden]
  wv: Float64Array; // [kvHeads·headDim, hidden]
  wo: Float64Array; // [hidden, heads·headDim]
  postNorm: Float64Array; // [hidden]
  wg: Float64Array; // [inter, hidden]
  wu: Float64Array; // [inter, hidden]
  wd: Float64Array; // [hidden, inter]
}

/** Keys and values of every past position: [layer][pos] → [kvHeads·headDim]. */
export interface RefCache {
  readonly k: Float64Array[][];
  readonly v: Float64Array[][];
}

function half(h: number): number {
  const s = h & 0x8000 ? -1 : 1, e = (h >> 10) & 0x1f, f = h & 0x3ff;
  if (e === 0) return s * f * 2 ** -24;
  if (e === 31) return f ? NaN : s * Infinity;
  return s * (1 + f / 1024) * 2 ** (e - 15);
}

/** Reads every tensor of one safetensors file as f64. */
async function readSafetensors(
  file: string,
): Promise<Map<string, { shape: number[]; data: Float64Array }>> {
  const buf = await Deno.readFile(file);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const n = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(buf.subarray(8, 8 + n))) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const out = new Map<string, { shape: number[]; data: Float64Array }>();
  const scratch = new DataView(new ArrayBuffer(4));
  for (const [name, e] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const base = 8 + n + e.data_offsets[0];
    const count = e.shape.reduce((a, b) => a * b, 1);
    const data = new Float64Array(count);
    for (let i = 0; i < count; i++) {
      if (e.dtype === "BF16" || e.dtype === "U16") {
        scratch.setUint32(0, view.getUint16(base + 2 * i, true) << 16); // bf16 = high half of f32
        data[i] = scratch.getFloat32(0);
      } else if (e.dtype === "F16") data[i] = half(view.getUint16(base + 2 * i, true));
      else if (e.dtype === "F32") data[i] = view.getFloat32(base + 4 * i, true);
      else throw new Error(`reference: ${file}: tensor ${name} has unsupported dtype ${e.dtype}`);
    }
    out.set(name, { shape: e.shape, data });
  }
  return out;
}

/** y = W·x for W [out, in] row-major. */
function matvec(w: Float64Array, x: Float64Array, out: number): Float64Array {
  const inp = x.length, y = new Float64Array(out);
  for (let o = 0; o < out; o++) {
    let s = 0;
    for (let i = 0; i < inp; i++) s += w[o * inp + i]! * x[i]!;
    y[o] = s;
  }
  return y;
}

/** RMSNorm: w ⊙ x / sqrt(mean(x²) + eps). */
export function rmsNorm(x: Float64Array, w: Float64Array, eps: number): Float64Array {
  let ss = 0;
  for (const v of x) ss += v * v;
  const r = 1 / Math.sqrt(ss / x.length + eps);
  return x.map((v, i) => w[i]! * v * r);
}

/**
 * Interleaved (GPT-J style) RoPE of one head vector in place:
 * out[2i] = x[2i]·cos − x[2i+1]·sin, out[2i+1] = x[2i+1]·cos + x[2i]·sin,
 * with angle = pos · theta^(−2i/headDim).
 */
export function ropeInterleaved(x: Float64Array, pos: number, theta: number): Float64Array {
  const d = x.length;
  for (let i = 0; i < d / 2; i++) {
    const angle = pos * Math.pow(theta, (-2 * i) / d);
    const c = Math.cos(angle), s = Math.sin(angle);
    const a = x[2 * i]!, b = x[2 * i + 1]!;
    x[2 * i] = a * c - b * s;
    x[2 * i + 1] = b * c + a * s;
  }
  return x;
}

/**
 * Interleaved RoPE of one head vector with the angles the model code computes
 * in f32 (angle = pos · inv_freq[i], both f32, rounded once more), then sin,
 * cos and the rotation in float64. At large positions this is the
 * model's own rotation, which the float64-angle {@linkcode ropeInterleaved}
 * differs from by up to angle · 2⁻²³.
 */
export function ropeInterleavedF32Angles(
  x: ArrayLike<number>,
  pos: number,
  invFreq: Float32Array, // (headDim / 2)
): Float64Array {
  const out = new Float64Array(x.length);
  for (let i = 0; i < x.length / 2; i++) {
    const angle = Math.fround(Math.fround(pos) * invFreq[i]!);
    const c = Math.cos(angle), s = Math.sin(angle);
    const a = x[2 * i]!, b = x[2 * i + 1]!;
    out[2 * i] = a * c - b * s;
    out[2 * i + 1] = b * c + a * s;
  }
  return out;
}

/** log-softmax of a logit vector; -Infinity entries stay -Infinity. */
export function logSoftmax(logits: Float64Array): Float64Array {
  let max = -Infinity;
  for (const v of logits) if (v > max) max = v;
  let sum = 0;
  for (const v of logits) sum += Math.exp(v - max);
  const lse = max + Math.log(sum);
  return logits.map((v) => v - lse);
}

/** Index of the largest value (the lowest index on ties). */
export function argmax(x: Float64Array): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[best]!) best = i;
  return best;
}

/**
 * The ERNIE-4.5 forward pass in float64, with its own KV cache.
 *
 * @example
 * ```ts
 * const ref = await ReferenceModel.load("models/ernie-tiny", { vocabLimit: 2142 });
 * const logits = ref.forward([1, 2, 3]); // [3][vocab]
 * ```
 */
export class ReferenceModel {
  private constructor(
    readonly config: Readonly<RefConfig>,
    private readonly embed: Float64Array, // [vocab, hidden]
    private readonly layers: RefLayer[],
    private readonly norm: Float64Array, // [hidden]
    private readonly lmHead: Float64Array, // [vocab, hidden] (the embedding when tied)
    /** Logits of ids ≥ this are -Infinity (padding vocab). */
    readonly vocabLimit: number,
  ) {}

  /** Loads `DIR/config.json` and `DIR/model.safetensors` (torch layout). */
  static async load(dir: string, opts: { vocabLimit?: number } = {}): Promise<ReferenceModel> {
    const cfg = JSON.parse(await Deno.readTextFile(`${dir}/config.json`));
    const c: RefConfig = {
      hidden: cfg.hidden_size,
      inter: cfg.intermediate_size,
      layers: cfg.num_hidden_layers,
      heads: cfg.num_attention_heads,
      kvHeads: cfg.num_key_value_heads ?? cfg.num_attention_heads,
      headDim: cfg.head_dim ?? cfg.hidden_size / cfg.num_attention_heads,
      vocab: cfg.vocab_size,
      theta: cfg.rope_theta ?? 500000,
      eps: cfg.rms_norm_eps ?? 1e-5,
      compression: cfg.compression_ratio ?? 1,
    };
    const t = await readSafetensors(`${dir}/model.safetensors`);
    const get = (name: string, shape: number[]) => {
      const e = t.get(name);
      if (e === undefined) throw new Error(`reference: ${dir}: no tensor ${name}`);
      if (e.shape.join() !== shape.join()) {
        throw new Error(`reference: ${dir}: ${name} is [${e.shape}], expected [${shape}]`);
      }
      return e.data;
    };
    const { hidden: h, inter, heads, kvHeads, headDim } = c;
    const layers: RefLayer[] = [];
    for (let i = 0; i < c.layers; i++) {
      const p = `model.layers.${i}.`;
      layers.push({
        inputNorm: get(`${p}input_layernorm.weight`, [h]),
        wq: get(`${p}self_attn.q_proj.weight`, [heads * headDim, h]),
        wk: get(`${p}self_attn.k_proj.weight`, [kvHeads * headDim, h]),
        wv: get(`${p}self_attn.v_proj.weight`, [kvHeads * headDim, h]),
        wo: get(`${p}self_attn.o_proj.weight`, [h, heads * headDim]),
        postNorm: get(`${p}post_attention_layernorm.weight`, [h]),
        wg: get(`${p}mlp.gate_proj.weight`, [inter, h]),
        wu: get(`${p}mlp.up_proj.weight`, [inter, h]),
        wd: get(`${p}mlp.down_proj.weight`, [h, inter]),
      });
    }
    const embed = get("model.embed_tokens.weight", [c.vocab, h]);
    const tied = cfg.tie_word_embeddings ?? true;
    const lmHead = tied ? embed : get("lm_head.weight", [c.vocab, h]);
    const norm = get("model.norm.weight", [h]);
    return new ReferenceModel(c, embed, layers, norm, lmHead, opts.vocabLimit ?? c.vocab);
  }

  /** An empty KV cache. */
  newCache(): RefCache {
    return {
      k: this.layers.map(() => []),
      v: this.layers.map(() => []),
    };
  }

  /**
   * Runs `ids` at positions startPos.. (startPos must equal the cached length)
   * and returns their logits, [ids.length][vocab].
   */
  step(cache: RefCache, ids: readonly number[], startPos: number): Float64Array[] {
    return this.#normed(cache, ids, startPos).map((x) => {
      const logits = matvec(this.lmHead, x, this.config.vocab);
      logits.fill(-Infinity, this.vocabLimit);
      return logits;
    });
  }

  /**
   * The final hidden state (after the last RMSNorm, before the LM head) of the
   * last position of a prompt, [hidden]: what a last-token embedding pools.
   */
  hidden(ids: readonly number[]): Float64Array {
    return this.#normed(this.newCache(), ids, 0).at(-1)!;
  }

  /** The final hidden states of every position of a prompt, [T][hidden]: what mean pooling averages. */
  hiddenStates(ids: readonly number[]): Float64Array[] {
    return this.#normed(this.newCache(), ids, 0);
  }

  /** The decoder layers and the final RMSNorm over `ids` at startPos.., [ids.length][hidden]. */
  #normed(cache: RefCache, ids: readonly number[], startPos: number): Float64Array[] {
    const c = this.config;
    if (cache.k[0] !== undefined && cache.k[0].length !== startPos) {
      throw new Error(`reference: startPos ${startPos} ≠ cached length ${cache.k[0].length}`);
    }
    const { hidden: h, heads, kvHeads, headDim: hd } = c;
    const group = heads / kvHeads;
    // [T][hidden]
    const xs = ids.map((id) => this.embed.slice(id * h, (id + 1) * h));
    for (let l = 0; l < this.layers.length; l++) {
      const L = this.layers[l]!;
      const ks = cache.k[l]!, vs = cache.v[l]!;
      const qs: Float64Array[] = [];
      ids.forEach((_, t) => {
        const a = rmsNorm(xs[t]!, L.inputNorm, c.eps);
        const pos = (startPos + t) / c.compression;
        const q = matvec(L.wq, a, heads * hd), k = matvec(L.wk, a, kvHeads * hd);
        for (let j = 0; j < heads; j++) {
          ropeInterleaved(q.subarray(j * hd, (j + 1) * hd), pos, c.theta);
        }
        for (let j = 0; j < kvHeads; j++) {
          ropeInterleaved(k.subarray(j * hd, (j + 1) * hd), pos, c.theta);
        }
        qs.push(q);
        ks.push(k);
        vs.push(matvec(L.wv, a, kvHeads * hd));
      });
      ids.forEach((_, t) => {
        const q = qs[t]!, n = startPos + t + 1; // causal: positions 0..startPos+t
        const attn = new Float64Array(heads * hd); // [heads·headDim]
        for (let j = 0; j < heads; j++) {
          const kvh = Math.floor(j / group);
          const s = new Float64Array(n);
          for (let p = 0; p < n; p++) {
            let dot = 0;
            for (let d = 0; d < hd; d++) dot += q[j * hd + d]! * ks[p]![kvh * hd + d]!;
            s[p] = dot / Math.sqrt(hd);
          }
          const pr = logSoftmax(s).map(Math.exp);
          for (let p = 0; p < n; p++) {
            for (let d = 0; d < hd; d++) attn[j * hd + d]! += pr[p]! * vs[p]![kvh * hd + d]!;
          }
        }
        const x = xs[t]!;
        const o = matvec(L.wo, attn, h);
        for (let i = 0; i < h; i++) x[i]! += o[i]!;
        const m = rmsNorm(x, L.postNorm, c.eps);
        const g = matvec(L.wg, m, c.inter), u = matvec(L.wu, m, c.inter);
        const act = g.map((z, i) => (z / (1 + Math.exp(-z))) * u[i]!); // silu(g) ⊙ u
        const d = matvec(L.wd, act, h);
        for (let i = 0; i < h; i++) x[i]! += d[i]!;
      });
    }
    return xs.map((x) => rmsNorm(x, this.norm, c.eps));
  }

  /** Logits of every position of a prompt, [T][vocab]. */
  forward(ids: readonly number[]): Float64Array[] {
    return this.step(this.newCache(), ids, 0);
  }

  /**
   * Greedy decoding: up to `n` new ids; stops at an id in `eosIds`, which is
   * included in the result (as in vLLM's output token ids).
   */
  greedy(promptIds: readonly number[], n: number, eosIds: readonly number[] = []): number[] {
    const cache = this.newCache();
    let logits = this.step(cache, promptIds, 0).at(-1)!;
    const out: number[] = [];
    while (out.length < n) {
      const id = argmax(logits);
      out.push(id);
      if (eosIds.includes(id)) break;
      logits = this.step(cache, [id], promptIds.length + out.length - 1)[0]!;
    }
    return out;
  }
}
