import { assert, assertEquals, assertRejects, assertThrows } from "./_assert.ts";
import { join } from "node:path";
import { Template } from "@huggingface/jinja";
import { Tokenizer } from "@huggingface/tokenizers";
import {
  loadGenerationConfig,
  loadModelConfig,
  type ModelConfig,
  parseModelConfig,
} from "../engine/loader/config.ts";
import {
  bf16Bits,
  f16ToNumber,
  type NamedTensor,
  SafetensorsCheckpoint,
  toFloat32,
  writeSafetensors,
} from "../engine/loader/safetensors.ts";
import { Checkpoint, detectLayout } from "../engine/loader/checkpoint.ts";
import { makeModelDir } from "../tools/make_fixture.ts";
import { buildTokenizerFiles } from "../tools/_tokenizer_files.ts";

const root = new URL("..", import.meta.url).pathname;
const TINY = join(root, "models/ernie-tiny");
const PADDLE = join(root, "models/ernie-tiny-paddle");
const tinyJson = () => JSON.parse(Deno.readTextFileSync(join(TINY, "config.json")));

/** Element-wise equality that reports the first differing index and both values. */
function assertSameValues(got: ArrayLike<number>, want: ArrayLike<number>, what: string): void {
  assertEquals(got.length, want.length, `${what}: length`);
  for (let i = 0; i < got.length; i++) {
    if (!Object.is(got[i], want[i])) {
      throw new Error(`${what}: index ${i} is ${got[i]}, expected ${want[i]}`);
    }
  }
}

/** A pattern matching `s` literally. */
const re = (s: string) => new RegExp(s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));

const bytesOf = (a: Uint16Array | Float32Array) =>
  new Uint8Array(a.buffer, a.byteOffset, a.byteLength);

Deno.test("config: the tiny model parses into a frozen typed config", async () => {
  const c = await loadModelConfig(TINY);
  assertEquals([c.hiddenSize, c.numHeads, c.numKvHeads, c.headDim], [64, 4, 2, 32]);
  assertEquals(c.eosTokenIds, [2]);
  assertEquals([c.tieWordEmbeddings, c.compressionRatio, c.torchDtype], [true, 1, "bfloat16"]);
  assertEquals(c.vocabSize % 64, 0);
  assert(Object.isFrozen(c));
});

Deno.test("config: a missing or mistyped field names the file and the field", () => {
  const file = "some/dir/config.json";
  const missing = { ...tinyJson() };
  delete missing.hidden_size;
  assertThrows(
    () => parseModelConfig(missing, file),
    re(`Cannot load model "some/dir/config.json": field "hidden_size"`),
  );
  assertThrows(
    () => parseModelConfig({ ...tinyJson(), num_hidden_layers: "2" }, file),
    re(`field "num_hidden_layers" must be a positive integer`),
  );
  assertThrows(() => parseModelConfig({ ...tinyJson(), rope_theta: -1 }, file), re(`"rope_theta"`));
  assertThrows(() => parseModelConfig([], file), re(file));
});

Deno.test("config: unsupported architectures are rejected clearly", () => {
  const f = "m/config.json";
  assertThrows(() => parseModelConfig({ ...tinyJson(), use_bias: true }, f), re(`"use_bias"`));
  assertThrows(() => parseModelConfig({ ...tinyJson(), hidden_act: "gelu" }, f), re("silu"));
  assertThrows(
    () => parseModelConfig({ ...tinyJson(), num_key_value_heads: 3 }, f),
    re(`"num_key_value_heads"`),
  );
});

Deno.test("config: defaults and list-valued eos_token_id", () => {
  const j = { ...tinyJson(), eos_token_id: [2, 4] };
  delete j.head_dim;
  delete j.tie_word_embeddings;
  const c = parseModelConfig(j, "x");
  assertEquals(c.headDim, 16);
  assertEquals(c.tieWordEmbeddings, true);
  assertEquals(c.eosTokenIds, [2, 4]);
});

Deno.test("config: a model directory without config.json says so", async () => {
  const dir = await Deno.makeTempDir();
  await assertRejects(() => loadModelConfig(dir), re(join(dir, "config.json")));
  assertEquals(await loadGenerationConfig(dir), {});
  await Deno.remove(dir, { recursive: true });
});

Deno.test("config: generation_config.json gives the sampling defaults", async () => {
  const g = await loadGenerationConfig(TINY);
  assertEquals(g, {
    temperature: 0.8,
    topP: 0.8,
    repetitionPenalty: 1,
    doSample: true,
    eosTokenIds: [2],
  });
});

