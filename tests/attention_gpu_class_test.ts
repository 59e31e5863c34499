/**
 * GPU-class attention (flash-decoding, its log-sum-exp merge, the tiled prefill
 * kernel) against a float64 CPU reference on fresh seeded random inputs, at
 * contexts and head sizes that are not tile multiples, with f32 and f16 KV
 * caches; and a query's output bit-identical whether it is decoded or
 * prefilled, alone or with other rows.
 */
import type { Gpu } from "../engine/gpu/device.ts";
import { encode, type StepShape } from "../engine/gpu/kernels.ts";
import { kernelTable } from "../engine/gpu/registry.ts";
import {
  attentionGpu,
  attentionLayout,
  type AttentionShape,
  attentionWork,
  partialsSize,
} from "../engine/gpu/attention_gpu.ts";
import { assertEquals } from "./_assert.ts";
import { assertClose, gpuTest, randomArray, rng } from "./_gpu.ts";

interface Case {
  readonly context: number;
  readonly headDim: number;
  readonly heads: number;
  readonly kvHeads: number;
  readonly blockSize: number;
  readonly kvF16: boolean;
  /** Block-table row length (large ones make longer pieces). */
  readonly maxBlocks?: number;
  /** Tokens sequence 0 prefills in the step (default 37). */
  readonly chunk?: number;
}

/** A paged cache of random values: the words the GPU reads and the values they hold. */
function randomCache(slots: number, width: number, f16: boolean, r: () => number) {
  const x = randomArray(slots * width, r);
  if (!f16) return { words: new Uint32Array(x.buffer), values: x };
  const half = new Float16Array(x);
  return { words: new Uint32Array(half.buffer), values: Float32Array.from(half) };
}

/** One token of a step: its sequence's block-table row, position and query vectors. */
interface Token {
  readonly seq: number;
  readonly pos: number;
}

/** Float64 causal attention of every token's query heads over its sequence's paged cache. */
function reference(
  c: Case,
  tokens: readonly Token[],
  qkv: Float32Array,
  tables: readonly number[][],
  k: Float32Array,
  v: Float32Array,
): Float64Array {
  const { heads: HQ, kvHeads: HKV, headDim: D, blockSize: B } = c;
  const W = (HQ + 2 * HKV) * D;
  const out = new Float64Array(tokens.length * HQ * D);
  tokens.forEach(({ seq, pos }, t) => {
    for (let h = 0; h < HQ; h++) {
      const kvh = Math.floor(h / (HQ / HKV));
      const bases: number[] = [];
      const scores: number[] = [];
      for (let j = 0; j <= pos; j++) {
        const base = ((tables[seq]![Math.floor(j / B)]! * B + (j % B)) * HKV + kvh) * D;
        let s = 0;
        for (let e = 0; e < D; e++) s += qkv[t * W + h * D + e]! * k[base + e]!;
        bases.push(base);
        scores.push(s / Math.sqrt(D));
      }
      const m = Math.max(...scores);
      const p = scores.map((s) => Math.exp(s - m));
      const z = p.reduce((a, b) => a + b, 0);
      for (let e = 0; e < D; e++) {
        let acc = 0;
        for (let j = 0; j <= pos; j++) acc += p[j]! * v[bases[j]! + e]!;
        out[(t * HQ + h) * D + e] = acc / z;
      }
    }
  });
  return out;
}

