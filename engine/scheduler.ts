/**
 * The vLLM scheduling loop in small: each step fills one token budget with,
 * in order, one decode token per running sequence, chunks of running
 * prefills, and newly admitted waiting sequences (FIFO). When a decode needs
 * a KV block and none is left, the newest running sequence is preempted: its
 * blocks are freed and it is recomputed later from its current tokens.
 * A sequence whose last step is still in flight with no placeholder for its
 * next id (engine/sequence.ts) has nothing to compute and sits the step out.
 *
 * @module
 */

import { BlockManager } from "./block_manager.ts";
import { type Sequence, SequenceQueue } from "./sequence.ts";

/** Engine-level limits the scheduler works within. */
export interface SchedulerOptions {
  /** Most sequences running at once (and per batch). */
  readonly maxNumSeqs: number;
  /** Most tokens computed in one step. */
  readonly maxNumBatchedTokens: number;
  /** Tokens per KV block. */
  readonly blockSize: number;
  /** KV blocks in the pool. */
  readonly numBlocks: number;
  readonly enablePrefixCaching: boolean;
  /** The model's context length. */
  readonly maxModelLen: number;
}

/** One sequence's share of a step: compute `tokenIds[start, start + count)`. */
export interface ScheduledItem<S = unknown> {
  readonly seq: Sequence<S>;
  /** First position computed; K/V of position p goes to slot `blockTable[p / B] * B + p % B`. */
  readonly start: number;
  readonly count: number;
  /** The chunk ends at the sequence's last token: sample the next one from its logits. */
  readonly sample: boolean;
}

/** A sequence the scheduler gave up on; the engine reports `reason` as its error. */
export interface RejectedSequence<S = unknown> {
  readonly seq: Sequence<S>;
  readonly reason: string;
}

/** One step's work. `items` may be empty when the step only rejected sequences. */
export interface ScheduledBatch<S = unknown> {
  readonly items: ScheduledItem<S>[];
  /** Sum of the items' counts. */
  readonly numTokens: number;
  readonly rejected: RejectedSequence<S>[];
}

/**
 * Waiting and running queues over a {@link BlockManager}.
 *
 * @example
 * ```ts
 * import { Scheduler } from "./scheduler.ts";
 * import { Sequence } from "./sequence.ts";
 * import { DEFAULT_SAMPLING } from "./types.ts";
 *
 * const s = new Scheduler({
 *   maxNumSeqs: 8, maxNumBatchedTokens: 64, blockSize: 4, numBlocks: 32,
 *   enablePrefixCaching: true, maxModelLen: 128,
 * });
 * s.add(new Sequence({ id: "a", promptIds: [1, 2, 3], sampling: DEFAULT_SAMPLING }));
 * const batch = s.schedule()!; // run the model over batch.items, then:
 * s.commit(batch);
 * for (const { seq, sample } of batch.items) if (sample) seq.appendToken(0);
 * ```
 */
export class Scheduler<S = unknown> {
  readonly blockManager: BlockManager;
  /** How many times a running sequence was preempted for recompute. */
  preemptions = 0;

  readonly #waiting = new SequenceQueue<S>();
  readonly #running: Sequence<S>[] = []; // sorted by arrival, oldest first
  readonly #live = new Map<string, Sequence<S>>(); // waiting or running, by id
  #nextArrival = 0;

  constructor(readonly options: SchedulerOptions) {
    const { maxNumSeqs, maxNumBatchedTokens, maxModelLen } = options;
    if (!(maxNumSeqs >= 1 && maxNumBatchedTokens >= 1 && maxModelLen >= 1)) {
      throw new RangeError("Scheduler needs maxNumSeqs, maxNumBatchedTokens, maxModelLen ≥ 1");
    }
    this.blockManager = new BlockManager(
      options.numBlocks,
      options.blockSize,
      options.enablePrefixCaching,
    );
  }

  /** Sequences queued (holding no KV blocks), preempted ones included. */
  get numWaiting(): number {
    return this.#waiting.length;
  }

  /** Sequences admitted and holding KV blocks. */
  get numRunning(): number {
    return this.#running.length;
  }

