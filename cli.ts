/**
 * The command line: `deno run -A cli.ts run-batch --model DIR -i IN -o OUT`.
 * Flags and environment variables are read here and nowhere else; everything
 * below takes options objects.
 *
 * @module
 */
import { basename, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { fileURLToPath as fromFileUrl } from "node:url";
import { Engine, type EngineOptions } from "./engine/engine.ts";
import { formatProfile } from "./engine/gpu/profile.ts";
import { ApiBackend } from "./api/backend.ts";
import {
  type BatchSummary,
  formatSummary,
  runBatch,
  type RunBatchOptions,
} from "./io/run_batch.ts";
import type { ProgressOptions } from "./io/progress.ts";
import { downloadModel, formatProgress, parseModelRef } from "./engine/loader/hub.ts";
import { preflightBatch } from "./io/preflight.ts";
import { parseShard, ShardError, shardPath } from "./io/shard.ts";
import type { Shard } from "./io/run_batch.ts";
import { createLogger, LOG_LEVELS, type LogFields, type Logger, type LogLevel } from "./io/log.ts";
import { BatchMetrics, type MetricsServer } from "./io/metrics.ts";
import { mergeOutputs } from "./io/merge.ts";
import denoJson from "./deno.json" with { type: "json" };

type FlagType = "string" | "boolean";

/** The sections of `--help`, in the order printed. */
const GROUPS = {
  required: "Required",
  io: "Input and output",
  engine: "Engine",
  sampling:
    "Sampling defaults (a request's own fields win, then the model's generation_config.json)",
  operations: "Operations",
} as const;

interface Flag {
  readonly name: string;
  readonly short?: string;
  readonly type: FlagType;
  readonly value?: string;
  readonly default?: string;
  readonly help: string;
  /** The `--help` section (default: engine). */
  readonly group?: keyof typeof GROUPS;
}

const FLAGS: readonly Flag[] = [
  {
    name: "truncate-max-tokens",
    type: "boolean",
    default: "false",
    group: "sampling",
    help:
      "cap a max_tokens that does not fit the context instead of answering 400 context_length_exceeded",
  },
  {
    name: "model",
    group: "required",
    type: "string",
    value: "DIR|OWNER/NAME[@REV]",
    help:
      "model directory (config.json, model.safetensors, tokenizer files), or a Hugging Face hub id downloaded into the HF cache (HF_ENDPOINT, HF_TOKEN, HF_HOME, HF_HUB_OFFLINE=1); required",
  },
  {
    name: "input-file",
    short: "i",
    group: "required",
    type: "string",
    value: "PATH|URL|-",
    help:
      "batch input: a JSONL path, an http(s) URL, or - for stdin (.gz is decompressed); required",
  },
  {
    name: "output-file",
    short: "o",
    group: "required",
    type: "string",
    value: "PATH|URL|-",
    help:
      "batch output: a JSONL path, an http(s) URL (uploaded with PUT at the end), or - for stdout; required",
  },
  {
    name: "error-file",
    group: "io",
    type: "string",
    value: "PATH",
    help: "write failed requests here instead of the output (OpenAI style)",
  },
  {
    name: "output-tmp-dir",
    group: "io",
    type: "string",
    value: "DIR",
    help: "where the output waits before being renamed or uploaded",
    default: "beside the output",
  },
  {
    name: "order",
    group: "io",
    type: "string",
    value: "completion|input",
    default: "completion",
    help: "write answers as they finish, or in input order",
  },
  {
    name: "resume",
    group: "io",
    type: "boolean",
    default: "false",
    help:
      "keep the answers an earlier (interrupted) run wrote and run only the rest; after Ctrl-C, rerun the same command with --resume",
  },
  {
    name: "overwrite",
    group: "io",
    type: "boolean",
    default: "false",
    help: "replace an existing output file",
  },
  {
    name: "validate-only",
    group: "io",
    type: "boolean",
    default: "false",
    help:
      "check every line (JSON, schema, duplicate custom_id, url, method) and exit without loading the model",
  },
  {
    name: "on-invalid",
    group: "io",
    type: "string",
    value: "error-line|skip|abort",
    default: "error-line",
    help: "what an invalid input line does",
  },
  {
    name: "max-concurrency",
    group: "operations",
    type: "string",
    value: "N",
    default: "1024",
    help: "requests in flight at once (the engine batches them; bounds memory)",
  },
  {
    name: "request-timeout",
    group: "operations",
    type: "string",
    value: "SECONDS",
    help: "a request still running after this gets request_timeout",
  },
  {
    name: "deadline",
    group: "operations",
    type: "string",
    value: "SECONDS",
    help: "the whole batch's time limit: what has not finished gets batch_expired",
  },
  {
    name: "summary-file",
    group: "io",
    type: "string",
    value: "PATH",
    help: "write an OpenAI-style batch object (request_counts, usage) as JSON",
  },
  {
    name: "quiet",
    short: "q",
    group: "operations",
    type: "boolean",
    default: "false",
    help: "no progress output",
  },
  {
    name: "served-model-name",
    type: "string",
    value: "NAME",
    default: "the model directory's name",
    help: 'the name a request\'s "model" must match',
  },
  {
    name: "max-num-seqs",
    type: "string",
    value: "N",
    default: "64",
    help: "most sequences in one engine step",
  },
  {
    name: "max-num-batched-tokens",
    type: "string",
    value: "N",
    default: "512",
    help: "token budget of one engine step (long prompts are prefilled in chunks)",
  },
  {
    name: "block-size",
    type: "string",
    value: "N",
    default: "16",
    help: "tokens per KV cache block",
  },
  {
    name: "kv-cache-memory",
    type: "string",
    value: "BYTES",
    default: "2GiB",
    help: "KV cache pool size, e.g. 512MiB or 4GiB",
  },
  {
    name: "max-model-len",
    type: "string",
    value: "N",
    default: "max_position_embeddings",
    help: "context length (prompt + output)",
  },
  {
    name: "no-enable-prefix-caching",
    type: "boolean",
    default: "false",
    help: "do not share KV blocks between prompts with a common prefix",
  },
  {
    name: "no-async-scheduling",
    type: "boolean",
    default: "false",
    help: "run steps one at a time instead of launching the next step while one runs " +
      "(answers are the same either way)",
  },
  {
    name: "pooling",
    type: "string",
    value: "last|mean",
    default: "last",
    help: "embedding pooling over the final hidden states",
  },
  {
    name: "backend",
    type: "string",
    value: "auto|webgpu|wasm",
    default: "auto",
    help:
      "where the model runs: webgpu, wasm (WebAssembly SIMD on CPU threads); auto picks wasm on software adapters like llvmpipe or without one",
  },
  {
    name: "threads",
    type: "string",
    value: "N",
    default: "CPU count",
    help: "worker threads of the wasm backend",
  },
  {
    name: "kernels",
    type: "string",
    value: "auto|cpu|gpu",
    default: "auto",
    help:
      "WebGPU kernel class: cpu (software adapters like llvmpipe), gpu (real GPUs), auto picks by adapter",
  },
  {
    name: "kv-cache-dtype",
    type: "string",
    value: "auto|f16|f32",
    default: "auto",
    help:
      "KV cache storage: f16 holds twice the tokens of f32 in --kv-cache-memory (webgpu only); auto is f16 for gpu kernels on a device with shader-f16, else f32",
  },
  {
    name: "profile",
    type: "boolean",
    default: "false",
    help:
      "time every GPU kernel (timestamp queries; on the wasm backend every op, by the host clock) and print per-kernel ms, GFLOP/s, GB/s and share of a known card's peak at the end; steps run slower",
  },
  {
    name: "shard",
    group: "io",
    type: "string",
    value: "K/N|auto",
    help:
      "run only the input lines whose 0-based index is K mod N (merge the N outputs with `cli.ts merge`); " +
      "auto reads K and N from a Kubernetes Indexed Job (JOB_COMPLETION_INDEX, with --num-shards or " +
      "BATCHWRIGHT_NUM_SHARDS) or a Slurm array (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT); " +
      "{shard} in -o, --error-file and --summary-file becomes K",
  },
  {
    name: "num-shards",
    group: "io",
    type: "string",
    value: "N",
    help: "the shard count for --shard auto (a Kubernetes Job's completions)",
  },
  {
    name: "metrics-port",
    group: "operations",
    type: "string",
    value: "PORT",
    help:
      "serve Prometheus metrics at http://127.0.0.1:PORT/metrics while the batch runs (vLLM's names, batchwright: prefix; 0 picks a free port)",
  },
  {
    name: "log-format",
    group: "operations",
    type: "string",
    value: "text|json",
    default: "text",
    help: "json: one JSON object per line on stderr (time, level, msg, fields) for log collectors",
  },
  {
    name: "log-level",
    group: "operations",
    type: "string",
    value: "debug|info|warn|error",
    default: "info",
    help: "the least severe messages written (progress and the summary are info)",
  },
  { name: "help", short: "h", group: "operations", type: "boolean", help: "print this help" },
  { name: "version", group: "operations", type: "boolean", help: "print the version and exit" },
];

const HELP_WIDTH = 100;
/** Where flag descriptions start. */
const HELP_INDENT = 45;

/** Splits text into lines of at most `width` characters at spaces (a longer word stays whole). */
function _wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line !== "" && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line === "" ? word : `${line} ${word}`;
  }
  return [...lines, line];
}

