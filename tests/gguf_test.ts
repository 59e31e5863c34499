/**
 * The GGUF writer and the ERNIE → GGUF converter, read back with an
 * independent parser (Hugging Face's `@huggingface/gguf`).
 */
import { assert, assertEquals, assertRejects } from "./_assert.ts";
// A test-only yardstick, kept out of deno.json's imports so it is never a product dependency.
// deno-lint-ignore no-import-prefix
import { gguf } from "npm:@huggingface/gguf@0.4.6";
import { join } from "node:path";
import { GGUF_ALIGNMENT, writeGguf } from "../tools/gguf.ts";
import { writeErnieGguf } from "../tools/ernie_gguf.ts";
import { SafetensorsCheckpoint, toFloat32 } from "../engine/loader/safetensors.ts";
import { loadModelConfig } from "../engine/loader/config.ts";

const TINY = new URL("../models/ernie-tiny", import.meta.url).pathname;
const PADDLE = new URL("../models/ernie-tiny-paddle", import.meta.url).pathname;

async function parse(path: string) {
  const r = await gguf(path, { allowLocalFile: true });
  const file = await Deno.readFile(path);
  const start = Number(r.tensorDataOffset);
  const bytesOf = (name: string, n: number) => {
    const t = r.tensorInfos.find((t) => t.name === name);
    assert(t !== undefined, `tensor ${name} missing`);
    const at = start + Number(t.offset);
    return file.subarray(at, at + n);
  };
  return { ...r, metadata: r.metadata as Record<string, unknown>, bytesOf };
}

