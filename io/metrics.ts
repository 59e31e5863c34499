/**
 * Prometheus metrics of a running batch, served as text on 127.0.0.1 (prom-client
 * builds the exposition format). Names follow vLLM's with `vllm:` swapped for
 * `batchwright:` where vLLM has the metric; the rest are batchwright's own.
 * Every series carries `model_name`, as vLLM's do.
 *
 * | metric | vLLM name | what |
 * |---|---|---|
 * | `batchwright:num_requests_running` | yes | sequences being prefilled or decoded |
 * | `batchwright:num_requests_waiting` | yes | sequences waiting for admission |
 * | `batchwright:kv_cache_usage_perc` | yes | fraction of KV blocks in use (0..1) |
 * | `batchwright:prompt_tokens_total` | yes | prompt tokens prefilled (prefix-cache hits not recomputed) |
 * | `batchwright:generation_tokens_total` | yes | tokens generated |
 * | `batchwright:prefix_cache_queries_total` | yes | prompt tokens looked up in the prefix cache |
 * | `batchwright:prefix_cache_hits_total` | yes | of those, found there |
 * | `batchwright:num_preemptions_total` | yes | sequences preempted for recompute |
 * | `batchwright:request_success_total` | yes | requests answered 200 |
 * | `batchwright:iteration_tokens_total` | yes | histogram of tokens per engine step |
 * | `batchwright:request_failure_total{reason}` | no | error lines (`error`) and batch_cancelled/expired (`cancelled`) |
 * | `batchwright:step_duration_seconds` | no | histogram of engine step time |
 *
 * @module
 */
import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { StepReport } from "../engine/engine.ts";
export type { StepReport } from "../engine/engine.ts";
import type { Answer } from "./batch_stages.ts";

/** What the metrics read from the engine (the engine's getters). */
export interface EngineMetricsSource {
  /** Sequences being prefilled or decoded. */
  readonly numRunning: number;
  /** Sequences waiting for admission. */
  readonly numWaiting: number;
  /** Fraction of KV blocks in use (0..1). */
  readonly kvCacheUsage: number;
  /** Prompt tokens looked up in the prefix cache, and those found. */
  readonly prefixCacheTokens: { readonly queries: number; readonly hits: number };
  /** The engine's running totals. */
  readonly stats: {
    readonly promptTokensComputed: number;
    readonly generatedTokens: number;
    readonly preemptions: number;
  };
}

/** A running metrics endpoint. */
export interface MetricsServer {
  /** The port bound (useful with port 0). */
  readonly port: number;
  /** `http://127.0.0.1:PORT/metrics`. */
  readonly url: string;
  /** Stops serving. */
  close(): Promise<void>;
}

/**
 * The metrics of one batch run: counters fed by the run (answers) and the
 * engine (steps), gauges and engine counters read at scrape time.
 *
 * @example
 * ```ts
 * import { ApiBackend } from "../api/backend.ts";
 * import { Engine } from "../engine/engine.ts";
 * import { runBatch } from "./run_batch.ts";
 * const metrics = new BatchMetrics();
 * await using engine = await Engine.load("models/ernie-tiny", {
 *   onStep: (s) => metrics.observeStep(s),
 * });
 * metrics.attachEngine(engine);
 * const server = metrics.serve(0); // port 0: any free port; scrape http://127.0.0.1:PORT/metrics
 * await runBatch({
 *   input: "examples/input.jsonl",
 *   output: await Deno.makeTempFile({ suffix: ".jsonl" }),
 *   overwrite: true,
 *   backend: new ApiBackend(engine),
 *   onAnswer: (answer) => metrics.countAnswer(answer.counts),
 * });
 * await server.close();
 * ```
 */
export class BatchMetrics {
  readonly #registry: Registry = new Registry();
  #engine: EngineMetricsSource | null = null;
  readonly #success: Counter;
  readonly #failure: Counter<"reason">;
  readonly #stepSeconds: Histogram;
  readonly #stepTokens: Histogram;