/** `batchwright 0.1.0 (deno 2.9.6)`, or `(node 20.20.2)` under the Node entry (node/cli.ts). */
export function versionText(): string {
  // Under node/setup.ts, Deno is @deno/shim-deno, whose Deno.version is not a Deno's.
  const node = navigator.userAgent?.startsWith("Node.js/")
    ? (globalThis as { process?: { versions: { node: string } } }).process?.versions.node
    : undefined;
  return `batchwright ${denoJson.version} (${node ? `node ${node}` : `deno ${Deno.version.deno}`})`;
}

/** The usage text: every flag with its default, in sections, the required ones first. */
export function usage(): string {
  const lines = [
    `batchwright ${denoJson.version}: batch inference for ERNIE-4.5 on WebGPU`,
    "",
    "Usage: deno run -A cli.ts run-batch --model DIR -i INPUT -o OUTPUT [options]",
    "       deno run -A cli.ts merge -o OUTPUT [--error-file PATH] [--input INPUT] SHARD_OUTPUT...",
  ];
  for (const [group, title] of Object.entries(GROUPS)) {
    lines.push("", `${title}:`);
    for (const f of FLAGS.filter((f) => (f.group ?? "engine") === group)) {
      const value = f.value ? ` ${f.value}` : "";
      const names = `${f.short ? `-${f.short}, ` : "    "}--${f.name}${value}`;
      const def = f.default !== undefined ? ` (default: ${f.default})` : "";
      const [first = "", ...more] = _wrap(`${f.help}${def}`, HELP_WIDTH - HELP_INDENT);
      lines.push(`  ${names.padEnd(HELP_INDENT - 3)} ${first}`);
      for (const line of more) lines.push(`${" ".repeat(HELP_INDENT)}${line}`);
    }
  }
  lines.push(
    "",
    "Exit status: 0 when every request was answered (error lines included); 1 when the run",
    "failed or expired, or --validate-only found invalid lines; 2 for a usage error; 130 when",
    "cancelled. On SIGINT/SIGTERM the run stops taking work, writes batch_cancelled lines for",
    "what never ran, and exits 130; --resume picks up from there.",
  );
  return lines.join("\n");
}

