/** `--shard` parsing: K/N, Kubernetes Indexed Jobs, Slurm arrays, and the split itself. */
import { assertEquals, assertThrows } from "./_assert.ts";
import { parseShard, shardPath } from "../io/shard.ts";
import { inShard } from "../io/run_batch.ts";

Deno.test("shards split line indices K mod N: disjoint, complete, independent of content", () => {
  const count = 3;
  const owners = Array.from(
    { length: 10 },
    (_, i) => [0, 1, 2].filter((k) => inShard({ index: k, count }, i)),
  );
  assertEquals(owners, [[0], [1], [2], [0], [1], [2], [0], [1], [2], [0]]);
  assertEquals(inShard(undefined, 7), true, "no shard: every line");
});

Deno.test("parseShard reads K/N and rejects what cannot be a shard", () => {
  assertEquals(parseShard("0/1"), { index: 0, count: 1 });
  assertEquals(parseShard("2/5"), { index: 2, count: 5 });
  assertThrows(() => parseShard("5/5"), /shard index 5 is not below the shard count 5/);
  assertThrows(() => parseShard("1/0"), /at least 1/);
  assertThrows(() => parseShard("1-3"), /K\/N .* or auto/);
});

Deno.test("parseShard auto: Kubernetes index with the count from --num-shards or the environment", () => {
  const env = { JOB_COMPLETION_INDEX: "3" };
  assertEquals(parseShard("auto", { env, numShards: 8 }), { index: 3, count: 8 });
  assertEquals(
    parseShard("auto", { env: { ...env, BATCHWRIGHT_NUM_SHARDS: "4" } }),
    { index: 3, count: 4 },
  );
  assertEquals(
    parseShard("auto", { env: { ...env, BATCHWRIGHT_NUM_SHARDS: "4" }, numShards: 6 }),
    { index: 3, count: 6 },
    "the flag wins",
  );
  assertThrows(() => parseShard("auto", { env }), /--num-shards N or set BATCHWRIGHT_NUM_SHARDS/);
  assertThrows(() => parseShard("auto", { env, numShards: 3 }), /index 3 is not below .* 3/);
});

Deno.test("parseShard auto: a Slurm array's rank, whatever its first id and step", () => {
  assertEquals(
    parseShard("auto", { env: { SLURM_ARRAY_TASK_ID: "0", SLURM_ARRAY_TASK_COUNT: "4" } }),
    { index: 0, count: 4 },
  );
  const env = {
    SLURM_ARRAY_TASK_ID: "7",
    SLURM_ARRAY_TASK_MIN: "1",
    SLURM_ARRAY_TASK_STEP: "2",
    SLURM_ARRAY_TASK_COUNT: "5",
  };
  assertEquals(parseShard("auto", { env }), { index: 3, count: 5 });
  assertThrows(
    () => parseShard("auto", { env: { ...env, SLURM_ARRAY_TASK_ID: "8" } }),
    /not a task of the array/,
  );
  assertThrows(() => parseShard("auto", { env: {} }), /neither JOB_COMPLETION_INDEX .* nor SLURM/);
});

Deno.test("{shard} in a path becomes the shard index", () => {
  assertEquals(shardPath("s3/out-{shard}.jsonl", { index: 4, count: 9 }), "s3/out-4.jsonl");
  assertEquals(shardPath("out-{shard}.jsonl", undefined), "out-{shard}.jsonl");
});