/** Runs GPU-class attention over a step of sequences given as runs of tokens. */
async function runStep(
  gpu: Gpu,
  c: Case,
  seqs: readonly { seq: number; start: number; count: number }[],
  qkv: Float32Array,
  table: Uint32Array,
  k: Uint32Array,
  v: Uint32Array,
): Promise<Float32Array> {
  const a: AttentionShape = { ...c, maxBlocks: c.maxBlocks ?? table.length / 3 };
  const tokens = seqs.flatMap((s) =>
    Array.from({ length: s.count }, (_, i) => ({ seq: s.seq, pos: s.start + i }))
  );
  const T = tokens.length;
  const layout = attentionLayout(gpu, a, T);
  const work = attentionWork(seqs, layout);
  const u32 = (label: string, x: Uint32Array) =>
    gpu.upload(label, x.length ? x : new Uint32Array(1));
  const out = gpu.storage("out", T * c.heads * c.headDim * 4);
  const ds = attentionGpu(
    gpu,
    kernelTable("gpu").flashAttention!,
    {
      qkv: gpu.upload("qkv", qkv),
      positions: u32("positions", Uint32Array.from(tokens, (t) => t.pos)),
      seqOf: u32("seq_of", Uint32Array.from(tokens, (t) => t.seq)),
      blockTable: u32("table", table),
      kCache: u32("k", k),
      vCache: u32("v", v),
      decodeTiles: u32("decode_tiles", work.decodeTiles),
      prefillTiles: u32("prefill_tiles", work.prefillTiles),
      partials: gpu.storage("partials", partialsSize(a, layout) * 4),
      out,
    },
    a,
    layout,
  );
  const shape: StepShape = {
    numTokens: T,
    numRows: 0,
    numLogitRows: 0,
    numDecodeRows: work.decodeTiles.length / 2,
    numPrefillTiles: work.prefillTiles.length / 2,
    decodePieces: work.decodePieces,
    prefillPieces: work.prefillPieces,
  };
  await gpu.checked("attention", () => {
    const encoder = gpu.device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    encode(pass, ds, shape);
    pass.end();
    gpu.device.queue.submit([encoder.finish()]);
  });
  return new Float32Array(await gpu.read(out, T * c.heads * c.headDim * 4));
}

function assertSameBits(a: Float32Array, b: Float32Array, what: string): void {
  for (let i = 0; i < a.length; i++) {
    if (!Object.is(a[i], b[i])) throw new Error(`${what}[${i}]: ${a[i]} != ${b[i]}`);
  }
}

const CASES: Case[] = [
  { context: 1, headDim: 8, heads: 2, kvHeads: 2, blockSize: 16, kvF16: false },
  { context: 63, headDim: 64, heads: 4, kvHeads: 2, blockSize: 7, kvF16: false },
  { context: 64, headDim: 128, heads: 16, kvHeads: 2, blockSize: 16, kvF16: false },
  { context: 65, headDim: 32, heads: 8, kvHeads: 1, blockSize: 5, kvF16: true },
  { context: 257, headDim: 256, heads: 8, kvHeads: 1, blockSize: 16, kvF16: false },
  { context: 700, headDim: 96, heads: 4, kvHeads: 4, blockSize: 13, kvF16: false },
  { context: 700, headDim: 128, heads: 16, kvHeads: 2, blockSize: 16, kvF16: true },
  { context: 1100, headDim: 40, heads: 6, kvHeads: 3, blockSize: 3, kvF16: false, maxBlocks: 6000 },
  // A 130-token chunk (two tiles) over 2,100 keys: no workgroup walks the whole context.
  { context: 2100, headDim: 64, heads: 4, kvHeads: 2, blockSize: 16, kvF16: true, chunk: 130 },
];