/** A usage error: printed with a hint, exit status 2. */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** Parses "512MiB", "2GiB", "1e9", "300MB" into bytes. */
export function parseBytes(text: string, flag: string): number {
  const m = /^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmgt]i?b?|b)?\s*$/i.exec(text);
  if (!m) throw new UsageError(`--${flag} must be a size like 512MiB or 2GiB, got "${text}"`);
  const unit = (m[2] ?? "b").toLowerCase();
  const power = { b: 0, k: 1, m: 2, g: 3, t: 4 }[unit[0] as "b"] ?? 0;
  const base = unit.includes("i") || unit.length === 1 && unit !== "b" ? 1024 : 1000;
  return Math.floor(Number(m[1]) * base ** power);
}

function positiveInt(text: string | undefined, flag: string): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 1) {
    throw new UsageError(`--${flag} must be a positive integer, got "${text}"`);
  }
  return n;
}

function seconds(text: string | undefined, flag: string): number | undefined {
  if (text === undefined) return undefined;
  const n = Number(text);
  if (!(n > 0)) {
    throw new UsageError(`--${flag} must be a positive number of seconds, got "${text}"`);
  }
  return n * 1000;
}

function oneOf<T extends string>(
  text: string | undefined,
  flag: string,
  allowed: readonly T[],
): T | undefined {
  if (text === undefined) return undefined;
  if (!allowed.includes(text as T)) {
    throw new UsageError(`--${flag} must be one of ${allowed.join(", ")}, got "${text}"`);
  }
  return text as T;
}

