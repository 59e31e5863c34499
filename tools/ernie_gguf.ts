/**
 * Writes an ERNIE-4.5 model directory (torch-layout safetensors, a
 * SentencePiece-style `tokenizer.json`) as a GGUF that llama.cpp loads as
 * its `ernie4_5` architecture, the way llama.cpp's own
 * `convert_hf_to_gguf.py` does (`conversion/ernie.py`: no q/k permutation,
 * RoPE type NORM, i.e. interleaved pairs like ours). Linear weights keep their
 * dtype (BF16 stays BF16); norms become F32, as llama.cpp's converter writes
 * 1-D tensors. The benchmark uses it to run node-llama-cpp on the same model.
 *
 * `deno run -A tools/ernie_gguf.ts MODEL_DIR OUT.gguf`
 *
 * @module
 */

import { join } from "node:path";
import { loadModelConfig, type ModelConfig } from "../engine/loader/config.ts";
import {
  SafetensorsCheckpoint,
  type SafetensorsDtype,
  toFloat32,
} from "../engine/loader/safetensors.ts";
import { type GgmlType, type GgufTensor, type GgufValue, tensorBytes, writeGguf } from "./gguf.ts";

/** llama.cpp's token types (`llama_token_type`, SentencePiece's piece types). */
const TokenType = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, UNUSED: 5, BYTE: 6 } as const;

/** GGUF `general.file_type` for "mostly BF16" (`LLAMA_FTYPE_MOSTLY_BF16`). */
const FTYPE_MOSTLY_BF16 = 32;

/** The tokenizer section: tokens, scores and types for every embedding row. */
export interface GgufVocab {
  readonly tokens: string[];
  readonly scores: Float32Array;
  readonly types: Int32Array;
  readonly unkId: number;
  readonly addBos: boolean;
  readonly addEos: boolean;
  readonly chatTemplate?: string;
}

async function readJsonObject(file: string): Promise<Record<string, unknown>> {
  let text: string;
  try {
    text = await Deno.readTextFile(file);
  } catch (e) {
    throw new Error(`Cannot convert to GGUF: cannot read "${file}" (${(e as Error).message})`);
  }
  const json = JSON.parse(text) as unknown;
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    throw new Error(`Cannot convert to GGUF: "${file}" must hold a JSON object`);
  }
  return json as Record<string, unknown>;
}

/**
 * Builds llama.cpp's SentencePiece ("llama") vocabulary from `tokenizer.json`
 * and `tokenizer_config.json`, padded with `[PADi]` rows up to `vocabSize`, as
 * `_create_vocab_sentencepiece` in llama.cpp's converter does: pieces score
 * minus their id (later merges rank lower), `<0xNN>` pieces are bytes, added
 * special tokens are control tokens and `unk_token` is the unknown token.
 */
export async function ggufVocab(dir: string, vocabSize: number): Promise<GgufVocab> {
  const tokFile = join(dir, "tokenizer.json");
  const tok = await readJsonObject(tokFile);
  const model = tok["model"] as Record<string, unknown> | undefined;
  if (model?.["type"] !== "BPE" || model["byte_fallback"] !== true) {
    throw new Error(
      `Cannot convert "${tokFile}" to GGUF: field "model" must be a BPE model with byte_fallback ` +
        `(a SentencePiece-style tokenizer, as ERNIE-4.5 ships), got type ${
          JSON.stringify(model?.["type"])
        }`,
    );
  }
  const vocab = model["vocab"] as Record<string, number>;
  const tokens = Array.from({ length: vocabSize }, (_, i) => `[PAD${i}]`);
  const scores = new Float32Array(vocabSize).fill(-10000);
  const types = new Int32Array(vocabSize).fill(TokenType.UNUSED);
  for (const [piece, id] of Object.entries(vocab)) {
    if (id >= vocabSize) {
      throw new Error(
        `Cannot convert "${tokFile}" to GGUF: token "${piece}" has id ${id}, but the GGUF has only ${vocabSize} embedding rows (config.json's vocab_size, or vocabRows)`,
      );
    }
    tokens[id] = piece;
    scores[id] = -id;
    types[id] = /^<0x[0-9A-F]{2}>$/.test(piece) ? TokenType.BYTE : TokenType.NORMAL;
  }
  const added = (tok["added_tokens"] ?? []) as { id: number; content: string; special?: boolean }[];
  for (const a of added.filter((a) => a.id < vocabSize)) {
    tokens[a.id] = a.content;
    scores[a.id] = 0;
    if (a.special) types[a.id] = TokenType.CONTROL;
  }
  const unkId = vocab[String(model["unk_token"] ?? "<unk>")] ?? 0;
  types[unkId] = TokenType.UNKNOWN;
  const cfg = await readJsonObject(join(dir, "tokenizer_config.json")).catch(() => ({}));
  const chat = (cfg as Record<string, unknown>)["chat_template"];
  return {
    tokens,
    scores,
    types,
    unkId,
    addBos: (cfg as Record<string, unknown>)["add_bos_token"] === true,
    addEos: (cfg as Record<string, unknown>)["add_eos_token"] === true,
    chatTemplate: typeof chat === "string" ? chat : undefined,
  };
}