  constructor() {
    const registers = [this.#registry];
    const read = (f: (e: EngineMetricsSource) => number) => () => {
      const e = this.#engine;
      return e === null ? 0 : f(e);
    };
    this.#gauge(
      "num_requests_running",
      "Requests running on the engine.",
      read((e) => e.numRunning),
    );
    this.#gauge(
      "num_requests_waiting",
      "Requests waiting to be scheduled.",
      read((e) => e.numWaiting),
    );
    this.#gauge(
      "kv_cache_usage_perc",
      "KV-cache usage. 1 means 100 percent usage.",
      read((e) => e.kvCacheUsage),
    );
    this.#counter(
      "prompt_tokens_total",
      "Number of prefill tokens processed (prefix-cache hits are not recomputed).",
      read((e) => e.stats.promptTokensComputed),
    );
    this.#counter(
      "generation_tokens_total",
      "Number of generation tokens processed.",
      read((e) => e.stats.generatedTokens),
    );
    this.#counter(
      "prefix_cache_queries_total",
      "Prefix cache queries, in terms of number of queried tokens.",
      read((e) => e.prefixCacheTokens.queries),
    );
    this.#counter(
      "prefix_cache_hits_total",
      "Prefix cache hits, in terms of number of cached tokens.",
      read((e) => e.prefixCacheTokens.hits),
    );
    this.#counter(
      "num_preemptions_total",
      "Cumulative number of preemptions from the engine.",
      read((e) => e.stats.preemptions),
    );
    this.#success = new Counter({
      name: "batchwright:request_success_total",
      help: "Count of successfully processed requests.",
      registers,
    });
    this.#failure = new Counter({
      name: "batchwright:request_failure_total",
      help: "Requests answered with an error line (reason=error) or batch_cancelled/expired " +
        "(reason=cancelled).",
      labelNames: ["reason"] as const,
      registers,
    });
    this.#failure.inc({ reason: "error" }, 0);
    this.#failure.inc({ reason: "cancelled" }, 0);
    this.#stepTokens = new Histogram({
      name: "batchwright:iteration_tokens_total",
      help: "Histogram of number of tokens per engine_step.",
      buckets: [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192],
      registers,
    });
    this.#stepSeconds = new Histogram({
      name: "batchwright:step_duration_seconds",
      help: "Histogram of engine step time (inputs, compute, read-back, sampling) in seconds.",
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
  }

  #gauge(name: string, help: string, value: () => number): void {
    new Gauge({
      name: `batchwright:${name}`,
      help,
      registers: [this.#registry],
      collect() {
        this.set(value());
      },
    });
  }

  /** A counter whose value lives elsewhere (an engine total), read at scrape time. */
  #counter(name: string, help: string, value: () => number): void {
    new Counter({
      name: `batchwright:${name}`,
      help,
      registers: [this.#registry],
      collect() {
        this.reset();
        this.inc(value());
      },
    });
  }

  /** Labels every series with the served model's name, as vLLM does (`model_name="..."`). */
  setModelName(name: string): void {
    this.#registry.setDefaultLabels({ model_name: name });
  }

  /** Reads gauges and engine totals from `engine` from now on. */
  attachEngine(engine: EngineMetricsSource): void {
    this.#engine = engine;
  }

  /** Records one engine step (pass as the engine's `onStep`). */
  observeStep(step: StepReport): void {
    this.#stepSeconds.observe(step.seconds);
    this.#stepTokens.observe(step.numTokens);
  }

  /** Counts one answer (pass as runBatch's `onAnswer`). */
  countAnswer(counts: Answer["counts"]): void {
    if (counts === "succeeded") this.#success.inc();
    else this.#failure.inc({ reason: counts === "failed" ? "error" : "cancelled" });
  }

  /** The exposition text of every metric now. */
  text(): Promise<string> {
    return this.#registry.metrics();
  }

  /**
   * Serves `GET /metrics` on 127.0.0.1:`port` (0 picks a free port). Throws
   * a clear error when the port is taken.
   */
  serve(port: number): MetricsServer {
    let server: Deno.HttpServer<Deno.NetAddr>;
    try {
      server = Deno.serve({ hostname: "127.0.0.1", port, onListen() {} }, async (req) => {
        const path = new URL(req.url).pathname;
        if (req.method !== "GET" || path !== "/metrics") {
          return new Response("not found: scrape GET /metrics\n", { status: 404 });
        }
        return new Response(await this.text(), {
          headers: { "content-type": this.#registry.contentType },
        });
      });
    } catch (e) {
      if (e instanceof Deno.errors.AddrInUse) {
        throw new Error(`--metrics-port ${port}: 127.0.0.1:${port} is in use; pick another port`);
      }
      throw e;
    }
    const bound = server.addr.port;
    return {
      port: bound,
      url: `http://127.0.0.1:${bound}/metrics`,
      close: () => server.shutdown(),
    };
  }
}