Deno.test("safetensors: BF16, F16, F32 and U16 round trip through a sharded index", async () => {
  const dir = await Deno.makeTempDir();
  const f32 = new Float32Array([1.5, -2, 3.25, 0, 1e-8, -Infinity]);
  const f16 = new Uint16Array([0x3c00, 0xc000, 0x0001, 0x7c00, 0xfc00, 0x0000]); // 1, -2, 2^-24, inf, -inf, 0
  const bf16 = new Uint16Array([0x3f80, 0xc000, 0x4049, 0x0000]); // 1, -2, 3.140625, 0
  const a: NamedTensor[] = [
    { name: "a.f32", dtype: "F32", shape: [2, 3], bytes: bytesOf(f32) },
    { name: "a.f16", dtype: "F16", shape: [6], bytes: bytesOf(f16) },
  ];
  const b: NamedTensor[] = [
    { name: "b.bf16", dtype: "BF16", shape: [2, 2], bytes: bytesOf(bf16) },
    { name: "b.u16", dtype: "U16", shape: [4], bytes: bytesOf(bf16) },
  ];
  await writeSafetensors(join(dir, "s1.safetensors"), a, { format: "pt" });
  await writeSafetensors(join(dir, "s2.safetensors"), b);
  const weightMap = { "a.f32": "s1.safetensors", "a.f16": "s1.safetensors" } as Record<
    string,
    string
  >;
  weightMap["b.bf16"] = weightMap["b.u16"] = "s2.safetensors";
  await Deno.writeTextFile(
    join(dir, "model.safetensors.index.json"),
    JSON.stringify({ metadata: {}, weight_map: weightMap }),
  );
  const ckpt = await SafetensorsCheckpoint.open(dir);
  assertEquals(ckpt.names(), ["a.f16", "a.f32", "b.bf16", "b.u16"]);
  assertEquals(ckpt.info("a.f32"), { dtype: "F32", shape: [2, 3] });
  assertEquals([...toFloat32(await ckpt.read("a.f32"))], [...f32]);
  assertEquals([...toFloat32(await ckpt.read("a.f16"))], [1, -2, 2 ** -24, Infinity, -Infinity, 0]);
  assertEquals([...toFloat32(await ckpt.read("b.bf16"))], [1, -2, 3.140625, 0]);
  assertEquals([...bf16Bits(await ckpt.read("b.u16"))], [...bf16]);
  await assertRejects(() => ckpt.read("nope"), re(`no tensor "nope"`));
  ckpt.close();
  await Deno.remove(dir, { recursive: true });
});

Deno.test("safetensors: f16 decoding covers normals, subnormals and specials", () => {
  assertEquals(f16ToNumber(0x7bff), 65504);
  assertEquals(f16ToNumber(0x0400), 2 ** -14);
  assertEquals(f16ToNumber(0x03ff), 1023 * 2 ** -24);
  assertEquals(f16ToNumber(0x8000), -0);
  assert(Number.isNaN(f16ToNumber(0x7e00)));
});