/** What `run-batch` was asked to do. */
export interface RunBatchCommand {
  readonly modelDir: string;
  readonly engine: EngineOptions;
  readonly truncateMaxTokens: boolean;
  readonly batch: Omit<RunBatchOptions, "backend">;
  /** Serve Prometheus metrics on this port of 127.0.0.1. */
  readonly metricsPort?: number;
  readonly log: { readonly format: "text" | "json"; readonly level: LogLevel };
}

/**
 * Turns `run-batch` arguments into options; throws UsageError. `env` is
 * read only for `--shard auto`.
 */
export function parseRunBatch(
  args: readonly string[],
  env: Readonly<Record<string, string | undefined>> = {},
): RunBatchCommand | "help" | "version" {
  const options = Object.fromEntries(
    FLAGS.map((f) => [f.name, { type: f.type, ...(f.short ? { short: f.short } : {}) }]),
  );
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ args: [...args], options, strict: true, allowPositionals: false }));
  } catch (e) {
    throw new UsageError(
      (e as Error).message.replace(/\. To specify a positional argument.*$/s, ""),
    );
  }
  if (values.help) return "help";
  if (values.version) return "version";
  const str = (name: string) => values[name] as string | undefined;
  for (const required of ["model", "input-file", "output-file"]) {
    if (!str(required)) throw new UsageError(`missing required flag --${required}`);
  }
  const order = oneOf(str("order"), "order", ["completion", "input"] as const);
  const onInvalid = oneOf(
    str("on-invalid"),
    "on-invalid",
    ["error-line", "skip", "abort"] as const,
  );
  const pooling = oneOf(str("pooling"), "pooling", ["last", "mean"] as const);
  const kernels = oneOf(str("kernels"), "kernels", ["auto", "cpu", "gpu"] as const);
  const kvCacheDtype = oneOf(
    str("kv-cache-dtype"),
    "kv-cache-dtype",
    ["auto", "f16", "f32"] as const,
  );
  const runsOn = oneOf(str("backend"), "backend", ["auto", "webgpu", "wasm"] as const);
  const log = {
    format: oneOf(str("log-format"), "log-format", ["text", "json"] as const) ?? "text",
    level: oneOf(str("log-level"), "log-level", LOG_LEVELS) ?? "info",
  };
  // Progress is info: a higher level silences it as -q does.
  const quiet = values.quiet === true || log.level === "warn" || log.level === "error";
  const numShards = positiveInt(str("num-shards"), "num-shards");
  let shard: Shard | undefined;
  try {
    shard = str("shard") === undefined ? undefined : parseShard(str("shard")!, { env, numShards });
  } catch (e) {
    if (e instanceof ShardError) throw new UsageError(e.message);
    throw e;
  }
  if (numShards !== undefined && str("shard") !== "auto") {
    throw new UsageError("--num-shards goes with --shard auto (with --shard K/N, N is the count)");
  }
  const path = (name: string) => str(name) === undefined ? undefined : shardPath(str(name)!, shard);
  const port = str("metrics-port");
  const metricsPort = port === undefined ? undefined : Number(port);
  if (
    metricsPort !== undefined &&
    !(Number.isInteger(metricsPort) && metricsPort >= 0 && metricsPort < 65536)
  ) {
    throw new UsageError(`--metrics-port must be a port number 0..65535, got "${port}"`);
  }
  return {
    metricsPort,
    log,
    modelDir: str("model")!,
    truncateMaxTokens: values["truncate-max-tokens"] === true,
    engine: {
      servedModelName: str("served-model-name"),
      maxNumSeqs: positiveInt(str("max-num-seqs"), "max-num-seqs"),
      maxNumBatchedTokens: positiveInt(str("max-num-batched-tokens"), "max-num-batched-tokens"),
      blockSize: positiveInt(str("block-size"), "block-size"),
      kvCacheMemory: str("kv-cache-memory")
        ? parseBytes(str("kv-cache-memory")!, "kv-cache-memory")
        : undefined,
      maxModelLen: positiveInt(str("max-model-len"), "max-model-len"),
      enablePrefixCaching: values["no-enable-prefix-caching"] !== true,
      asyncScheduling: values["no-async-scheduling"] !== true,
      pooling,
      kernels,
      kvCacheDtype,
      backend: runsOn,
      threads: positiveInt(str("threads"), "threads"),
      profile: values.profile === true,
    },
    batch: {
      input: str("input-file")!,
      output: path("output-file")!,
      errorFile: path("error-file"),
      outputTmpDir: str("output-tmp-dir"),
      order,
      resume: values.resume === true,
      overwrite: values.overwrite === true,
      validateOnly: values["validate-only"] === true,
      onInvalid,
      maxInFlight: positiveInt(str("max-concurrency"), "max-concurrency"),
      requestTimeoutMs: seconds(str("request-timeout"), "request-timeout"),
      deadlineMs: seconds(str("deadline"), "deadline"),
      summaryFile: path("summary-file"),
      progress: { quiet },
      shard,
    },
  };
}