  /** Queues a new sequence (it holds no KV blocks until admitted). */
  add(seq: Sequence<S>): void {
    if (seq.status !== "waiting" || this.#live.has(seq.id)) {
      throw new Error(`Sequence "${seq.id}" was already added`);
    }
    seq.setArrival(this.#nextArrival++);
    this.#live.set(seq.id, seq);
    this.#waiting.pushBack(seq);
  }

  /** Whether any sequence is waiting or running. */
  hasWork(): boolean {
    return this.#live.size > 0;
  }

  /** Picks this step's work, or null when there is none. */
  schedule(): ScheduledBatch<S> | null {
    const { maxNumBatchedTokens, maxNumSeqs } = this.options;
    const bm = this.blockManager;
    const items: ScheduledItem<S>[] = [];
    const rejected: RejectedSequence<S>[] = [];
    let budget = maxNumBatchedTokens;
    let preempted = false;

    // 1. Decodes, oldest first; the newest running sequence makes room.
    for (let i = 0; i < this.#running.length && budget > 0; i++) {
      const seq = this.#running[i]!;
      if (this.#remaining(seq) !== 1) continue;
      while (!bm.canAppend(seq)) {
        const victim = this.#running[this.#running.length - 1]!; // newest, not yet scheduled
        if (victim === seq && this.#running.length === 1) {
          // Alone with the whole pool and still short: it can never fit.
          this.#drop(seq);
          rejected.push({ seq, reason: this.#tooLong(seq.numTokens) });
          break;
        }
        this.#preempt(victim);
        preempted = true;
        if (victim === seq) break;
      }
      if (seq.status !== "running") break; // it preempted itself: nothing newer is left
      bm.mayAppend(seq);
      items.push({ seq, start: seq.numComputedTokens, count: 1, sample: true });
      budget -= 1;
    }

    // 2. Running prefills (chunked), oldest first.
    for (const seq of this.#running) {
      if (budget <= 0) break;
      const remaining = this.#remaining(seq);
      if (remaining <= 1) continue; // a decode, handled above, or waiting for its sampled id
      const count = Math.min(remaining, budget);
      items.push(this.#chunk(seq, count));
      budget -= count;
    }

    // 3. Admit waiting sequences in FIFO order (not in a step that had to preempt).
    while (!preempted && budget > 0 && this.#running.length < maxNumSeqs) {
      const seq = this.#waiting.peek();
      // A placeholder's id is still on its way: readmit the sequence once it is back.
      if (seq === undefined || seq.hasPlaceholder) break;
      const reason = this.#rejectReason(seq);
      if (reason !== null) {
        this.#waiting.shift();
        this.#live.delete(seq.id);
        seq.markFinished();
        rejected.push({ seq, reason });
        continue;
      }
      if (!bm.canAllocate(seq)) break;
      this.#waiting.shift();
      seq.markRunning(bm.allocate(seq));
      this.#insertRunning(seq);
      const count = Math.min(this.#remaining(seq), budget);
      items.push(this.#chunk(seq, count));
      budget -= count;
    }

    if (items.length > maxNumSeqs) throw new Error("Scheduled more sequences than maxNumSeqs");
    if (items.length === 0 && rejected.length === 0) return null;
    return { items, numTokens: maxNumBatchedTokens - budget, rejected };
  }

  /** Marks the batch's tokens computed and registers newly full blocks in the prefix cache. */
  commit(batch: ScheduledBatch<S>): void {
    for (const { seq, start, count } of batch.items) {
      if (seq.status !== "running") continue; // aborted while the step ran
      if (seq.numComputedTokens !== start) {
        throw new Error(`Sequence "${seq.id}" was committed out of order`);
      }
      seq.advanceComputed(count);
      this.blockManager.registerComputed(seq, start, seq.numComputedTokens);
    }
  }

  /** Ends a sequence and frees its blocks at once. */
  finish(seq: Sequence<S>): void {
    if (seq.status === "finished") return;
    this.#drop(seq);
  }

  /** Removes every waiting and running sequence (the engine failed); returns them. */
  abortAll(): Sequence<S>[] {
    const all = [...this.#live.values()];
    for (const seq of all) this.#drop(seq);
    return all;
  }

  /** Removes a waiting or running sequence; returns it, or undefined if unknown. */
  abort(id: string): Sequence<S> | undefined {
    const seq = this.#live.get(id);
    if (seq === undefined) return undefined;
    this.#drop(seq);
    return seq;
  }

  /**
   * Tokens still to compute; 0 for a sequence whose last step is still in flight (its
   * next id is not known yet, or it ends there), which this step skips.
   */
  #remaining(seq: Sequence<S>): number {
    return seq.numTokens - seq.numComputedTokens;
  }

  #chunk(seq: Sequence<S>, count: number): ScheduledItem<S> {
    const start = seq.numComputedTokens;
    return { seq, start, count, sample: start + count === seq.numTokens };
  }

  #insertRunning(seq: Sequence<S>): void {
    let i = this.#running.length;
    while (i > 0 && this.#running[i - 1]!.arrival > seq.arrival) i--;
    this.#running.splice(i, 0, seq);
  }

  #preempt(seq: Sequence<S>): void {
    this.blockManager.free(seq);
    this.#running.splice(this.#running.indexOf(seq), 1);
    seq.markWaiting();
    this.#waiting.pushFront(seq);
    this.preemptions++;
  }

  /** Frees, dequeues and finishes a sequence wherever it is. */
  #drop(seq: Sequence<S>): void {
    if (seq.status === "running") {
      this.blockManager.free(seq);
      this.#running.splice(this.#running.indexOf(seq), 1);
    } else if (seq.status === "waiting") this.#waiting.remove(seq);
    this.#live.delete(seq.id);
    seq.markFinished();
  }

  /** Why a waiting sequence can never run, or null when it can. */
  #rejectReason(seq: Sequence<S>): string | null {
    const { maxModelLen } = this.options;
    if (seq.numPromptTokens === 0) return "The prompt is empty";
    if (seq.numPromptTokens > maxModelLen) {
      return `The prompt has ${seq.numPromptTokens} tokens but the model's context length is ${maxModelLen}`;
    }
    const total = Math.min(seq.numPromptTokens + seq.request.sampling.maxTokens, maxModelLen);
    const needed = Math.max(total, seq.numTokens);
    return this.blockManager.blocksFor(needed) > this.blockManager.numBlocks
      ? this.#tooLong(needed)
      : null;
  }

  #tooLong(numTokens: number): string {
    const { blockSize, numBlocks } = this.options;
    return `The request needs up to ${numTokens} tokens of KV cache ` +
      `(${this.blockManager.blocksFor(numTokens)} blocks of ${blockSize}) but the cache ` +
      `holds ${numBlocks} blocks; lower max_tokens or enlarge the KV cache`;
  }
}
