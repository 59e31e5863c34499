/**
 * Writes the shipped tiny models, deterministically (`deno task fixture`):
 *
 * - `models/ernie-tiny/`: torch layout (`model.*`, `[out, in]`, separate
 *   q/k/v and gate/up), BF16, with the real ERNIE-4.5 config and tokenizer files;
 * - `models/ernie-tiny-paddle/`: the same weights in Paddle layout (`ernie.*`,
 *   `[in, out]`, fused qkv and gate|up columns, U16 raw bf16 bits), and the
 *   same tokenizer as a SentencePiece `tokenizer.model` (no tokenizer.json).
 *
 * `makeModelDir` also writes a model with any other shape (the benchmark uses
 * the real 0.3B shapes), streaming one tensor at a time.
 *
 * @module
 */

import { join } from "node:path";
import { Tokenizer } from "@huggingface/tokenizers";
import { f32ToBf16Bits, SafetensorsWriter, type TensorSpec } from "../engine/loader/safetensors.ts";
import { BYTE_BASE, SPECIAL_TOKENS } from "./_bpe.ts";
import { hashString, Rng } from "./_random.ts";
import { buildTokenizerFiles, type TokenizerFiles } from "./_tokenizer_files.ts";
import { encodeSentencePieceModel, fixtureSentencePieceModel } from "./_sentencepiece.ts";

/** The tiny model's config.json, in the real ERNIE-4.5 format (vocab_size is filled in). */
export const TINY_CONFIG: Readonly<Record<string, unknown>> = Object.freeze({
  architectures: ["Ernie4_5ForCausalLM"],
  bos_token_id: 1,
  eos_token_id: 2,
  head_dim: 32,
  hidden_act: "silu",
  hidden_size: 64,
  intermediate_size: 160,
  max_position_embeddings: 2048,
  model_type: "ernie4_5",
  num_attention_heads: 4,
  num_hidden_layers: 2,
  num_key_value_heads: 2,
  pad_token_id: 0,
  rms_norm_eps: 1e-5,
  rope_theta: 500000,
  tie_word_embeddings: true,
  torch_dtype: "bfloat16",
  use_bias: false,
  use_cache: true,
});

/** Overrides that give ERNIE-4.5-0.3B's real shapes (for benchmarks). */
export const REAL_0_3B_OVERRIDES: Readonly<Record<string, unknown>> = Object.freeze({
  hidden_size: 1024,
  intermediate_size: 3072,
  num_hidden_layers: 18,
  num_attention_heads: 16,
  num_key_value_heads: 2,
  head_dim: 128,
  vocab_size: 103424,
  max_position_embeddings: 131072,
});

/** generation_config.json like the real Base repo's. */
const GENERATION_CONFIG = {
  bos_token_id: 1,
  do_sample: true,
  eos_token_id: 2,
  pad_token_id: 0,
  repetition_penalty: 1.0,
  temperature: 0.8,
  top_p: 0.8,
};

/** Options of {@link makeModelDir}. */
export interface MakeModelOptions {
  /** Seed of all weights (default 1234). */
  readonly seed?: number;
  /** Checkpoint layout to write (default "torch"). */
  readonly layout?: "torch" | "paddle";
  /** Prebuilt tokenizer files (default: trained anew, under a second). */
  readonly tokenizer?: TokenizerFiles;
  /**
   * Tokenizer file to write: Hugging Face `tokenizer.json` (default for the
   * torch layout) or SentencePiece `tokenizer.model` (default for Paddle,
   * which ships no tokenizer.json). The other one is removed if present.
   */
  readonly tokenizerFile?: "tokenizer.json" | "tokenizer.model";
}

/** The tokenizer size rounded up to a multiple of 64, plus 64 rows of padding vocab. */
export function paddedVocabSize(tokenizerSize: number): number {
  return Math.ceil(tokenizerSize / 64) * 64 + 64;
}

/** Random bf16 bits [rows, cols]: mean + std(row)·N(0, 1), drawn row by row from `rng`. */
function randomBf16(
  rng: Rng,
  rows: number,
  cols: number,
  std: (row: number) => number,
  mean = 0,
): Uint16Array {
  const f = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) rng.fillNormal(f, r * cols, cols, mean, std(r));
  return f32ToBf16Bits(f);
}

/**
 * Weight gains over N(0, 1/in). With tied embeddings the residual stream
 * starts as E[id], so logits favour repeating the last token; layers must
 * write enough into the stream to outvote that echo (OUT_GAIN), and sharper
 * attention (QK_GAIN) makes the output depend on position and context, so a
 * wrong kernel changes greedy choices.
 */
const QK_GAIN = 2;
const OUT_GAIN = 4;

/** [rows, cols] → [cols, rows] of bf16 bits. */
function transposeBits(src: Uint16Array, rows: number, cols: number): Uint16Array {
  const out = new Uint16Array(src.length);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = src[r * cols + c]!;
  }
  return out;
}

const asBytes = (a: Uint16Array) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