/** The `ernie4_5` hyperparameters, under the keys llama.cpp's loader reads. */
export function ernieMetadata(
  c: ModelConfig,
  v: GgufVocab,
  name: string,
): Record<string, GgufValue> {
  const u32 = (value: number): GgufValue => ({ type: "u32", value });
  const a = "ernie4_5";
  const meta: Record<string, GgufValue> = {
    "general.architecture": { type: "string", value: a },
    "general.name": { type: "string", value: name },
    "general.file_type": u32(FTYPE_MOSTLY_BF16),
    [`${a}.block_count`]: u32(c.numLayers),
    [`${a}.context_length`]: u32(c.maxPositionEmbeddings),
    [`${a}.embedding_length`]: u32(c.hiddenSize),
    [`${a}.feed_forward_length`]: u32(c.intermediateSize),
    [`${a}.attention.head_count`]: u32(c.numHeads),
    [`${a}.attention.head_count_kv`]: u32(c.numKvHeads),
    [`${a}.attention.key_length`]: u32(c.headDim),
    [`${a}.attention.value_length`]: u32(c.headDim),
    [`${a}.rope.freq_base`]: { type: "f32", value: c.ropeTheta },
    [`${a}.attention.layer_norm_rms_epsilon`]: { type: "f32", value: c.rmsNormEps },
    [`${a}.vocab_size`]: u32(c.vocabSize),
    "tokenizer.ggml.model": { type: "string", value: "llama" },
    "tokenizer.ggml.pre": { type: "string", value: "default" },
    "tokenizer.ggml.tokens": { type: "string[]", value: v.tokens },
    "tokenizer.ggml.scores": { type: "f32[]", value: v.scores },
    "tokenizer.ggml.token_type": { type: "i32[]", value: v.types },
    "tokenizer.ggml.bos_token_id": u32(c.bosTokenId),
    "tokenizer.ggml.eos_token_id": u32(c.eosTokenIds[0] ?? 2),
    "tokenizer.ggml.unknown_token_id": u32(v.unkId),
    "tokenizer.ggml.padding_token_id": u32(c.padTokenId),
    "tokenizer.ggml.add_bos_token": { type: "bool", value: v.addBos },
    "tokenizer.ggml.add_eos_token": { type: "bool", value: v.addEos },
    // ERNIE's tokenizer.json adds no dummy "▁" prefix (its normalizer only replaces spaces).
    "tokenizer.ggml.add_space_prefix": { type: "bool", value: false },
  };
  if (v.chatTemplate !== undefined) {
    meta["tokenizer.chat_template"] = { type: "string", value: v.chatTemplate };
  }
  return meta;
}

const GGML_OF: Partial<Record<SafetensorsDtype, GgmlType>> = {
  BF16: "BF16",
  F16: "F16",
  F32: "F32",
};