/**
 * The models shipped with batchwright, beside this file: reached through this
 * module's URL, never the working directory, so the single binary (`deno task
 * compile`, which embeds `models/ernie-tiny`) finds them wherever it runs.
 */
export const SHIPPED_MODELS: URL = new URL("./models/", import.meta.url);

const isDirectory = async (path: string) => (await Deno.stat(path).catch(() => null))?.isDirectory;

/** `models/NAME` of a shipped model, as a directory path, when it exists. */
async function shippedModel(model: string): Promise<string | undefined> {
  const name = model.match(/^(?:\.\/)?models\/([\w.-]+)\/?$/)?.[1];
  if (name === undefined || SHIPPED_MODELS.protocol !== "file:") return undefined;
  const dir = fromFileUrl(new URL(name, SHIPPED_MODELS));
  return (await isDirectory(dir)) ? dir : undefined;
}

/**
 * `--model`: an existing directory as is; then `models/NAME` among the shipped
 * models; otherwise a hub id, fetched into the Hugging Face cache with progress
 * on stderr. The served name of a shipped or hub model defaults to its name.
 */
async function resolveModel(
  model: string,
  options: { quiet: boolean; weights: boolean; signal: AbortSignal; log: Logger },
): Promise<{ dir: string; name?: string }> {
  if (await isDirectory(model)) return { dir: model };
  const shipped = await shippedModel(model);
  if (shipped !== undefined) return { dir: shipped, name: basename(shipped) };
  const ref = parseModelRef(model);
  if (ref === null) {
    throw new Error(
      `--model "${model}" is neither a directory nor a hub id like owner/name[@revision]`,
    );
  }
  const env = (name: string) => Deno.env.get(name) || undefined;
  const hfHome = env("HF_HOME") ??
    join(env("XDG_CACHE_HOME") ?? join(env("HOME") ?? ".", ".cache"), "huggingface");
  const token = env("HF_TOKEN") ??
    await Deno.readTextFile(join(hfHome, "token")).then(
      (t) => t.trim() || undefined,
      () => undefined,
    );
  const show = progressLine(options.log);
  const dir = await downloadModel(ref, {
    cacheDir: env("HF_HUB_CACHE") ?? join(hfHome, "hub"),
    endpoint: env("HF_ENDPOINT"),
    token,
    offline: env("HF_HUB_OFFLINE") === "1",
    weights: options.weights,
    signal: options.signal,
    onProgress: options.quiet
      ? undefined
      : (p) => show(`downloading ${ref.repo}: ${formatProgress(p)}`, p.received === p.total),
  });
  return { dir, name: ref.repo };
}