/** A checkpoint tensor and how to produce its bytes. */
interface Item extends TensorSpec {
  readonly chunks: () => Iterable<Uint8Array>;
}

/**
 * Writes a complete model directory: config.json (TINY_CONFIG + overrides),
 * generation_config.json, tokenizer files and model.safetensors with random
 * bf16 weights (embedding std 1, linear weights N(0, 1/in), norms 1 + 0.1·N).
 * Weights depend only on the seed and the shapes, not on the layout, so the
 * torch and Paddle checkpoints of one seed hold the same numbers.
 *
 * @example
 * ```ts
 * await makeModelDir(await Deno.makeTempDir(), REAL_0_3B_OVERRIDES, { seed: 7 });
 * ```
 */
export async function makeModelDir(
  dir: string,
  configOverrides: Record<string, unknown> = {},
  opts: MakeModelOptions = {},
): Promise<void> {
  const tok = opts.tokenizer ?? buildTokenizerFiles();
  const seed = opts.seed ?? 1234;
  const paddle = (opts.layout ?? "torch") === "paddle";
  const config: Record<string, unknown> = {
    ...TINY_CONFIG,
    vocab_size: paddedVocabSize(tok.size),
    ...configOverrides,
  };
  const num = (k: string) => config[k] as number;
  const [h, inter, layers, heads, kvHeads] = [
    num("hidden_size"),
    num("intermediate_size"),
    num("num_hidden_layers"),
    num("num_attention_heads"),
    num("num_key_value_heads"),
  ];
  const headDim = (config["head_dim"] as number | undefined) ?? h / heads;
  const [vocab, q, kv] = [num("vocab_size"), heads * headDim, kvHeads * headDim];
  const tied = config["tie_word_embeddings"] !== false;

  await Deno.mkdir(dir, { recursive: true });
  const writeJson = (name: string, v: unknown) =>
    Deno.writeTextFile(join(dir, name), JSON.stringify(v, null, 2) + "\n");
  await writeJson("config.json", config);
  await writeJson("generation_config.json", GENERATION_CONFIG);
  // --- tokenizer.json or SentencePiece tokenizer.model (see _sentencepiece.ts) ---
  const tokenizerFile = opts.tokenizerFile ?? (paddle ? "tokenizer.model" : "tokenizer.json");
  const other = tokenizerFile === "tokenizer.json" ? "tokenizer.model" : "tokenizer.json";
  await Deno.remove(join(dir, other)).catch((e) => {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  });
  if (tokenizerFile === "tokenizer.json") await writeJson("tokenizer.json", tok.tokenizerJson);
  else {
    const model = fixtureSentencePieceModel(tok.tokenizerJson);
    await Deno.writeFile(join(dir, "tokenizer.model"), encodeSentencePieceModel(model));
  }
  // --- end tokenizer file ---
  await writeJson("tokenizer_config.json", tok.tokenizerConfig);

  // Canonical tensors ([out, in], rows Q|K|V and GATE|UP), one layer cached at a time.
  const rngFor = (name: string) => new Rng((seed ^ hashString(name)) >>> 0);
  const cache = new Map<string, Uint16Array>();
  const layerOf = (name: string) => name.split(".").slice(0, 2).join("."); // "layers.3" or "embed"
  let cachedLayer = "";
  const canonical = (
    name: string,
    rows: number,
    cols: number,
    std: (row: number) => number,
    mean = 0,
  ) => {
    if (layerOf(name) !== cachedLayer) {
      cache.clear(); // a new layer: drop the previous one's tensors
      cachedLayer = layerOf(name);
    }
    let t = cache.get(name);
    if (t === undefined) {
      t = randomBf16(rngFor(name), rows, cols, std, mean);
      cache.set(name, t);
    }
    return t;
  };
  const gain = (name: string, row: number) =>
    name.endsWith(".qkv") ? (row < q + kv ? QK_GAIN : 1) : /\.(o|down)$/.test(name) ? OUT_GAIN : 1;
  const norm = (name: string) => () => [asBytes(canonical(name, 1, h, () => 0.1, 1))];
  // A linear weight: rows [r0, r1) of canonical `name` [rows, cols], stored
  // as is (torch) or transposed (Paddle).
  const linear = (name: string, rows: number, cols: number, r0 = 0, r1 = rows) => () => {
    const std = (row: number) => gain(name, row) / Math.sqrt(cols);
    const part = canonical(name, rows, cols, std).subarray(r0 * cols, r1 * cols);
    return [asBytes(paddle ? transposeBits(part, r1 - r0, cols) : part)];
  };
  const embedChunks = function* () {
    const rng = rngFor("embed");
    const rowsPerChunk = Math.max(1, Math.floor((1 << 20) / h));
    for (let r = 0; r < vocab; r += rowsPerChunk) {
      yield asBytes(randomBf16(rng, Math.min(rowsPerChunk, vocab - r), h, () => 1));
    }
  };

  const lin = paddle ? "U16" : "BF16";
  const shape = (rows: number, cols: number) => (paddle ? [cols, rows] : [rows, cols]);
  const p = paddle ? "ernie." : "model.";
  const items: Item[] = [
    { name: `${p}embed_tokens.weight`, dtype: lin, shape: [vocab, h], chunks: embedChunks },
  ];
  for (let i = 0; i < layers; i++) {
    const l = `${p}layers.${i}.`, n = `layers.${i}.`;
    const qkvRows = q + 2 * kv;
    items.push({
      name: `${l}input_layernorm.weight`,
      dtype: "BF16",
      shape: [h],
      chunks: norm(`${n}input_norm`),
    });
    if (paddle) {
      items.push({
        name: `${l}self_attn.qkv_proj.weight`,
        dtype: lin,
        shape: shape(qkvRows, h),
        chunks: linear(`${n}qkv`, qkvRows, h),
      });
    } else {
      const parts: [string, number, number][] = [["q", 0, q], ["k", q, q + kv], [
        "v",
        q + kv,
        qkvRows,
      ]];
      for (const [x, r0, r1] of parts) {
        items.push({
          name: `${l}self_attn.${x}_proj.weight`,
          dtype: lin,
          shape: shape(r1 - r0, h),
          chunks: linear(`${n}qkv`, qkvRows, h, r0, r1),
        });
      }
    }
    items.push(
      {
        name: `${l}self_attn.o_proj.weight`,
        dtype: lin,
        shape: shape(h, q),
        chunks: linear(`${n}o`, h, q),
      },
      {
        name: `${l}post_attention_layernorm.weight`,
        dtype: "BF16",
        shape: [h],
        chunks: norm(`${n}post_norm`),
      },
    );
    if (paddle) {
      items.push({
        name: `${l}mlp.up_gate_proj.weight`,
        dtype: lin,
        shape: shape(2 * inter, h),
        chunks: linear(`${n}gate_up`, 2 * inter, h),
      });
    } else {
      for (const [x, r0] of [["gate", 0], ["up", inter]] as const) {
        items.push({
          name: `${l}mlp.${x}_proj.weight`,
          dtype: lin,
          shape: shape(inter, h),
          chunks: linear(`${n}gate_up`, 2 * inter, h, r0, r0 + inter),
        });
      }
    }
    items.push({
      name: `${l}mlp.down_proj.weight`,
      dtype: lin,
      shape: shape(h, inter),
      chunks: linear(`${n}down`, h, inter),
    });
  }
  items.push({ name: `${p}norm.weight`, dtype: "BF16", shape: [h], chunks: norm("norm") });
  if (!tied) {
    items.push({
      name: "lm_head.weight",
      dtype: lin,
      shape: shape(vocab, h),
      chunks: linear("lm_head", vocab, h),
    });
  }

  const metadata = { format: paddle ? "np" : "pt" };
  const writer = await SafetensorsWriter.create(join(dir, "model.safetensors"), items, metadata);
  for (const item of items) {
    for (const chunk of item.chunks()) await writer.append(chunk);
  }
  await writer.close();
}

