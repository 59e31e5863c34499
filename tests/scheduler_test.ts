import assert from "node:assert/strict";
import { type ScheduledBatch, Scheduler, type SchedulerOptions } from "../engine/scheduler.ts";
import { Sequence } from "../engine/sequence.ts";
import { DEFAULT_SAMPLING } from "../engine/types.ts";

function seqOf(id: string, promptIds: number[], maxTokens = 4): Sequence {
  return new Sequence({ id, promptIds, sampling: { ...DEFAULT_SAMPLING, maxTokens } });
}

function schedulerOf(options: Partial<SchedulerOptions> = {}): Scheduler {
  return new Scheduler({
    maxNumSeqs: 8,
    maxNumBatchedTokens: 64,
    blockSize: 4,
    numBlocks: 64,
    enablePrefixCaching: true,
    maxModelLen: 256,
    ...options,
  });
}

/** The stand-in "model": the next token is a deterministic function of the tokens so far. */
function fakeNextToken(tokens: readonly number[]): number {
  let h = tokens.length;
  for (const t of tokens) h = (Math.imul(h, 31) + t) % 1000;
  return h;
}

/** Commits a batch, samples with the fake model and finishes sequences at maxTokens. */
function completeStep(s: Scheduler, batch: ScheduledBatch): Sequence[] {
  s.commit(batch);
  const finished: Sequence[] = [];
  for (const { seq, sample } of batch.items) {
    if (!sample) continue;
    seq.appendToken(fakeNextToken(seq.tokenIds));
    if (seq.numOutputTokens >= seq.request.sampling.maxTokens) {
      s.finish(seq);
      finished.push(seq);
    }
  }
  return finished;
}

const range = (from: number, to: number) => Array.from({ length: to - from }, (_, i) => from + i);

Deno.test("scheduler respects the token and sequence budgets", () => {
  const bySeqs = schedulerOf({ maxNumSeqs: 2 });
  for (let i = 0; i < 5; i++) bySeqs.add(seqOf(`s${i}`, [1, 2, 3]));
  const first = bySeqs.schedule()!;
  assert.equal(first.items.length, 2);
  assert.equal(first.numTokens, 6);
  assert.equal(bySeqs.numRunning, 2);
  assert.equal(bySeqs.numWaiting, 3);

  const byTokens = schedulerOf({ maxNumBatchedTokens: 10 });
  for (let i = 0; i < 5; i++) byTokens.add(seqOf(`t${i}`, [1, 2, 3, i]));
  const batch = byTokens.schedule()!;
  assert.deepEqual(batch.items.map((it) => it.count), [4, 4, 2]);
  assert.deepEqual(batch.items.map((it) => it.sample), [true, true, false]);
  assert.equal(batch.numTokens, 10);
});

Deno.test("scheduler runs decodes before prefills", () => {
  const s = schedulerOf({ maxNumBatchedTokens: 8 });
  const a = seqOf("a", [1, 2, 3, 4], 10);
  s.add(a);
  completeStep(s, s.schedule()!);
  const b = seqOf("b", range(0, 20));
  s.add(b);
  const batch = s.schedule()!;
  assert.deepEqual(
    batch.items.map(({ seq, start, count, sample }) => [seq.id, start, count, sample]),
    [["a", 4, 1, true], ["b", 0, 7, false]],
  );
});

Deno.test("scheduler chunks a long prompt across steps with decodes interleaved", () => {
  const s = schedulerOf({ maxNumBatchedTokens: 8 });
  const a = seqOf("a", [1, 2], 20);
  s.add(a);
  completeStep(s, s.schedule()!);
  const b = seqOf("b", range(0, 30));
  s.add(b);
  const chunks: [number, number, boolean][] = [];
  while (b.numOutputTokens === 0) {
    const batch = s.schedule()!;
    assert.ok(batch.numTokens <= 8);
    const decodeA = batch.items.find((it) => it.seq === a);
    assert.ok(decodeA && decodeA.count === 1, "the decode is never stalled by the long prompt");
    const chunk = batch.items.find((it) => it.seq === b)!;
    chunks.push([chunk.start, chunk.count, chunk.sample]);
    completeStep(s, batch);
  }
  assert.deepEqual(chunks, [[0, 7, false], [7, 7, false], [14, 7, false], [21, 7, false], [
    28,
    2,
    true,
  ]]);
});