/**
 * A progress line that changes often (download, weight loading): redrawn in
 * place on a terminal, otherwise logged every 2 s and when done.
 */
function progressLine(log: Logger): (line: string, done: boolean) => void {
  const redraw = log.format === "text" && Deno.stderr.isTerminal();
  let shown = -Infinity;
  return (line, done) => {
    if (!done && performance.now() - shown < (redraw ? 100 : 2000)) return;
    shown = performance.now();
    if (!redraw) return log.info(line);
    Deno.stderr.writeSync(
      new TextEncoder().encode(`\rbatchwright: ${line}\x1b[K${done ? "\n" : ""}`),
    );
  };
}

const USAGE_HINT =
  "Usage: deno run -A cli.ts run-batch --model DIR -i INPUT -o OUTPUT (see --help)";

/** Runs the CLI; returns the exit status. */
export async function main(args: readonly string[]): Promise<number> {
  const [command, ...rest] = args;
  if (command === undefined || command === "--help" || command === "-h" || command === "help") {
    console.log(usage());
    return command === undefined ? 2 : 0;
  }
  if (command === "--version" || command === "-V") {
    console.log(versionText());
    return 0;
  }
  if (command === "merge") return await mergeMain(rest);
  if (command !== "run-batch") {
    console.error(`error: unknown command "${command}" (run-batch or merge)\n\n${USAGE_HINT}`);
    return 2;
  }
  let cmd: RunBatchCommand | "help" | "version";
  try {
    cmd = parseRunBatch(rest, Deno.env.toObject());
  } catch (e) {
    if (!(e instanceof UsageError)) throw e;
    // A collector reading --log-format json gets the usage error as JSON too.
    const json = rest.some((a, i) =>
      a === "--log-format=json" || (a === "--log-format" && rest[i + 1] === "json")
    );
    if (json) createLogger({ format: "json" }).error(e.message, { event: "usage" });
    else console.error(`error: ${e.message}\n\n${USAGE_HINT}`);
    return 2;
  }
  if (cmd === "help") {
    console.log(usage());
    return 0;
  }
  if (cmd === "version") {
    console.log(versionText());
    return 0;
  }
  return await runBatchMain(cmd);
}

/** Progress for `--log-format json`: one `progress` event per report, with the counters. */
function jsonProgress(log: Logger, quiet: boolean): ProgressOptions {
  return {
    quiet,
    sink: {
      report: (line, state, elapsedMs) =>
        log.info(line, {
          event: "progress",
          done: state.done,
          total: state.total,
          failed: state.failed,
          completion_tokens: state.completionTokens,
          elapsed_s: elapsedMs / 1000,
        }),
      log: (message) => log.info(message),
    },
  };
}

