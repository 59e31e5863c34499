import assert from "node:assert/strict";
import { BlockManager, hashBlock } from "../engine/block_manager.ts";
import { Sequence } from "../engine/sequence.ts";
import { DEFAULT_SAMPLING } from "../engine/types.ts";

function seqOf(id: string, promptIds: number[]): Sequence {
  return new Sequence({ id, promptIds, sampling: DEFAULT_SAMPLING });
}

/** Admits a sequence as the scheduler does: blocks, then the prefix-cache hits as computed. */
function admit(bm: BlockManager, seq: Sequence): void {
  seq.markRunning(bm.allocate(seq));
}

/** Pretends the model computed every token, registering full blocks, as the scheduler's commit does. */
function computeAll(bm: BlockManager, seq: Sequence): void {
  const prev = seq.numComputedTokens;
  seq.advanceComputed(seq.numTokens - prev);
  bm.registerComputed(seq, prev, seq.numComputedTokens);
}

const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);

Deno.test("block manager allocates, counts references and frees blocks", () => {
  const bm = new BlockManager(8, 4, false);
  const seq = seqOf("a", range(0, 10));
  assert.equal(bm.canAllocate(seq), true);
  admit(bm, seq);
  assert.equal(seq.blockTable.length, 3);
  assert.equal(new Set(seq.blockTable).size, 3);
  assert.equal(bm.numFreeBlocks, 5);
  for (const b of seq.blockTable) assert.equal(bm.refCount(b), 1);
  const blocks = [...seq.blockTable];
  bm.free(seq);
  assert.deepEqual(seq.blockTable, []);
  assert.equal(bm.numFreeBlocks, 8);
  for (const b of blocks) assert.equal(bm.refCount(b), 0);
  assert.throws(() => admit(bm, seqOf("big", range(0, 33))), /Not enough KV blocks/);
});

Deno.test("block manager adds a block only when the next token crosses a block boundary", () => {
  const bm = new BlockManager(4, 4, true);
  const seq = seqOf("a", [1, 2, 3, 4]);
  admit(bm, seq);
  computeAll(bm, seq);
  assert.equal(seq.blockTable.length, 1);
  seq.appendToken(5); // position 4 starts block 1
  assert.equal(bm.canAppend(seq), true);
  bm.mayAppend(seq);
  assert.equal(seq.blockTable.length, 2);
  for (const t of [6, 7, 8]) {
    computeAll(bm, seq);
    seq.appendToken(t);
    bm.mayAppend(seq);
  }
  assert.equal(seq.blockTable.length, 2);
  assert.equal(bm.numFreeBlocks, 2);
});

Deno.test("prefix cache shares a system prompt across two sequences", () => {
  const bm = new BlockManager(16, 4, true);
  const system = range(100, 108); // two full blocks
  const a = seqOf("a", [...system, 1, 2, 3]);
  admit(bm, a);
  assert.equal(a.numCachedTokens, 0);
  computeAll(bm, a);

  const b = seqOf("b", [...system, 7, 8, 9]);
  assert.equal(bm.canAllocate(b), true);
  admit(bm, b);
  assert.equal(b.numCachedTokens, 8);
  assert.equal(b.numComputedTokens, 8);
  assert.deepEqual(b.blockTable.slice(0, 2), a.blockTable.slice(0, 2));
  assert.notEqual(b.blockTable[2], a.blockTable[2]);
  assert.equal(bm.refCount(a.blockTable[0]!), 2);
  assert.equal(bm.numCachedBlocksHit, 2);
  assert.equal(bm.hitTokens, 8);
  assert.equal(bm.queriedTokens, 22);
  assert.equal(bm.hitRate, 8 / 22);

  // The owner finishing keeps the shared blocks alive for b.
  bm.free(a);
  assert.equal(bm.refCount(b.blockTable[0]!), 1);
});

Deno.test("prefix cache always leaves the last prompt token to compute", () => {
  const bm = new BlockManager(8, 4, true);
  const a = seqOf("a", range(0, 8));
  admit(bm, a);
  computeAll(bm, a);
  bm.free(a);
  assert.equal(bm.numEvictableBlocks, 2);

  const b = seqOf("b", range(0, 8)); // the whole prompt is cached
  admit(bm, b);
  assert.equal(b.numCachedTokens, 4);
  assert.equal(b.numComputedTokens, 4); // the last block holds the last token: recomputed
  assert.equal(b.blockTable.length, 2);
  assert.equal(bm.refCount(b.blockTable[1]!), 1);
});

Deno.test("canAllocate counts prefix-cache hits on blocks already in use", () => {
  const bm = new BlockManager(4, 4, true);
  const a = seqOf("a", range(0, 9));
  admit(bm, a);
  computeAll(bm, a);
  assert.equal(bm.numFreeBlocks, 1);
  const b = seqOf("b", [...range(0, 8), 50]); // needs 3 blocks, 2 of them shared
  assert.equal(bm.canAllocate(b), true);
  admit(bm, b);
  assert.equal(bm.numFreeBlocks, 0);
  assert.equal(bm.canAllocate(seqOf("c", [...range(0, 8), 60])), false);
});