for (const c of CASES) {
  const ratio = c.heads / c.kvHeads;
  gpuTest(
    `GPU-class attention matches float64 at context ${c.context}, head_dim ${c.headDim}, ` +
      `GQA ${ratio}, block ${c.blockSize}, ${c.kvF16 ? "f16" : "f32"} KV` +
      (c.maxBlocks ? `, ${c.maxBlocks}-block tables` : "") +
      (c.chunk ? `, ${c.chunk}-token chunk` : ""),
    async (gpu) => {
      const { context: n, headDim: D, heads: HQ, kvHeads: HKV, blockSize: B } = c;
      const r = rng(n * 31 + D + HQ * 7 + B);
      const W = (HQ + 2 * HKV) * D;
      const blocksPerSeq = Math.ceil(n / B);
      const numBlocks = 2 * blocksPerSeq + 3;
      // Sequence 0's blocks scattered over the pool; sequence 1 has its own, sequence 2 shares 0's.
      const order = Array.from({ length: numBlocks }, (_, i) => i).sort(() => r() - 0.5);
      const tables = [order.slice(0, blocksPerSeq), order.slice(blocksPerSeq, 2 * blocksPerSeq)];
      tables.push(tables[0]!);
      const mb = c.maxBlocks ?? blocksPerSeq;
      const table = new Uint32Array(3 * mb);
      tables.forEach((row, s) => table.set(row, s * mb));
      const k = randomCache(numBlocks * B, HKV * D, c.kvF16, r);
      const v = randomCache(numBlocks * B, HKV * D, c.kvF16, r);
      // Sequence 0 prefills its last `chunk` positions (tiles), sequence 1 decodes position 0,
      // sequence 2 decodes position n − 1 with the query of sequence 0's last token.
      const chunk = Math.min(n, c.chunk ?? 37);
      const seqs = [
        { seq: 0, start: n - chunk, count: chunk },
        { seq: 1, start: 0, count: 1 },
        { seq: 2, start: n - 1, count: 1 },
      ];
      const tokens = seqs.flatMap((s) =>
        Array.from({ length: s.count }, (_, i) => ({ seq: s.seq, pos: s.start + i }))
      );
      const T = tokens.length;
      const qkv = randomArray(T * W, r, 2);
      qkv.copyWithin((T - 1) * W, (chunk - 1) * W, chunk * W);
      const got = await runStep(gpu, c, seqs, qkv, table, k.words, v.words);
      const want = reference(c, tokens, qkv, tables, k.values, v.values);
      assertClose(got, want, { rtol: 1e-4, atol: 2e-6, what: "attention" });

      // The same query decoded (flash-decoding + merge) and prefilled (tiles): the same bits.
      const row = HQ * D;
      assertSameBits(
        got.subarray((T - 1) * row, T * row),
        got.subarray((chunk - 1) * row, chunk * row),
        "decoded vs prefilled",
      );
      // A decode row alone gives the same bits as in the mixed step.
      const alone = await runStep(
        gpu,
        c,
        [{ seq: 0, start: n - 1, count: 1 }],
        qkv.slice((T - 1) * W, T * W),
        table,
        k.words,
        v.words,
      );
      assertSameBits(alone, got.subarray((T - 1) * row, T * row), "alone vs in a batch");
    },
  );
}

Deno.test("one-token sequences are decode rows, longer ones tiles, pieces counted to the last position", () => {
  const layout = {
    piece: 256,
    pieces: 8,
    maxTokens: 512,
    decodeHeads: 8,
    prefillHeads: 8,
    tileTokens: 128,
  };
  const work = attentionWork([
    { start: 0, count: 300 },
    { start: 900, count: 1 },
    { start: 5, count: 1 },
    { start: 40, count: 2 },
  ], layout);
  assertEquals([...work.decodeTiles], [300, 1, 301, 1]);
  assertEquals([...work.prefillTiles], [0, 128, 128, 128, 256, 44, 302, 2]);
  assertEquals(work.decodePieces, 4); // position 900 is in piece 3
  assertEquals(work.prefillPieces, 2); // position 299 is in piece 1
});

gpuTest("pieces double at load until the longest context needs at most 64", (gpu) => {
  const a = { heads: 16, kvHeads: 2, headDim: 128, blockSize: 16, kvF16: true };
  assertEquals(attentionLayout(gpu, { ...a, maxBlocks: 1024 }, 64).piece, 256); // 16,384 keys
  assertEquals(attentionLayout(gpu, { ...a, maxBlocks: 1025 }, 64).piece, 512);
  assertEquals(attentionLayout(gpu, { ...a, maxBlocks: 8192 }, 64).piece, 2048); // 131,072 keys
  const l = attentionLayout(gpu, { ...a, maxBlocks: 8192 }, 64);
  assertEquals([l.pieces, l.decodeHeads, l.prefillHeads, l.tileTokens], [64, 8, 8, 8]);
});
