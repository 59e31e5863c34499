/**
 * Paged KV cache bookkeeping: a pool of fixed-size blocks with reference
 * counts, and a prefix cache that maps a chained hash of each full block's
 * tokens to the block holding their K/V. Blocks no sequence uses but whose
 * K/V is still valid wait in an LRU pool and are evicted only when no clean
 * block is left.
 *
 * @module
 */

import type { Sequence } from "./sequence.ts";

/** No hash: the block is not full of computed tokens (or caching is off). */
const NO_HASH = -1;
const TWO_32 = 4294967296;

/**
 * Hashes one full block from its parent block's hash (`-1` for the first
 * block) and `tokens[start, end)`. Must return an integer in [0, 2^53).
 */
export type BlockHasher = (
  parentHash: number,
  tokens: readonly number[],
  start: number,
  end: number,
) => number;

/**
 * 64-bit FNV-1a over the parent hash and the token ids (4 little-endian bytes
 * each), folded to 53 bits so it is an exact JS number usable as a Map key.
 *
 * @example
 * ```ts
 * import { hashBlock } from "./block_manager.ts";
 * const first = hashBlock(-1, [1, 2, 3, 4], 0, 4);
 * const second = hashBlock(first, [5, 6, 7, 8], 0, 4);
 * ```
 */
export const hashBlock: BlockHasher = (parentHash, tokens, start, end) => {
  // (hi, lo) is the 64-bit state; the FNV prime is 2^40 + 0x1b3 = (0x100, 0x1b3).
  let hi = 0xcbf29ce4;
  let lo = 0x84222325;
  const byte = (b: number) => {
    lo = (lo ^ b) >>> 0;
    const low = lo * 0x1b3; // < 2^41: exact
    hi = (Math.imul(hi, 0x1b3) + ((lo << 8) >>> 0) + Math.floor(low / TWO_32)) >>> 0;
    lo = low >>> 0;
  };
  const word = (w: number) => {
    byte(w & 0xff), byte((w >>> 8) & 0xff), byte((w >>> 16) & 0xff), byte((w >>> 24) & 0xff);
  };
  if (parentHash >= 0) word(parentHash >>> 0), word(Math.floor(parentHash / TWO_32));
  for (let i = start; i < end; i++) word(tokens[i]!);
  return (hi & 0x1fffff) * TWO_32 + lo;
};

/**
 * Allocates KV blocks to sequences and shares full blocks of identical
 * prefixes between them.
 *
 * @example
 * ```ts
 * import { BlockManager } from "./block_manager.ts";
 * import { Sequence } from "./sequence.ts";
 * import { DEFAULT_SAMPLING } from "./types.ts";
 *
 * const bm = new BlockManager(8, 4, true);
 * const seq = new Sequence({ id: "a", promptIds: [1, 2, 3, 4, 5], sampling: DEFAULT_SAMPLING });
 * if (bm.canAllocate(seq)) bm.allocate(seq); // seq.blockTable has 2 blocks
 * bm.free(seq);
 * ```
 */
export class BlockManager {
  /** Cumulative number of blocks served from the prefix cache. */
  numCachedBlocksHit = 0;
  /** Cumulative tokens looked up in the prefix cache at admission. */
  queriedTokens = 0;
  /** Cumulative tokens served from the prefix cache at admission. */
  hitTokens = 0;

  readonly #refCount: Int32Array; // (numBlocks)
  readonly #hash: Float64Array; // (numBlocks) NO_HASH or the block's chained hash
  readonly #parentHash: Float64Array; // (numBlocks) the hash the block was chained from
  readonly #tokens: (number[] | undefined)[]; // (numBlocks) token ids of hashed blocks
  readonly #free: number[] = []; // clean blocks, used as a stack
  readonly #evictable = new Set<number>(); // refcount 0, cached; insertion order = LRU first
  readonly #byHash = new Map<number, number>(); // hash → the block that answers it

  constructor(
    readonly numBlocks: number,
    readonly blockSize: number,
    readonly enablePrefixCaching: boolean,
    readonly hasher: BlockHasher = hashBlock,
  ) {
    if (!(numBlocks >= 1 && blockSize >= 1)) {
      throw new RangeError(`BlockManager needs numBlocks ≥ 1 and blockSize ≥ 1`);
    }
    this.#refCount = new Int32Array(numBlocks);
    this.#hash = new Float64Array(numBlocks).fill(NO_HASH);
    this.#parentHash = new Float64Array(numBlocks).fill(NO_HASH);
    this.#tokens = new Array(numBlocks).fill(undefined);
    for (let b = numBlocks - 1; b >= 0; b--) this.#free.push(b);
  }

  /** Blocks that can be handed out now: clean ones plus evictable cached ones. */
  get numFreeBlocks(): number {
    return this.#free.length + this.#evictable.size;
  }

  /** Blocks unused by any sequence but still holding reusable K/V. */
  get numEvictableBlocks(): number {
    return this.#evictable.size;
  }

  /** Fraction of queried prompt tokens served from the prefix cache (0 when none queried). */
  get hitRate(): number {
    return this.queriedTokens === 0 ? 0 : this.hitTokens / this.queriedTokens;
  }

  /** A block's reference count (for tests and assertions). */
  refCount(block: number): number {
    return this.#refCount[block] ?? 0;
  }

  /** How many blocks `numTokens` tokens occupy. */
  blocksFor(numTokens: number): number {
    return Math.ceil(numTokens / this.blockSize);
  }