Deno.test("safetensors: a truncated file and a bad index name the file", async () => {
  const dir = await Deno.makeTempDir();
  const file = join(dir, "model.safetensors");
  await writeSafetensors(file, [{
    name: "w",
    dtype: "F32",
    shape: [4],
    bytes: new Uint8Array(16),
  }]);
  const full = await Deno.readFile(file);
  await Deno.writeFile(file, full.subarray(0, full.length - 4));
  await assertRejects(() => SafetensorsCheckpoint.open(dir), re(file));
  await Deno.writeTextFile(
    join(dir, "model.safetensors.index.json"),
    JSON.stringify({ weight_map: { w: "missing.safetensors" } }),
  );
  await assertRejects(() => SafetensorsCheckpoint.open(dir), re("missing.safetensors"));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("safetensors: concurrent reads of one file do not interleave", async () => {
  const ckpt = await SafetensorsCheckpoint.open(TINY);
  const names = ckpt.names();
  const together = await Promise.all(names.map((n) => ckpt.read(n)));
  for (const [i, n] of names.entries()) {
    assertSameValues(together[i]!.bytes, (await ckpt.read(n)).bytes, n);
  }
  ckpt.close();
});

async function canonicalAll(dir: string, config: ModelConfig) {
  const ckpt = await Checkpoint.open(dir, config);
  const out = new Map<string, { shape: readonly number[]; dtype: string; bits: Uint8Array }>();
  for await (const t of ckpt.tensors()) {
    out.set(t.name, { shape: t.shape, dtype: t.dtype, bits: bytesOf(t.data).slice() });
  }
  const layout = ckpt.layout;
  ckpt.close();
  return { out, layout };
}

Deno.test("checkpoint: the torch and Paddle fixtures give bit-identical canonical tensors", async () => {
  const config = await loadModelConfig(TINY);
  const pt = await canonicalAll(TINY, config);
  const pd = await canonicalAll(PADDLE, config);
  assertEquals(pt.layout, {
    prefix: "model.",
    transposed: false,
    fusedQkv: false,
    fusedGateUp: false,
  });
  assertEquals(pd.layout, {
    prefix: "ernie.",
    transposed: true,
    fusedQkv: true,
    fusedGateUp: true,
  });
  assertEquals([...pt.out.keys()], [...pd.out.keys()]);
  assertEquals(pt.out.size, 1 + 6 * config.numLayers + 1);
  assertEquals(pt.out.get("layers.0.qkv")?.shape, [(4 + 2 * 2) * 32, 64]);
  assertEquals(pt.out.get("layers.1.gate_up")?.shape, [320, 64]);
  assertEquals(pt.out.get("norm")?.dtype, "f32");
  assertEquals(pt.out.get("embed")?.dtype, "bf16");
  for (const [name, t] of pt.out) {
    const p = pd.out.get(name)!;
    assertEquals([p.shape, p.dtype], [t.shape, t.dtype], name);
    assertSameValues(p.bits, t.bits, name);
  }
});

Deno.test("checkpoint: torch layout with fused rows under ernie. and f32 weights", async () => {
  const config = await loadModelConfig(TINY);
  const src = await SafetensorsCheckpoint.open(TINY);
  const dir = await Deno.makeTempDir();
  const tensors: NamedTensor[] = [];
  const cat = async (keys: string[]) => {
    const parts = await Promise.all(keys.map((k) => src.read(k)));
    const f = new Float32Array(parts.reduce((n, p) => n + p.bytes.length / 2, 0));
    let o = 0;
    for (const p of parts) {
      const v = toFloat32(p);
      f.set(v, o);
      o += v.length;
    }
    return bytesOf(f);
  };
  for (const name of src.names()) {
    const m = name.match(/^model\.layers\.(\d+)\.(self_attn\.q_proj|mlp\.gate_proj)\.weight$/);
    const key = name.replace(/^model\./, "ernie.");
    if (m !== null) {
      const l = `model.layers.${m[1]}.`;
      const fused = m[2] === "mlp.gate_proj"
        ? { name: "mlp.up_gate_proj", keys: ["mlp.gate_proj", "mlp.up_proj"] }
        : { name: "self_attn.qkv_proj", keys: ["q", "k", "v"].map((x) => `self_attn.${x}_proj`) };
      const keys = fused.keys.map((k) => `${l}${k}.weight`);
      const rows = keys.reduce((n, k) => n + src.info(k).shape[0]!, 0);
      tensors.push({
        name: `ernie.layers.${m[1]}.${fused.name}.weight`,
        dtype: "F32",
        shape: [rows, 64],
        bytes: await cat(keys),
      });
    } else if (!/(k_proj|v_proj|up_proj)\.weight$/.test(name)) {
      tensors.push({ name: key, ...(await src.read(name)) });
    }
  }
  src.close();
  await writeSafetensors(join(dir, "model.safetensors"), tensors);
  const fused = await canonicalAll(dir, config);
  const pt = await canonicalAll(TINY, config);
  assertEquals(fused.layout, {
    prefix: "ernie.",
    transposed: false,
    fusedQkv: true,
    fusedGateUp: true,
  });
  const qkv = fused.out.get("layers.1.qkv")!;
  assertEquals(qkv.dtype, "f32");
  const want = toFloat32({
    dtype: "BF16",
    shape: qkv.shape,
    bytes: pt.out.get("layers.1.qkv")!.bits,
  });
  assertSameValues(new Float32Array(qkv.bits.buffer), want, "layers.1.qkv");
  assertSameValues(fused.out.get("layers.0.o")!.bits, pt.out.get("layers.0.o")!.bits, "o");
  await Deno.remove(dir, { recursive: true });
});

Deno.test("checkpoint: layout is decided from a non-square weight, never a square one", () => {
  // heads·headDim = hidden, so o_proj is square; gate_proj [256, 64] tells.
  const config = parseModelConfig({ ...tinyJson(), head_dim: 16, intermediate_size: 256 }, "c");
  const shapes: Record<string, number[]> = {
    "ernie.embed_tokens.weight": [2240, 64],
    "ernie.layers.0.self_attn.o_proj.weight": [64, 64],
    "ernie.layers.0.self_attn.q_proj.weight": [64, 64],
    "ernie.layers.0.mlp.gate_proj.weight": [64, 256],
  };
  const info = (k: string) => (k in shapes ? { shape: shapes[k]! } : undefined);
  assertEquals(detectLayout(info, config, "d").transposed, true);
  shapes["ernie.layers.0.mlp.gate_proj.weight"] = [256, 64];
  assertEquals(detectLayout(info, config, "d").transposed, false);
  shapes["ernie.layers.0.mlp.gate_proj.weight"] = [100, 64];
  assertThrows(() => detectLayout(info, config, "d"), re("mlp.gate_proj.weight"));
});

Deno.test("checkpoint: a shape that disagrees with config.json names tensor and expected shape", async () => {
  const j = { ...tinyJson(), intermediate_size: 128 };
  await assertRejects(
    () => Checkpoint.open(TINY, parseModelConfig(j, "c")),
    /"model\.layers\.0\.mlp\.gate_proj\.weight" has shape \[160, 64\], expected \[128, 64\]/,
  );
  // A mismatch that layout detection does not see: the norm width.
  const big = { ...tinyJson(), hidden_size: 96 };
  await assertRejects(() => Checkpoint.open(TINY, parseModelConfig(big, "c")), /expected \[/);
});

Deno.test("tokenizer fixture: round trips unicode, emoji, newlines and digits", async () => {
  const json = JSON.parse(await Deno.readTextFile(join(TINY, "tokenizer.json")));
  const cfg = JSON.parse(await Deno.readTextFile(join(TINY, "tokenizer_config.json")));
  const tok = new Tokenizer(json, cfg);
  for (
    const text of ["hello world", "a\n\tb", "café 中文 👋🏽", "3.14159 and 2024", "  two  spaces "]
  ) {
    assertEquals(tok.decode(tok.encode(text).ids), text);
  }
  assertEquals(tok.encode("\n").ids, [23]);
  assertEquals(tok.encode("\t").ids, [22]);
  assertEquals(tok.encode("1234").ids.length, 4);
  assertEquals(tok.encode("<|begin_of_sentence|>").ids, [3]);
  assertEquals(tok.encode("<|end_of_sentence|>").ids, [4]);
  assertEquals(tok.encode("</s>").ids, [2]);
  const ids = tok.encode("The quick brown fox").ids;
  assert(ids.length <= 4, `expected learned merges, got ${ids}`);
  assert(Math.max(...tok.encode("hello 👋").ids) < (await loadModelConfig(TINY)).vocabSize);
});

Deno.test("chat template: renders ERNIE's prompt format", async () => {
  const cfg = JSON.parse(await Deno.readTextFile(join(TINY, "tokenizer_config.json")));
  const render = (messages: { role: string; content: string }[]) =>
    new Template(cfg.chat_template).render({
      messages,
      add_generation_prompt: true,
      bos_token: cfg.bos_token,
      eos_token: cfg.eos_token,
      cls_token: cfg.cls_token,
      sep_token: cfg.sep_token,
    });
  assertEquals(
    render([{ role: "user", content: "hi" }]),
    "<|begin_of_sentence|>User: hi\nAssistant: ",
  );
  assertEquals(
    render([
      { role: "system", content: "Be brief." },
      { role: "user", content: "hi" },
      { role: "assistant", content: "Hello." },
      { role: "user", content: "bye" },
    ]),
    "<|begin_of_sentence|>Be brief.\nUser: hi\nAssistant: Hello.<|end_of_sentence|>User: bye\nAssistant: ",
  );
});

Deno.test("makeModelDir: untied lm_head loads the same from torch and Paddle layouts", async () => {
  const tokenizer = buildTokenizerFiles();
  const overrides = { tie_word_embeddings: false, num_hidden_layers: 1, vocab_size: 2304 };
  const dirs = [await Deno.makeTempDir(), await Deno.makeTempDir()];
  await makeModelDir(dirs[0]!, overrides, { layout: "torch", tokenizer, seed: 5 });
  await makeModelDir(dirs[1]!, overrides, { layout: "paddle", tokenizer, seed: 5 });
  const config = await loadModelConfig(dirs[0]!);
  assertEquals([config.tieWordEmbeddings, config.numLayers, config.vocabSize], [false, 1, 2304]);
  const pt = await canonicalAll(dirs[0]!, config);
  const pd = await canonicalAll(dirs[1]!, config);
  assertEquals(pt.out.get("lm_head")?.shape, [2304, 64]);
  for (const [name, t] of pt.out) assertSameValues(pd.out.get(name)!.bits, t.bits, name);
  for (const d of dirs) await Deno.remove(d, { recursive: true });
});