/** The line (and `engine` event) saying what the engine runs on. */
function engineEvent(engine: Engine): [string, LogFields] {
  const o = engine.runner.options;
  const kvMiB = Math.round(engine.runner.kvBytes / 2 ** 20);
  return [
    `${engine.modelName} on ${engine.runner.description}; ` +
    `max ${o.maxNumSeqs} seqs × ${o.maxNumBatchedTokens} tokens/step, ` +
    `KV cache ${o.numBlocks} blocks of ${o.blockSize} (${kvMiB} MiB), context ${engine.maxModelLen}`,
    {
      event: "engine",
      model: engine.modelName,
      device: engine.runner.description,
      max_num_seqs: o.maxNumSeqs,
      max_num_batched_tokens: o.maxNumBatchedTokens,
      kv_blocks: o.numBlocks,
      block_size: o.blockSize,
      max_model_len: engine.maxModelLen,
    },
  ];
}

/** The `summary` event's fields: the batch's counts in snake_case, as collectors expect. */
function summaryFields(s: BatchSummary): LogFields {
  return {
    event: "summary",
    batch_id: s.id,
    status: s.status,
    total: s.total,
    succeeded: s.succeeded,
    failed: s.failed,
    cancelled: s.cancelled,
    resumed: s.resumed,
    skipped: s.skipped,
    prompt_tokens: s.promptTokens,
    completion_tokens: s.completionTokens,
    elapsed_s: s.elapsedMs / 1000,
    output: s.outputPath,
    error: s.error,
  };
}