Deno.test("prefix cache evicts the least recently used cached block first", () => {
  const bm = new BlockManager(4, 2, true);
  const a = seqOf("a", [1, 2, 3, 4, 5]);
  admit(bm, a);
  computeAll(bm, a);
  bm.free(a); // [5] is clean; [3,4] then [1,2] go to the LRU pool: the tail is older
  assert.equal(bm.numEvictableBlocks, 2);
  assert.equal(bm.numFreeBlocks, 4);

  const d = seqOf("d", [7, 7, 7, 7, 7]); // 3 blocks: 2 clean + evicts [3,4]
  admit(bm, d);
  assert.equal(bm.numEvictableBlocks, 1);
  bm.free(d);

  const again = seqOf("again", [1, 2, 3, 4, 5]);
  admit(bm, again);
  assert.equal(again.numCachedTokens, 2); // [1,2] survived, [3,4] was evicted
});

Deno.test("prefix cache reuse refreshes a block's place in the LRU order", () => {
  const bm = new BlockManager(4, 2, true);
  const x = seqOf("x", [1, 2, 9]);
  const y = seqOf("y", [3, 4, 9]);
  for (const s of [x, y]) admit(bm, s), computeAll(bm, s);
  bm.free(x);
  bm.free(y); // LRU: [1,2], [3,4]
  const x2 = seqOf("x2", [1, 2, 8]);
  admit(bm, x2); // hits [1,2]: now [3,4] is the oldest
  assert.equal(x2.numCachedTokens, 2);
  bm.free(x2);
  const z = seqOf("z", [5, 6, 5, 6, 5]); // 3 blocks: 2 clean + evicts [3,4]
  admit(bm, z);
  bm.free(z);
  const checkX = seqOf("cx", [1, 2, 0]);
  const checkY = seqOf("cy", [3, 4, 0]);
  admit(bm, checkX);
  assert.equal(checkX.numCachedTokens, 2);
  bm.free(checkX);
  admit(bm, checkY);
  assert.equal(checkY.numCachedTokens, 0);
});

Deno.test("hash collisions never share blocks holding different tokens", () => {
  const collide = () => 42; // every block hashes alike
  const bm = new BlockManager(8, 4, true, collide);
  const a = seqOf("a", [1, 2, 3, 4, 5]);
  admit(bm, a);
  computeAll(bm, a);
  const b = seqOf("b", [9, 9, 9, 9, 5]);
  admit(bm, b);
  assert.equal(b.numCachedTokens, 0);
  assert.notEqual(b.blockTable[0], a.blockTable[0]);
  const c = seqOf("c", [1, 2, 3, 4, 6]);
  admit(bm, c);
  assert.equal(c.numCachedTokens, 4);
  assert.equal(c.blockTable[0], a.blockTable[0]);
});

Deno.test("block hashes depend on the tokens, their order and the parent block", () => {
  const h = hashBlock(-1, [1, 2, 3, 4], 0, 4);
  assert.equal(h, hashBlock(-1, [9, 1, 2, 3, 4], 1, 5));
  assert.notEqual(h, hashBlock(-1, [2, 1, 3, 4], 0, 4));
  assert.notEqual(hashBlock(h, [5, 6], 0, 2), hashBlock(h + 1, [5, 6], 0, 2));
  assert.notEqual(hashBlock(h, [5, 6], 0, 2), hashBlock(-1, [5, 6], 0, 2));
  const seen = new Set<number>();
  for (let t = 0; t < 20_000; t++) {
    const x = hashBlock(h, [t, t >> 3], 0, 2);
    assert.ok(Number.isSafeInteger(x) && x >= 0);
    seen.add(x);
  }
  assert.equal(seen.size, 20_000);
});

Deno.test("disabled prefix caching never shares blocks", () => {
  const bm = new BlockManager(8, 2, false);
  const a = seqOf("a", [1, 2, 3, 4, 5]);
  admit(bm, a);
  computeAll(bm, a);
  bm.free(a);
  assert.equal(bm.numEvictableBlocks, 0);
  const b = seqOf("b", [1, 2, 3, 4, 5]);
  admit(bm, b);
  assert.equal(b.numCachedTokens, 0);
  assert.equal(bm.hitRate, 0);
});

Deno.test("a block reached through a different prefix is not shared; each chain serves its own continuations", () => {
  const bm = new BlockManager(16, 4, true);
  const [x, y, middle] = [range(100, 104), range(200, 204), range(300, 304)];
  const a = seqOf("a", [...x, ...middle, 1]);
  admit(bm, a);
  computeAll(bm, a);
  // b has a's second block after a different first one: nothing of a's may serve it.
  const b = seqOf("b", [...y, ...middle, 2]);
  admit(bm, b);
  assert.equal(b.numCachedTokens, 0);
  assert.equal(b.blockTable.some((blk) => a.blockTable.includes(blk)), false);
  computeAll(bm, b);
  // c continues b's prefix: both of b's full blocks serve it, not a's middle block.
  const c = seqOf("c", [...y, ...middle, 3]);
  admit(bm, c);
  assert.equal(c.numCachedTokens, 8);
  assert.deepEqual(c.blockTable.slice(0, 2), b.blockTable.slice(0, 2));
  // And a prompt that starts with the shared middle block matches neither chain.
  const d = seqOf("d", [...middle, ...x, 4]);
  admit(bm, d);
  assert.equal(d.numCachedTokens, 0);
});
