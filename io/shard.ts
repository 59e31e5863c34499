/**
 * `--shard K/N` and `--shard auto`: which slice of the input this worker
 * runs. A shard owns the input lines whose 0-based line index is K mod N, so
 * N workers split one input with no coordinator, and the split depends only
 * on line positions. `auto` reads K and N from the scheduler that started
 * the worker: a Kubernetes Indexed Job or a Slurm job array.
 *
 * @module
 */
import type { Shard } from "./run_batch.ts";

/** Environment variables `--shard auto` understands. */
export const SHARD_ENV = {
  /** Kubernetes Indexed Job: the pod's completion index (K). */
  k8sIndex: "JOB_COMPLETION_INDEX",
  /** N for Kubernetes: set it from the Job's `spec.completions` (Kubernetes does not). */
  numShards: "BATCHWRIGHT_NUM_SHARDS",
  slurmId: "SLURM_ARRAY_TASK_ID",
  slurmCount: "SLURM_ARRAY_TASK_COUNT",
  slurmMin: "SLURM_ARRAY_TASK_MIN",
  slurmStep: "SLURM_ARRAY_TASK_STEP",
} as const;

/** A `--shard` value that cannot be used; the message says what to pass. */
export class ShardError extends Error {
  /** `message` names the flag or variable and what to pass. */
  constructor(message: string) {
    super(message);
    this.name = "ShardError";
  }
}

function _count(text: string, what: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(n)) {
    throw new ShardError(`${what} must be a whole number, got "${text}"`);
  }
  return n;
}

function _checked(index: number, count: number, from: string): Shard {
  if (count < 1) throw new ShardError(`${from}: the number of shards must be at least 1`);
  if (index >= count) {
    throw new ShardError(`${from}: shard index ${index} is not below the shard count ${count}`);
  }
  return { index, count };
}

/**
 * Parses `K/N` or `auto`. For `auto`, `numShards` (from `--num-shards`)
 * wins over the environment's count.
 *
 * @example
 * ```ts
 * parseShard("1/3"); // { index: 1, count: 3 }
 * parseShard("auto", { env: { JOB_COMPLETION_INDEX: "2" }, numShards: 4 }); // { index: 2, count: 4 }
 * parseShard("auto", { env: { SLURM_ARRAY_TASK_ID: "5", SLURM_ARRAY_TASK_MIN: "1", SLURM_ARRAY_TASK_COUNT: "8" } });
 * // { index: 4, count: 8 }
 * ```
 */
export function parseShard(
  text: string,
  options: { env?: Readonly<Record<string, string | undefined>>; numShards?: number } = {},
): Shard {
  if (text !== "auto") {
    const m = /^(\d+)\/(\d+)$/.exec(text.trim());
    if (!m) throw new ShardError(`--shard must be K/N (e.g. 0/4) or auto, got "${text}"`);
    return _checked(Number(m[1]), Number(m[2]), `--shard ${text}`);
  }
  const env = options.env ?? {};
  const get = (name: string) => env[name]?.trim() || undefined;
  const k8s = get(SHARD_ENV.k8sIndex);
  if (k8s !== undefined) {
    const from = `--shard auto (${SHARD_ENV.k8sIndex}=${k8s})`;
    const n = options.numShards ??
      (get(SHARD_ENV.numShards) === undefined
        ? undefined
        : _count(get(SHARD_ENV.numShards)!, SHARD_ENV.numShards));
    if (n === undefined) {
      throw new ShardError(
        `${from}: a Kubernetes Indexed Job does not say how many shards there are: pass ` +
          `--num-shards N or set ${SHARD_ENV.numShards} to the Job's spec.completions`,
      );
    }
    return _checked(_count(k8s, SHARD_ENV.k8sIndex), n, from);
  }
  const slurm = get(SHARD_ENV.slurmId);
  if (slurm !== undefined) {
    const from = `--shard auto (${SHARD_ENV.slurmId}=${slurm})`;
    const countText = get(SHARD_ENV.slurmCount);
    const n = options.numShards ??
      (countText === undefined ? undefined : _count(countText, SHARD_ENV.slurmCount));
    if (n === undefined) {
      throw new ShardError(`${from}: ${SHARD_ENV.slurmCount} is not set: pass --num-shards N`);
    }
    // Arrays may start anywhere and step (--array=1-16:2): the shard is the task's rank.
    const min = _count(get(SHARD_ENV.slurmMin) ?? "0", SHARD_ENV.slurmMin);
    const step = Math.max(1, _count(get(SHARD_ENV.slurmStep) ?? "1", SHARD_ENV.slurmStep));
    const offset = _count(slurm, SHARD_ENV.slurmId) - min;
    if (offset < 0 || offset % step !== 0) {
      throw new ShardError(`${from}: not a task of the array ${min}..:${step}`);
    }
    return _checked(offset / step, n, from);
  }
  throw new ShardError(
    `--shard auto found neither ${SHARD_ENV.k8sIndex} (Kubernetes Indexed Job) nor ` +
      `${SHARD_ENV.slurmId} (Slurm job array): pass --shard K/N`,
  );
}

/**
 * Replaces `{shard}` in a path with the shard index, so one command line
 * serves every worker (`-o out-{shard}.jsonl`).
 *
 * @example
 * ```ts
 * shardPath("out/part-{shard}.jsonl", { index: 3, count: 8 }); // "out/part-3.jsonl"
 * ```
 */
export function shardPath(path: string, shard: Shard | undefined): string {
  return shard === undefined ? path : path.replaceAll("{shard}", String(shard.index));
}