/** `run-batch`: checks, loads the model, runs the batch; returns the exit status. */
async function runBatchMain(cmd: RunBatchCommand): Promise<number> {
  // Mesa warns on every start when this is unset.
  if (!Deno.env.get("XDG_RUNTIME_DIR")) Deno.env.set("XDG_RUNTIME_DIR", Deno.makeTempDirSync());
  const log = createLogger(cmd.log);
  const quiet = cmd.batch.progress?.quiet === true;
  const progress = log.format === "json" ? jsonProgress(log, quiet) : cmd.batch.progress;
  const cancel = new AbortController();
  const onSignal = () => {
    log.warn("cancelling: finishing in-flight requests…");
    cancel.abort(new Error("cancelled by signal"));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  let engine: Engine | undefined;
  let metricsServer: MetricsServer | undefined;
  try {
    // Everything that needs no model first: a real model takes seconds to minutes to load.
    await preflightBatch(cmd.batch);
    if (cmd.batch.shard !== undefined) {
      const { index, count } = cmd.batch.shard;
      log.info(
        `shard ${index}/${count}: input lines whose 0-based index is ${index} mod ${count}`,
        {
          event: "shard",
          shard: index,
          num_shards: count,
        },
      );
    }
    const model = await resolveModel(cmd.modelDir, {
      quiet,
      weights: !cmd.batch.validateOnly,
      signal: cancel.signal,
      log,
    });
    const servedModelName = cmd.engine.servedModelName ?? model.name;
    const metrics = cmd.metricsPort === undefined ? undefined : new BatchMetrics();
    if (metrics !== undefined) {
      // Served from before the weights load; every series names the model, as vLLM's do.
      metrics.setModelName(servedModelName ?? basename(resolve(model.dir)));
      metricsServer = metrics.serve(cmd.metricsPort!);
      log.info(`metrics at ${metricsServer.url}`, { event: "metrics", url: metricsServer.url });
    }
    const showLoad = progressLine(log);
    const backend = cmd.batch.validateOnly
      ? await ApiBackend.forValidation(model.dir, servedModelName)
      : new ApiBackend(
        engine = await Engine.load(model.dir, {
          ...cmd.engine,
          servedModelName,
          onProgress: quiet ? undefined : (p) =>
            showLoad(
              `loading weights from ${model.dir}: ${p.done}/${p.total} tensors`,
              p.done === p.total,
            ),
          onStep: metrics && ((step) => metrics.observeStep(step)),
        }),
        { truncateMaxTokens: cmd.truncateMaxTokens },
      );
    if (engine) {
      metrics?.attachEngine(engine);
      if (!quiet) log.info(...engineEvent(engine));
    }
    const summary = await runBatch({
      ...cmd.batch,
      progress,
      backend,
      signal: cancel.signal,
      onAnswer: (answer) => {
        metrics?.countAnswer(answer.counts);
        log.debug(`${answer.customId ?? "(no custom_id)"}: ${answer.code ?? answer.counts}`, {
          event: "answer",
          custom_id: answer.customId,
          outcome: answer.counts,
          code: answer.code,
          prompt_tokens: answer.promptTokens,
          completion_tokens: answer.completionTokens,
        });
      },
    });
    const { status, failed } = summary;
    const level = status === "completed" || status === "validated" ? "info" : "warn";
    // Printed even with -q: it is the run's one-line result (--log-level warn hides a success).
    log.log(level, formatSummary(summary), summaryFields(summary));
    const profile = engine?.kernelProfile();
    if (profile) log.log("info", formatProfile(profile), { event: "profile" });
    if (status === "cancelled") return 130;
    if (status === "validated") return failed > 0 ? 1 : 0;
    return status === "completed" ? 0 : 1;
  } catch (e) {
    log.error((e as Error).message);
    return 1;
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
    await metricsServer?.close();
    await engine?.close();
  }
}

const MERGE_USAGE =
  "Usage: deno run -A cli.ts merge -o OUTPUT [--error-file PATH] [--input INPUT] [--overwrite] SHARD_OUTPUT...";

/**
 * `merge`: joins shard outputs into one; with `--input`, in the input's order
 * and with an answer required for every request.
 */
async function mergeMain(args: readonly string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args: [...args],
      options: {
        "output-file": { type: "string", short: "o" },
        "error-file": { type: "string" },
        "input-file": { type: "string", short: "i" },
        input: { type: "string" },
        overwrite: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: true,
    });
  } catch (e) {
    console.error(`error: ${(e as Error).message}\n\n${MERGE_USAGE}`);
    return 2;
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(
      [
        MERGE_USAGE,
        "",
        "Joins the outputs (and error files) of `run-batch --shard K/N` runs into one output.",
        "Shard outputs are paths or http(s) URLs, gzipped or not; -o may be a URL (PUT).",
        "Fails, writing nothing, when a custom_id appears twice.",
        "",
        "  -o, --output-file PATH     the merged output (required)",
        "      --error-file PATH      failed answers go here instead of the output",
        "  -i, --input PATH           the original batch input: write in its order, and fail when",
        "                             one of its requests has no answer",
        "      --overwrite            replace an existing output",
      ].join("\n"),
    );
    return 0;
  }
  const output = values["output-file"];
  const order = values.input ?? values["input-file"];
  if (output === undefined || positionals.length === 0) {
    console.error(
      `error: ${
        output === undefined ? "missing -o OUTPUT" : "no shard outputs to merge"
      }\n\n${MERGE_USAGE}`,
    );
    return 2;
  }
  try {
    const s = await mergeOutputs({
      inputs: positionals,
      output,
      errorFile: values["error-file"],
      order,
      overwrite: values.overwrite === true,
    });
    console.error(
      `batchwright: merged ${s.answers} answers (${s.succeeded} succeeded, ${s.failed} failed) ` +
        `from ${positionals.length} files${
          order === undefined ? "" : ` in the order of "${order}"`
        } → ${output}`,
    );
    return 0;
  } catch (e) {
    // MergeError (the shards do not add up) or an I/O error naming the file.
    console.error(`error: ${(e as Error).message}`);
    return 1;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