  /** Whether `allocate(seq)` would succeed now, counting prefix-cache hits. */
  canAllocate(seq: Sequence): boolean {
    let hitsInUse = 0;
    for (const b of this.#matchPrefix(seq)) if (this.#refCount[b]! > 0) hitsInUse++;
    return this.blocksFor(seq.numTokens) - hitsInUse <= this.numFreeBlocks;
  }

  /**
   * Gives a waiting sequence blocks for all its current tokens, reusing cached
   * full blocks of its prefix; the last token is always left to compute so its
   * logits exist. Sets `numCachedTokens`; returns how many leading tokens
   * already have K/V (the prefix-cache hits), for the scheduler to record.
   */
  allocate(seq: Sequence): number {
    if (seq.blockTable.length !== 0) throw new Error(`Sequence "${seq.id}" already has blocks`);
    if (!this.canAllocate(seq)) throw new Error(`Not enough KV blocks for sequence "${seq.id}"`);
    const hits = this.#matchPrefix(seq);
    for (const b of hits) {
      if (this.#refCount[b] === 0) this.#evictable.delete(b);
      this.#refCount[b]!++;
      seq.appendBlock(b);
    }
    const needed = this.blocksFor(seq.numTokens);
    while (seq.blockTable.length < needed) seq.appendBlock(this.#take());
    const hitTokens = hits.length * this.blockSize;
    seq.setNumCachedTokens(Math.min(hitTokens, seq.numPromptTokens));
    this.numCachedBlocksHit += hits.length;
    this.queriedTokens += seq.numTokens;
    this.hitTokens += hitTokens;
    return hitTokens;
  }

  /** Whether the sequence's next token has a slot (possibly needing one new block). */
  canAppend(seq: Sequence): boolean {
    return this.#blocksShort(seq) <= this.numFreeBlocks;
  }

  /** Adds a block when the sequence's last token crosses a block boundary. */
  mayAppend(seq: Sequence): void {
    const short = this.#blocksShort(seq);
    if (short > this.numFreeBlocks) throw new Error(`No KV block left for sequence "${seq.id}"`);
    for (let i = 0; i < short; i++) seq.appendBlock(this.#take());
  }

  /**
   * Registers in the prefix cache every block that became full of computed
   * tokens when the computed count went from `prevComputed` to `numComputed`.
   */
  registerComputed(seq: Sequence, prevComputed: number, numComputed: number): void {
    if (!this.enablePrefixCaching) return;
    const B = this.blockSize;
    const full = Math.floor(numComputed / B);
    for (let i = Math.floor(prevComputed / B); i < full; i++) {
      const b = seq.blockTable[i]!;
      if (this.#hash[b] !== NO_HASH) continue; // a prefix-cache hit: already registered
      const parent = i === 0 ? NO_HASH : this.#hash[seq.blockTable[i - 1]!]!;
      if (i > 0 && parent === NO_HASH) throw new Error(`Block ${i - 1} of "${seq.id}" unhashed`);
      const h = this.hasher(parent, seq.tokenIds, i * B, (i + 1) * B);
      this.#hash[b] = h;
      this.#parentHash[b] = parent;
      this.#tokens[b] = seq.tokenIds.slice(i * B, (i + 1) * B);
      // A block with the same hash may already answer it (computed concurrently,
      // or a true collision): keep that one; this block still chains by `h`.
      if (!this.#byHash.has(h)) this.#byHash.set(h, b);
    }
  }

  /** Releases a sequence's blocks; cached ones stay reusable until evicted. */
  free(seq: Sequence): void {
    // Last blocks first, so a sequence's tail is evicted before its (more shared) head.
    const blocks = seq.takeBlocks();
    for (let i = blocks.length - 1; i >= 0; i--) {
      const b = blocks[i]!;
      const rc = --this.#refCount[b]!;
      if (rc < 0) throw new Error(`Block ${b} freed twice`);
      if (rc > 0) continue;
      const h = this.#hash[b]!;
      if (h !== NO_HASH && this.#byHash.get(h) === b) this.#evictable.add(b);
      else this.#release(b);
    }
  }

  /** Cached blocks answering the sequence's full prefix blocks, excluding its last token. */
  #matchPrefix(seq: Sequence): number[] {
    const hits: number[] = [];
    if (!this.enablePrefixCaching) return hits;
    const B = this.blockSize;
    const tokens = seq.tokenIds;
    const maxBlocks = Math.floor((tokens.length - 1) / B);
    let parent = NO_HASH;
    for (let i = 0; i < maxBlocks; i++) {
      const h = this.hasher(parent, tokens, i * B, (i + 1) * B);
      const b = this.#byHash.get(h);
      if (b === undefined || this.#parentHash[b] !== parent) break;
      const stored = this.#tokens[b]!;
      let same = true;
      for (let j = 0; j < B && same; j++) same = stored[j] === tokens[i * B + j];
      if (!same) break; // hash collision: different tokens under the same hash
      hits.push(b);
      parent = h;
    }
    return hits;
  }

  #blocksShort(seq: Sequence): number {
    return Math.max(0, this.blocksFor(seq.numTokens) - seq.blockTable.length);
  }

  /** A block with refcount 1: a clean one, or else the least recently used cached one. */
  #take(): number {
    let b = this.#free.pop();
    if (b === undefined) {
      const lru = this.#evictable.values().next();
      if (lru.done) throw new Error("KV block pool exhausted");
      b = lru.value;
      this.#evictable.delete(b);
      this.#byHash.delete(this.#hash[b]!); // it was the block answering this hash
      this.#clear(b);
    }
    this.#refCount[b] = 1;
    return b;
  }

  #release(b: number): void {
    this.#clear(b);
    this.#free.push(b);
  }

  #clear(b: number): void {
    this.#hash[b] = NO_HASH;
    this.#parentHash[b] = NO_HASH;
    this.#tokens[b] = undefined;
  }
}