Deno.test("scheduler preempts the newest sequence when KV blocks run out", () => {
  const s = schedulerOf({ blockSize: 2, numBlocks: 4 });
  const [a, b, c] = [seqOf("a", [1, 2], 3), seqOf("b", [3, 4], 3), seqOf("c", [5, 6], 3)];
  for (const seq of [a!, b!, c!]) s.add(seq);
  completeStep(s, s.schedule()!); // 3 blocks used; each sequence now needs a second one
  const d = seqOf("d", [7, 8], 1);
  s.add(d);

  const batch = s.schedule()!;
  assert.deepEqual(batch.items.map((it) => it.seq.id), ["a", "b"]);
  assert.equal(s.preemptions, 1);
  assert.equal(c!.status, "waiting");
  assert.deepEqual(c!.blockTable, []);
  assert.equal(c!.numComputedTokens, 0);
  assert.equal(s.numWaiting, 2);
  assert.equal(s.blockManager.numFreeBlocks, 0);
  completeStep(s, batch);

  // The preempted sequence is recomputed from all its tokens, ahead of the new arrival.
  s.finish(a!);
  const next = s.schedule()!;
  const recompute = next.items.find((it) => it.seq === c)!;
  assert.equal(recompute.start, 0);
  assert.equal(recompute.count, 3);
  assert.equal(recompute.sample, true);
  assert.equal(next.items.some((it) => it.seq === d), false);
  assert.equal(s.numWaiting, 1);
});

Deno.test("scheduler rejects requests that can never fit instead of deadlocking", () => {
  const s = schedulerOf({ blockSize: 2, numBlocks: 3, maxModelLen: 8 });
  const tooBig = seqOf("big", range(0, 5), 4); // 9 tokens → 5 blocks > 3
  const tooLong = seqOf("long", range(0, 9), 1);
  const empty = seqOf("empty", [], 1);
  const ok = seqOf("ok", [1, 2, 3], 2);
  for (const seq of [tooBig, tooLong, empty, ok]) s.add(seq);
  const batch = s.schedule()!;
  assert.deepEqual(batch.rejected.map((r) => r.seq.id), ["big", "long", "empty"]);
  assert.match(batch.rejected[0]!.reason, /up to 8 tokens .*4 blocks of 2.*holds 3 blocks/);
  assert.match(batch.rejected[1]!.reason, /9 tokens.*context length is 8/);
  assert.deepEqual(batch.items.map((it) => it.seq.id), ["ok"]);
  assert.equal(tooBig.status, "finished");
  assert.equal(s.numWaiting, 0);
});

Deno.test("a running sequence that outgrows the whole pool is rejected, not preempted forever", () => {
  const s = schedulerOf({ blockSize: 2, numBlocks: 2 });
  const a = seqOf("a", [1, 2], 2);
  s.add(a);
  let batch = s.schedule()!;
  for (let token = 0; batch.rejected.length === 0; token++) {
    assert.ok(token < 10);
    s.commit(batch);
    a.appendToken(token); // an engine that ignores maxTokens
    batch = s.schedule()!;
  }
  assert.equal(batch.rejected[0]!.seq, a);
  assert.equal(a.numTokens, 5);
  assert.equal(a.status, "finished");
  assert.equal(s.hasWork(), false);
  assert.equal(s.blockManager.numFreeBlocks, 2);
});