Deno.test("writeGguf writes metadata of every type and unaligned tensors at aligned offsets", async () => {
  const dir = await Deno.makeTempDir();
  const path = join(dir, "t.gguf");
  const a = new Uint8Array(12).map((_, i) => i + 1); // F32 [3]: 12 bytes, not a multiple of 32
  const b = new Uint8Array(30).map((_, i) => 200 - i); // BF16 [5, 3]
  const c = new Uint8Array(4 * 7 * 2).map((_, i) => i * 3); // F16 [7, 4]
  await writeGguf(path, {
    "general.architecture": { type: "string", value: "test" },
    "t.u32": { type: "u32", value: 4_000_000_000 },
    "t.i32": { type: "i32", value: -7 },
    "t.f32": { type: "f32", value: 0.5 },
    "t.bool": { type: "bool", value: true },
    "t.strings": { type: "string[]", value: ["a", "▁b", ""] },
    "t.floats": { type: "f32[]", value: [1.5, -2] },
    "t.ints": { type: "i32[]", value: new Int32Array([3, -4]) },
  }, [
    { name: "a", type: "F32", shape: [3], data: () => Promise.resolve(a) },
    { name: "b", type: "BF16", shape: [3, 5], data: () => Promise.resolve(b) },
    { name: "c", type: "F16", shape: [4, 7], data: () => Promise.resolve(c) },
  ]);
  const r = await parse(path);
  assertEquals(r.metadata["version"], 3);
  assertEquals(r.metadata["tensor_count"], 3n);
  assertEquals(r.metadata["t.u32"], 4_000_000_000);
  assertEquals(r.metadata["t.i32"], -7);
  assertEquals(r.metadata["t.f32"], 0.5);
  assertEquals(r.metadata["t.bool"], true);
  assertEquals(r.metadata["t.strings"], ["a", "▁b", ""]);
  assertEquals(r.metadata["t.floats"], [1.5, -2]);
  assertEquals(r.metadata["t.ints"], [3, -4]);
  assertEquals(r.tensorInfos.map((t) => [t.name, t.shape.map(Number), t.dtype]), [
    ["a", [3], 0],
    ["b", [3, 5], 30],
    ["c", [4, 7], 1],
  ]);
  assertEquals(Number(r.tensorDataOffset) % GGUF_ALIGNMENT, 0);
  for (const t of r.tensorInfos) assertEquals(Number(t.offset) % GGUF_ALIGNMENT, 0);
  assertEquals(r.bytesOf("a", 12), a);
  assertEquals(r.bytesOf("b", 30), b);
  assertEquals(r.bytesOf("c", c.length), c);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("writeGguf writes a header far past its first 64 KiB buffer (a 100k-token vocabulary)", async () => {
  const dir = await Deno.makeTempDir();
  const path = join(dir, "big.gguf");
  const tokens = Array.from({ length: 100_003 }, (_, i) => `tok${i}`);
  const scores = Float32Array.from(tokens, (_, i) => -i);
  const w = new Uint8Array(6).fill(7);
  await writeGguf(path, {
    "tokenizer.ggml.tokens": { type: "string[]", value: tokens },
    "tokenizer.ggml.scores": { type: "f32[]", value: scores },
    "after": { type: "u32", value: 123 },
  }, [{ name: "w", type: "BF16", shape: [3], data: () => Promise.resolve(w) }]);
  const r = await parse(path);
  assertEquals(r.metadata["tokenizer.ggml.tokens"], tokens);
  assertEquals(r.metadata["tokenizer.ggml.scores"], [...scores]);
  assertEquals(r.metadata["after"], 123);
  assertEquals(r.bytesOf("w", 6), w);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("writeGguf refuses a tensor whose bytes do not fit its shape, naming it", async () => {
  const dir = await Deno.makeTempDir();
  await assertRejects(
    () =>
      writeGguf(join(dir, "t.gguf"), {}, [
        { name: "w", type: "BF16", shape: [4, 2], data: () => Promise.resolve(new Uint8Array(8)) },
      ]),
    /tensor "w" has 8 bytes, its BF16 shape \[4,2\] needs 16/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("writeErnieGguf gives llama.cpp's ernie4_5 names, ggml shapes and our exact weights", async () => {
  const dir = await Deno.makeTempDir();
  const path = join(dir, "tiny.gguf");
  await writeErnieGguf(TINY, path);
  const r = await parse(path);
  const c = await loadModelConfig(TINY);
  const m = r.metadata;
  assertEquals(m["general.architecture"], "ernie4_5");
  assertEquals(m["ernie4_5.block_count"], c.numLayers);
  assertEquals(m["ernie4_5.embedding_length"], c.hiddenSize);
  assertEquals(m["ernie4_5.feed_forward_length"], c.intermediateSize);
  assertEquals(m["ernie4_5.attention.head_count"], c.numHeads);
  assertEquals(m["ernie4_5.attention.head_count_kv"], c.numKvHeads);
  assertEquals(m["ernie4_5.attention.key_length"], c.headDim);
  assertEquals(m["ernie4_5.rope.freq_base"], c.ropeTheta);
  assertEquals(m["tokenizer.ggml.model"], "llama");

  // Every tensor llama.cpp's ernie4_5 loader asks for, and no other.
  const want = ["token_embd.weight", "output_norm.weight"];
  for (let i = 0; i < c.numLayers; i++) {
    for (const n of ["attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm"]) {
      want.push(`blk.${i}.${n}.weight`);
    }
    for (const n of ["ffn_gate", "ffn_up", "ffn_down"]) want.push(`blk.${i}.${n}.weight`);
  }
  assertEquals(r.tensorInfos.map((t) => t.name).sort(), want.sort());

  const st = await SafetensorsCheckpoint.open(TINY);
  const pairs: [string, string][] = [
    ["token_embd.weight", "model.embed_tokens.weight"],
    ["blk.1.attn_k.weight", "model.layers.1.self_attn.k_proj.weight"],
    ["blk.0.ffn_down.weight", "model.layers.0.mlp.down_proj.weight"],
    ["blk.1.ffn_norm.weight", "model.layers.1.post_attention_layernorm.weight"],
  ];
  for (const [name, key] of pairs) {
    const info = r.tensorInfos.find((t) => t.name === name)!;
    const src = await st.read(key);
    assertEquals(info.shape.map(Number), [...src.shape].reverse(), name);
    if (src.shape.length === 1) {
      assertEquals(info.dtype, 0, `${name} is F32`);
      const f = toFloat32(src);
      assertEquals(r.bytesOf(name, f.byteLength), new Uint8Array(f.buffer), name);
    } else {
      assertEquals(info.dtype, 30, `${name} is BF16`);
      assertEquals(r.bytesOf(name, src.bytes.length), src.bytes, name);
    }
  }
  st.close();

  // Tokenizer: tokenizer.json's pieces at their ids, bytes/specials/padding typed.
  const tokens = m["tokenizer.ggml.tokens"] as string[];
  const types = m["tokenizer.ggml.token_type"] as number[];
  const tj = JSON.parse(await Deno.readTextFile(join(TINY, "tokenizer.json")));
  const vocab = tj.model.vocab as Record<string, number>;
  assertEquals(tokens.length, c.vocabSize);
  for (const [piece, id] of Object.entries(vocab)) assertEquals(tokens[id], piece);
  assertEquals(types[0], 2, "<unk> is the unknown token");
  assertEquals([tokens[1], types[1]], ["<s>", 3]);
  assertEquals([tokens[vocab["<0x0A>"]!], types[vocab["<0x0A>"]!]], ["<0x0A>", 6]);
  assertEquals(types[vocab["\u2581"]!], 1);
  const size = Object.keys(vocab).length;
  assertEquals([tokens[size], types[size]], [`[PAD${size}]`, 5]);
  await Deno.remove(dir, { recursive: true });
});

Deno.test("writeErnieGguf with vocabRows keeps only the first embedding rows", async () => {
  const dir = await Deno.makeTempDir();
  const path = join(dir, "tiny.gguf");
  const tj = JSON.parse(await Deno.readTextFile(join(TINY, "tokenizer.json")));
  const rows = Object.keys(tj.model.vocab).length + 3; // not a multiple of anything
  await writeErnieGguf(TINY, path, { vocabRows: rows });
  const r = await parse(path);
  const embd = r.tensorInfos.find((t) => t.name === "token_embd.weight")!;
  const c = await loadModelConfig(TINY);
  assert(rows < c.vocabSize);
  assertEquals(embd.shape.map(Number), [c.hiddenSize, rows]);
  assertEquals((r.metadata["tokenizer.ggml.tokens"] as string[]).length, rows);
  const st = await SafetensorsCheckpoint.open(TINY);
  const src = await st.read("model.embed_tokens.weight");
  st.close();
  const n = rows * c.hiddenSize * 2;
  assertEquals(r.bytesOf("token_embd.weight", n), src.bytes.subarray(0, n));
  await Deno.remove(dir, { recursive: true });
});

Deno.test("writeErnieGguf refuses a Paddle-layout checkpoint and says which layout it needs", async () => {
  const dir = await Deno.makeTempDir();
  await assertRejects(
    () => writeErnieGguf(PADDLE, join(dir, "p.gguf")),
    /ernie-tiny-paddle" to GGUF: tensor "model\.embed_tokens\.weight" is missing; only torch-layout/,
  );
  await Deno.remove(dir, { recursive: true });
});
