/**
 * One sequence's state as it moves through the scheduler: its tokens, how
 * many of them already have K/V in the cache, and which KV blocks hold them.
 *
 * Each counter has one writer, so it can be reasoned about from one file:
 * - the engine appends sampled tokens (`appendToken`) and placeholders for ids still
 *   on the device (`appendPlaceholder`, `dropPlaceholders`);
 * - the scheduler (engine/scheduler.ts) moves `status`, sets `arrival` and
 *   advances `numComputedTokens` (the `mark…`, `setArrival` and
 *   `advanceComputed` methods);
 * - the block manager (engine/block_manager.ts) fills and empties
 *   `blockTable` and sets `numCachedTokens` (`appendBlock`, `takeBlocks`,
 *   `setNumCachedTokens`).
 * Everyone else reads them through getters.
 *
 * @module
 */

import type { GenerateRequest } from "./types.ts";

/**
 * Stands in for the id a step still in flight is drawing on the device, so the next
 * step can be scheduled before the id is back (the device feeds it to that step).
 */
export const PLACEHOLDER = -1;

/** Where a sequence is: queued (holds no KV blocks), scheduled, or done. */
export type SequenceStatus = "waiting" | "running" | "finished";

/**
 * A request's tokens (prompt followed by generated ids) plus the bookkeeping
 * the scheduler and block manager keep for it. `S` is the engine's own
 * per-sequence state (sampler RNG, logprobs, detokenizer, ...).
 *
 * @example
 * ```ts
 * import { Sequence } from "./sequence.ts";
 * import { DEFAULT_SAMPLING } from "./types.ts";
 *
 * const seq = new Sequence({ id: "a", promptIds: [1, 2, 3], sampling: DEFAULT_SAMPLING });
 * seq.appendToken(7);
 * seq.outputIds; // [7]
 * seq.numTokens; // 4
 * ```
 */
export class Sequence<S = unknown> {
  /** The request id. */
  readonly id: string;
  readonly request: GenerateRequest;
  /** Prompt ids followed by generated ids: (numTokens). */
  readonly tokenIds: number[];
  readonly numPromptTokens: number;
  /** The engine's per-sequence extras; the scheduler never reads it. */
  state: S | undefined;
  // Written only by the scheduler.
  #status: SequenceStatus = "waiting";
  #arrival = -1;
  #numComputedTokens = 0;
  // Written only by the engine.
  #placeholders = 0;
  // Written only by the block manager.
  #blockTable: number[] = [];
  #numCachedTokens = 0;

  constructor(request: GenerateRequest, state?: S) {
    this.id = request.id;
    this.request = request;
    this.tokenIds = [...request.promptIds];
    this.numPromptTokens = request.promptIds.length;
    this.state = state;
  }

  /** Prompt plus generated tokens. */
  get numTokens(): number {
    return this.tokenIds.length;
  }

  /** Generated ids so far. */
  get outputIds(): number[] {
    return this.tokenIds.slice(this.numPromptTokens);
  }

  /** How many tokens were generated so far. */
  get numOutputTokens(): number {
    return this.tokenIds.length - this.numPromptTokens;
  }

  /** The last token (the next one the model computes when decoding). */
  get lastTokenId(): number {
    const id = this.tokenIds[this.tokenIds.length - 1];
    if (id === undefined) throw new Error(`Sequence "${this.id}" has no tokens`);
    return id;
  }