Deno.test("abort removes waiting and running sequences and frees their blocks", () => {
  const s = schedulerOf({ maxNumSeqs: 1 });
  const [a, b] = [seqOf("a", [1, 2, 3]), seqOf("b", [4, 5, 6])];
  s.add(a!);
  s.add(b!);
  s.schedule();
  assert.equal(s.abort("b"), b);
  assert.equal(s.abort("a"), a);
  assert.equal(s.abort("nope"), undefined);
  assert.equal(s.hasWork(), false);
  assert.equal(s.blockManager.numFreeBlocks, 64);
  assert.equal(s.schedule(), null);
});

Deno.test("a finished request's prompt serves later requests from the prefix cache", () => {
  const s = schedulerOf();
  const system = range(100, 112);
  const a = seqOf("a", [...system, 1], 1);
  s.add(a);
  while (s.hasWork()) completeStep(s, s.schedule()!);
  const b = seqOf("b", [...system, 2], 1);
  s.add(b);
  const batch = s.schedule()!;
  assert.equal(b.numCachedTokens, 12);
  assert.deepEqual(batch.items.map((it) => [it.start, it.count]), [[12, 1]]);
});

/** Runs requests to completion, checking the KV slots the fake model would read and write. */
function simulate(options: Partial<SchedulerOptions>, prompts: number[][], maxTokens: number) {
  const s = schedulerOf(options);
  const B = s.blockManager.blockSize;
  const slots = new Float64Array(s.blockManager.numBlocks * B).fill(-1); // (numBlocks * B) token at slot
  const done = new Map<string, number[]>();
  prompts.forEach((p, i) => s.add(seqOf(`r${i}`, p, maxTokens)));
  for (let step = 0; s.hasWork(); step++) {
    assert.ok(step < 100_000, "the simulation must terminate");
    const batch = s.schedule();
    assert.ok(batch !== null, "schedule() returns work while hasWork()");
    assert.equal(batch.rejected.length, 0);
    assert.equal(new Set(batch.items.map((it) => it.seq)).size, batch.items.length);
    assert.ok(batch.numTokens <= s.options.maxNumBatchedTokens);
    assert.ok(batch.items.length <= s.options.maxNumSeqs);
    for (const { seq, start, count } of batch.items) {
      const slot = (p: number) => seq.blockTable[Math.floor(p / B)]! * B + (p % B);
      for (let p = 0; p < start; p++) assert.equal(slots[slot(p)], seq.tokenIds[p]);
      for (let p = start; p < start + count; p++) {
        assert.equal(s.blockManager.refCount(seq.blockTable[Math.floor(p / B)]!), 1);
        slots[slot(p)] = seq.tokenIds[p]!;
      }
    }
    for (const seq of completeStep(s, batch)) {
      assert.equal(done.has(seq.id), false, `${seq.id} finished twice`);
      done.set(seq.id, seq.outputIds);
    }
  }
  assert.equal(done.size, prompts.length);
  assert.equal(s.numRunning + s.numWaiting, 0);
  assert.equal(s.blockManager.numFreeBlocks, s.blockManager.numBlocks);
  return { outputs: done, preemptions: s.preemptions, hitRate: s.blockManager.hitRate };
}

Deno.test("every request finishes exactly once under tiny block pools", () => {
  let seed = 7;
  const rand = (n: number) => (seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) % n;
  const system = [900, 901, 902, 903, 904];
  const prompts = range(0, 40).map((i) => {
    const own = range(0, 1 + rand(9)).map(() => rand(50));
    return i % 2 === 0 ? [...system, ...own] : own;
  });
  const reference = simulate({ numBlocks: 1000, enablePrefixCaching: false }, prompts, 6).outputs;
  let preemptions = 0;
  for (const blockSize of [1, 2, 4]) {
    for (const enablePrefixCaching of [false, true]) {
      const numBlocks = Math.ceil(20 / blockSize) + 1; // room for one longest request, plus one
      const run = simulate(
        { blockSize, numBlocks, enablePrefixCaching, maxNumBatchedTokens: 7 },
        prompts,
        6,
      );
      assert.deepEqual(
        run.outputs,
        reference,
        `blockSize ${blockSize}, caching ${enablePrefixCaching}`,
      );
      preemptions += run.preemptions;
      if (enablePrefixCaching) assert.ok(run.hitRate > 0);
    }
  }
  assert.ok(preemptions > 0, "tiny pools must exercise preemption");
});