/** GGUF tensor name → our torch-layout safetensors name, in llama.cpp's order. */
export function ernieTensorNames(c: ModelConfig): [string, string][] {
  const names: [string, string][] = [["token_embd.weight", "model.embed_tokens.weight"]];
  for (let i = 0; i < c.numLayers; i++) {
    const [b, m] = [`blk.${i}.`, `model.layers.${i}.`];
    names.push(
      [`${b}attn_norm.weight`, `${m}input_layernorm.weight`],
      [`${b}attn_q.weight`, `${m}self_attn.q_proj.weight`],
      [`${b}attn_k.weight`, `${m}self_attn.k_proj.weight`],
      [`${b}attn_v.weight`, `${m}self_attn.v_proj.weight`],
      [`${b}attn_output.weight`, `${m}self_attn.o_proj.weight`],
      [`${b}ffn_norm.weight`, `${m}post_attention_layernorm.weight`],
      [`${b}ffn_gate.weight`, `${m}mlp.gate_proj.weight`],
      [`${b}ffn_up.weight`, `${m}mlp.up_proj.weight`],
      [`${b}ffn_down.weight`, `${m}mlp.down_proj.weight`],
    );
  }
  names.push(["output_norm.weight", "model.norm.weight"]);
  if (!c.tieWordEmbeddings) names.push(["output.weight", "lm_head.weight"]);
  return names;
}

/** Options of {@link writeErnieGguf}. */
export interface ErnieGgufOptions {
  /**
   * Keep only the first rows of the embedding (and lm_head): with the padding
   * rows gone, llama.cpp's greedy choice ranges over the same ids as ours,
   * which only samples ids the tokenizer defines. Default: all rows.
   */
  readonly vocabRows?: number;
}

/**
 * Converts the model in `dir` to a GGUF at `out`, streaming one tensor at a time.
 *
 * @example
 * ```ts
 * await writeErnieGguf("models/ernie-tiny", "/tmp/ernie-tiny.gguf");
 * ```
 */
export async function writeErnieGguf(
  dir: string,
  out: string,
  options: ErnieGgufOptions = {},
): Promise<void> {
  const full = await loadModelConfig(dir);
  const rows = options.vocabRows ?? full.vocabSize;
  if (!(rows > 0 && rows <= full.vocabSize)) {
    throw new Error(
      `Cannot convert "${dir}" to GGUF: vocabRows ${rows} is not in 1..${full.vocabSize}`,
    );
  }
  const config: ModelConfig = { ...full, vocabSize: rows };
  const st = await SafetensorsCheckpoint.open(dir);
  try {
    const tensors: GgufTensor[] = ernieTensorNames(config).map(([name, key]) => {
      if (!st.has(key)) {
        throw new Error(
          `Cannot convert "${dir}" to GGUF: tensor "${key}" is missing; only torch-layout ` +
            `checkpoints (separate q/k/v and gate/up, [out, in]) are supported`,
        );
      }
      const { dtype } = st.info(key);
      const vocabRows = name === "token_embd.weight" || name === "output.weight";
      const shape = vocabRows ? [rows, st.info(key).shape[1]!] : st.info(key).shape;
      const ne = [...shape].reverse(); // torch [out, in] → ggml ne [in, out]
      if (shape.length === 1) {
        const data = async () => new Uint8Array(toFloat32(await st.read(key)).buffer);
        return { name, type: "F32", shape: ne, data };
      }
      const type = GGML_OF[dtype];
      if (type === undefined) {
        throw new Error(
          `Cannot convert "${dir}" to GGUF: tensor "${key}" has dtype ${dtype}; BF16, F16 or F32 expected`,
        );
      }
      const bytes = tensorBytes(type, ne); // the first `rows` rows when trimmed
      return {
        name,
        type,
        shape: ne,
        data: async () => (await st.read(key)).bytes.subarray(0, bytes),
      };
    });
    const vocab = await ggufVocab(dir, rows);
    const name = dir.split("/").filter(Boolean).pop() ?? "ernie";
    await writeGguf(out, ernieMetadata(config, vocab, name), tensors);
  } finally {
    st.close();
  }
}

if (import.meta.main) {
  const [dir, out] = Deno.args;
  if (dir === undefined || out === undefined) {
    console.error("usage: deno run -A tools/ernie_gguf.ts MODEL_DIR OUT.gguf");
    Deno.exit(2);
  }
  await writeErnieGguf(dir, out);
  console.log(`wrote ${out}`);
}