  /** Appends a sampled token; its K/V is computed by the next decode step. */
  appendToken(id: number): void {
    if (this.#placeholders > 0) throw new Error(`Sequence "${this.id}" has placeholders left`);
    this.tokenIds.push(id);
  }

  /** Trailing {@linkcode PLACEHOLDER}s: ids drawn by steps still in flight. */
  get numPlaceholders(): number {
    return this.#placeholders;
  }

  /** Whether the sequence ends in ids not back from the device yet. */
  get hasPlaceholder(): boolean {
    return this.#placeholders > 0;
  }

  /**
   * Appends a {@linkcode PLACEHOLDER} for the id a step in flight draws: counted in
   * `numTokens` and `numOutputTokens` (so the next step can compute it, and draws with
   * the right index) until {@linkcode dropPlaceholders} takes it out again.
   */
  appendPlaceholder(): void {
    this.tokenIds.push(PLACEHOLDER);
    this.#placeholders++;
  }

  /** Removes the trailing placeholders; returns how many there were. */
  dropPlaceholders(): number {
    const n = this.#placeholders;
    this.tokenIds.length -= n;
    this.#placeholders = 0;
    return n;
  }

  /** Where the sequence is (the scheduler's). */
  get status(): SequenceStatus {
    return this.#status;
  }

  /** Order of arrival in the scheduler (set by `Scheduler.add`); larger is newer. */
  get arrival(): number {
    return this.#arrival;
  }

  /** How many leading tokens already have K/V in the cache (the scheduler's). */
  get numComputedTokens(): number {
    return this.#numComputedTokens;
  }

  /** Physical KV block ids: block i holds positions [i·B, (i+1)·B) (the block manager's). */
  get blockTable(): readonly number[] {
    return this.#blockTable;
  }

  /** Prompt tokens served from the prefix cache at the last admission (the block manager's). */
  get numCachedTokens(): number {
    return this.#numCachedTokens;
  }

  /** Scheduler only: the sequence is the `arrival`-th ever queued. */
  setArrival(arrival: number): void {
    this.#arrival = arrival;
  }

  /** Scheduler only: admitted, with its first `numComputed` tokens' K/V already cached. */
  markRunning(numComputed: number): void {
    this.#status = "running";
    this.#numComputedTokens = numComputed;
  }

  /** Scheduler only: the K/V of `count` more tokens was computed. */
  advanceComputed(count: number): void {
    this.#numComputedTokens += count;
  }

  /** Scheduler only: preempted (its blocks already freed); everything is recomputed on readmission. */
  markWaiting(): void {
    this.#status = "waiting";
    this.#numComputedTokens = 0;
  }

  /** Scheduler only: done, rejected or aborted. */
  markFinished(): void {
    this.#status = "finished";
  }

  /** Block manager only: block `block` holds the next B positions. */
  appendBlock(block: number): void {
    this.#blockTable.push(block);
  }

  /**
   * Block manager only: empties the block table and returns what it held. The
   * table is replaced, not cleared, so a step still holding it is unaffected.
   */
  takeBlocks(): readonly number[] {
    const blocks = this.#blockTable;
    this.#blockTable = [];
    return blocks;
  }

  /** Block manager only: prompt tokens served from the prefix cache at this admission. */
  setNumCachedTokens(n: number): void {
    this.#numCachedTokens = n;
  }
}

/**
 * The scheduler's waiting queue: FIFO, with O(1) push-front for preempted
 * sequences and no O(n) shift, so 100,000 queued sequences stay cheap.
 *
 * @example
 * ```ts
 * import { Sequence, SequenceQueue } from "./sequence.ts";
 * import { DEFAULT_SAMPLING } from "./types.ts";
 *
 * const q = new SequenceQueue();
 * q.pushBack(new Sequence({ id: "a", promptIds: [1], sampling: DEFAULT_SAMPLING }));
 * q.shift()?.id; // "a"
 * ```
 */
export class SequenceQueue<S = unknown> {
  #front: Sequence<S>[] = []; // pushed to the front; top of stack = head
  #back: Sequence<S>[] = [];
  #head = 0; // index of the first live element of #back

  /** Number of queued sequences. */
  get length(): number {
    return this.#front.length + this.#back.length - this.#head;
  }

  /** Queues at the tail (new arrivals). */
  pushBack(x: Sequence<S>): void {
    this.#back.push(x);
  }

  /** Queues at the head (preempted sequences). */
  pushFront(x: Sequence<S>): void {
    this.#front.push(x);
  }

  /** The head, without removing it. */
  peek(): Sequence<S> | undefined {
    return this.#front.length > 0 ? this.#front[this.#front.length - 1] : this.#back[this.#head];
  }

  /** Removes and returns the head. */
  shift(): Sequence<S> | undefined {
    if (this.#front.length > 0) return this.#front.pop();
    if (this.#head >= this.#back.length) return undefined;
    const x = this.#back[this.#head++];
    if (this.#head > 1024 && this.#head * 2 > this.#back.length) {
      this.#back = this.#back.slice(this.#head);
      this.#head = 0;
    }
    return x;
  }

  /** Removes one element (O(n); for aborts). */
  remove(x: Sequence<S>): void {
    const f = this.#front.indexOf(x);
    if (f >= 0) return void this.#front.splice(f, 1);
    const b = this.#back.indexOf(x, this.#head);
    if (b >= 0) this.#back.splice(b, 1);
  }
}