Deno.test("100,000 queued sequences allocate no blocks", () => {
  const s = schedulerOf({ maxNumSeqs: 256, maxNumBatchedTokens: 1024, numBlocks: 512 });
  for (let i = 0; i < 100_000; i++) s.add(seqOf(`q${i}`, [i % 7, 1, 2], 1));
  assert.equal(s.numWaiting, 100_000);
  assert.equal(s.blockManager.numFreeBlocks, 512);
  const first = s.schedule()!;
  assert.equal(first.items.length, 256);
  assert.equal(s.blockManager.numFreeBlocks, 512 - 256);
  let finished = completeStep(s, first).length;
  while (s.hasWork()) finished += completeStep(s, s.schedule()!).length;
  assert.equal(finished, 100_000);
  assert.equal(s.blockManager.numFreeBlocks, 512);
});

Deno.test("scheduler preempts the newest running sequences first when five share a full pool", () => {
  const s = schedulerOf({ blockSize: 2, numBlocks: 6 });
  const seqs = ["a", "b", "c", "d", "e"].map((id, i) => seqOf(id, [10 + i, 20 + i], 3));
  for (const seq of seqs) s.add(seq);
  completeStep(s, s.schedule()!); // 5 of 6 blocks used; each sequence now needs a second one
  const preemptedIds: string[] = [];
  const batch = s.schedule()!;
  for (const seq of seqs) if (seq.status === "waiting") preemptedIds.push(seq.id);
  // a takes the free block; b preempts e, the newest; c preempts d; nothing is left for d.
  assert.deepEqual(batch.items.map((it) => it.seq.id), ["a", "b", "c"]);
  assert.deepEqual(preemptedIds, ["d", "e"]);
  assert.equal(s.preemptions, 2);
  assert.equal(s.blockManager.numFreeBlocks, 0);
  completeStep(s, batch);

  // The preempted come back oldest first as blocks free up.
  const admitted: string[] = [];
  while (s.hasWork()) {
    const next = s.schedule()!;
    for (const { seq, start } of next.items) {
      if (start === 0 && !admitted.includes(seq.id)) admitted.push(seq.id);
    }
    completeStep(s, next);
  }
  assert.deepEqual(admitted, ["d", "e"]);
});

Deno.test("a step that preempts admits nothing, not even the sequence it preempted", () => {
  // a and b have the same prompt and prefill it in the same step, so each computes its own
  // copy of the shared blocks and the prefix cache answers with a's. When a needs a third
  // block, b (the newest) is preempted; its blocks are duplicates and go back clean, and b
  // could be readmitted at once on a's cached blocks. It must wait for the next step.
  const s = schedulerOf({ blockSize: 2, numBlocks: 5 });
  const [a, b] = [seqOf("a", [1, 2, 3], 4), seqOf("b", [1, 2, 3], 4)];
  s.add(a!);
  s.add(b!);
  completeStep(s, s.schedule()!); // prefill both: 4 tokens each, 2 blocks each
  completeStep(s, s.schedule()!); // decode both: 5 tokens each, still 2 blocks (4 used)
  const c = seqOf("c", [7], 1);
  s.add(c);
  assert.equal(s.blockManager.numFreeBlocks, 1);
  const preempting = s.schedule()!; // a and b each need a third block; one is free
  assert.equal(s.preemptions, 1);
  assert.equal(b!.status, "waiting");
  assert.deepEqual(preempting.items.map((it) => it.seq.id), ["a"]);
  assert.equal(c.status, "waiting");
  completeStep(s, preempting);

  const next = s.schedule()!;
  const readmitted = next.items.find((it) => it.seq === b);
  assert.ok(readmitted, "b is readmitted in the step after");
  assert.equal(readmitted.start, 4, "b's two full blocks are served by a's cached ones");
});
