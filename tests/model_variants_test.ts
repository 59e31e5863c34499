/**
 * Models the repo does not ship: other shapes (MQA, no GQA, small and large
 * head dims, odd sizes), an untied lm_head, f32 and f16 checkpoints, and a
 * sharded safetensors index. Each must match the float64 reference.
 */
import { join } from "node:path";
import { assert, assertEquals } from "./_assert.ts";
import { rng } from "./_gpu.ts";
import { backendTest } from "./_runners.ts";
import { ReferenceModel } from "./reference.ts";
import { makeModelDir } from "../tools/make_fixture.ts";
import { buildTokenizerFiles } from "../tools/_tokenizer_files.ts";
import {
  SafetensorsCheckpoint,
  toFloat32,
  writeSafetensors,
} from "../engine/loader/safetensors.ts";
import { Engine } from "../engine/engine.ts";
import { DEFAULT_SAMPLING } from "../engine/types.ts";

const tokenizer = buildTokenizerFiles();

/** Rewrites model.safetensors as F32 or F16, or as two shards with an index. */
async function rewrite(dir: string, how: "F32" | "F16" | "sharded"): Promise<void> {
  const st = await SafetensorsCheckpoint.open(dir);
  const tensors = [];
  for (const name of st.names()) {
    const raw = await st.read(name);
    if (how === "sharded") {
      tensors.push({ name, dtype: raw.dtype, shape: raw.shape, bytes: raw.bytes });
      continue;
    }
    const f32 = toFloat32(raw);
    const bytes = how === "F32" ? new Uint8Array(f32.buffer) : new Uint8Array(toF16(f32).buffer);
    tensors.push({ name, dtype: how, shape: raw.shape, bytes });
  }
  st.close();
  await Deno.remove(join(dir, "model.safetensors"));
  if (how !== "sharded") return await writeSafetensors(join(dir, "model.safetensors"), tensors);
  const half = Math.ceil(tensors.length / 2);
  const shards = [tensors.slice(0, half), tensors.slice(half)];
  const weightMap: Record<string, string> = {};
  for (const [i, part] of shards.entries()) {
    const file = `model-0000${i + 1}-of-00002.safetensors`;
    await writeSafetensors(join(dir, file), part);
    for (const t of part) weightMap[t.name] = file;
  }
  await Deno.writeTextFile(
    join(dir, "model.safetensors.index.json"),
    JSON.stringify({ metadata: {}, weight_map: weightMap }),
  );
}

/** f32 → IEEE half bits (round to nearest; the test weights are far from f16's limits). */
function toF16(src: Float32Array): Uint16Array {
  const out = new Uint16Array(src.length);
  const f = new Float32Array(1);
  const u = new Uint32Array(f.buffer);
  for (let i = 0; i < src.length; i++) {
    f[0] = src[i]!;
    const x = u[0]!;
    const sign = (x >>> 16) & 0x8000;
    const exp = ((x >>> 23) & 0xff) - 127 + 15;
    const mant = x & 0x7fffff;
    if (exp <= 0) out[i] = sign; // flush tiny values
    else out[i] = sign | (exp << 10) | Math.round(mant / 8192);
  }
  return out;
}

const VARIANTS: {
  name: string;
  config: Record<string, unknown>;
  rewrite?: "F32" | "F16" | "sharded";
}[] = [
  {
    name: "GQA 6:3, head_dim 8, odd intermediate, one layer",
    config: {
      hidden_size: 48,
      num_attention_heads: 6,
      num_key_value_heads: 3,
      head_dim: 8,
      intermediate_size: 100,
      num_hidden_layers: 1,
    },
  },
  {
    name: "MQA, head_dim 64 (q wider than hidden), f32 checkpoint",
    config: {
      hidden_size: 40,
      num_attention_heads: 2,
      num_key_value_heads: 1,
      head_dim: 64,
      intermediate_size: 72,
    },
    rewrite: "F32",
  },
  {
    name: "no GQA, untied lm_head, f16 checkpoint",
    config: {
      hidden_size: 64,
      num_attention_heads: 4,
      num_key_value_heads: 4,
      head_dim: 16,
      tie_word_embeddings: false,
    },
    rewrite: "F16",
  },
  {
    name: "head_dim 256, sharded safetensors",
    config: {
      hidden_size: 32,
      num_attention_heads: 2,
      num_key_value_heads: 1,
      head_dim: 256,
      intermediate_size: 50,
      num_hidden_layers: 3,
    },
    rewrite: "sharded",
  },
];

for (const v of VARIANTS) {
  backendTest(`a model the repo does not ship (${v.name}) matches the reference`, async (_, o) => {
    const dir = await Deno.makeTempDir({ prefix: "batchwright-variant-" });
    await makeModelDir(dir, v.config, { seed: 99, tokenizer });
    // The reference reads a single model.safetensors: load it before sharding.
    const early = v.rewrite === "sharded"
      ? await ReferenceModel.load(dir, { vocabLimit: tokenizer.size })
      : null;
    if (v.rewrite) await rewrite(dir, v.rewrite);
    const ref = early ?? await ReferenceModel.load(dir, { vocabLimit: tokenizer.size });
    const engine = await Engine.load(dir, { ...o, kvCacheMemory: 1 << 22, blockSize: 4 });
    const r = rng(v.name.length);
    const prompts = [7, 19].map((n) =>
      Array.from({ length: n }, () => 300 + Math.floor(r() * 1500))
    );
    const sampling = {
      ...DEFAULT_SAMPLING,
      temperature: 0,
      maxTokens: 8,
      ignoreEos: true,
      logprobs: true,
      topLogprobs: 3,
    };
    const results = await Promise.all(
      prompts.map((p, i) => engine.generate({ id: `v${i}`, promptIds: p, sampling })),
    );
    for (const [i, p] of prompts.entries()) {
      const got = results[i]!;
      // Compare the chosen ids' logprobs with the reference's log-softmax step by step.
      const cache = ref.newCache();
      let logits = ref.step(cache, p, 0).at(-1)!;
      for (const [s, id] of got.tokenIds.entries()) {
        let max = -Infinity;
        for (const x of logits) if (Number.isFinite(x)) max = Math.max(max, x);
        let z = 0;
        for (const x of logits) if (Number.isFinite(x)) z += Math.exp(x - max);
        const want = logits[id]! - max - Math.log(z);
        const lp = got.logprobs![s]!.logprob;
        assert(
          Math.abs(lp - want) < 1e-3 * Math.max(1, Math.abs(want)),
          `prompt ${i} step ${s}: ${lp} vs ${want}`,
        );
        let best = 0;
        for (let j = 1; j < logits.length; j++) if (logits[j]! > logits[best]!) best = j;
        assert(
          logits[best]! - logits[id]! < 1e-3,
          `prompt ${i} step ${s}: greedy chose ${id}, reference ${best}`,
        );
        logits = ref.step(cache, [id], p.length + s)[0]!;
      }
      assertEquals(got.tokenIds.length, 8);
    }
    await engine.close();
    await Deno.remove(dir, { recursive: true });
  });
}