/** Checks the fixture tokenizer with @huggingface/tokenizers; throws on a mismatch. */
export function checkTokenizer(tok: TokenizerFiles): void {
  const t = new Tokenizer(tok.tokenizerJson, tok.tokenizerConfig);
  const texts = [
    "hello world",
    "This is a test",
    "Line one\nLine two\n\n  indented",
    "Numbers 12345 and 3.14",
    "Unicode: naïve café, 中文, Ελληνικά",
    "Emoji: 👋🏽 🚀!",
  ];
  for (const text of texts) {
    const ids = t.encode(text).ids;
    const back = t.decode(ids);
    if (back !== text) {
      throw new Error(`tokenizer round trip failed: ${JSON.stringify(text)} → ${ids} → ${back}`);
    }
  }
  const digits = t.encode("2024").ids;
  if (digits.length !== 4) throw new Error(`digits are not split: "2024" → ${digits}`);
  const nl = t.encode("\n").ids;
  if (nl.length !== 1 || nl[0] !== BYTE_BASE + 10) throw new Error(`"\\n" → ${nl}, expected 23`);
  SPECIAL_TOKENS.forEach((s, id) => {
    const ids = t.encode(s).ids;
    if (ids.length !== 1 || ids[0] !== id) throw new Error(`special ${s} → ${ids}, expected ${id}`);
  });
}

if (import.meta.main) {
  const root = new URL("..", import.meta.url).pathname;
  const tokenizer = buildTokenizerFiles();
  checkTokenizer(tokenizer);
  for (
    const [name, layout] of [["ernie-tiny", "torch"], ["ernie-tiny-paddle", "paddle"]] as const
  ) {
    const dir = join(root, "models", name);
    await makeModelDir(dir, {}, { layout, tokenizer });
    console.log(`wrote ${dir} (${layout} layout, tokenizer size ${tokenizer.size})`);
  }
}
