/**
 * The public engine: requests go in, results come out. A single step loop
 * runs while there is work: the scheduler packs a token budget, the model
 * runner computes it on the GPU in one submission, and finished sequences
 * resolve their promises. With async scheduling (the default) the next step
 * is scheduled and submitted while one runs, its decode inputs fed on the
 * device from the running step's draws (placeholders in the sequences until
 * the ids are back), so the GPU does not wait for the host between steps.
 *
 * @module
 */
import { setImmediate } from "node:timers";
import { basename, resolve } from "node:path";
import { Gpu, NoGpuError } from "./gpu/device.ts";
import { chooseKernelClass, chooseKvCacheDtype } from "./gpu/registry.ts";
import {
  type GenerationConfig,
  loadGenerationConfig,
  loadModelConfig,
  type ModelConfig,
} from "./loader/config.ts";
import { Checkpoint } from "./loader/checkpoint.ts";
import { ModelTokenizer } from "./loader/tokenizer.ts";
import { ModelRunner } from "./model_runner.ts";
import type { KernelProfile } from "./gpu/profile.ts";
import { wasmLimits, WasmRunner } from "./backends/wasm/wasm_runner.ts";
import type { BackendLimits, Runner, RunnerOptions, StepResult, StepSeq } from "./runner.ts";
import type { ModelShape, WeightSource } from "./model.ts";
import { type ScheduledBatch, Scheduler } from "./scheduler.ts";
import { Sequence } from "./sequence.ts";
import { sample } from "./sampler.ts";
import { OutputText } from "./detokenizer.ts";
import { type RowSampling, rowSampling } from "./gpu/sampling.ts";
import { uniform } from "./rng.ts";
import { GrammarEngine, type GrammarStats, type TokenMatcher } from "./grammar.ts";
import { SchemaError } from "./json_schema.ts";
import {
  DEFAULT_SAMPLING,
  type EmbedRequest,
  type EmbedResult,
  EngineFailure,
  type FinishReason,
  type GenerateRequest,
  type GenerateResult,
  RequestError,
  type ResponseFormat,
  type StepLogprobs,
} from "./types.ts";

/**
 * Engine options; every field has a default.
 *
 * @example
 * ```ts
 * const options: EngineOptions = { maxNumSeqs: 8, maxNumBatchedTokens: 256, pooling: "mean" };
 * await using engine = await Engine.load("models/ernie-tiny", options);
 * console.log(engine.options.maxNumSeqs, engine.options.pooling); // 8 "mean"
 * ```
 */
export interface EngineOptions {
  /** Name requests' `model` must match (default: the model directory's name). */
  readonly servedModelName?: string;
  /** Most sequences per step (default 64). */
  readonly maxNumSeqs?: number;
  /** Token budget per step (default 512). */
  readonly maxNumBatchedTokens?: number;
  /** Tokens per KV block (default 16). */
  readonly blockSize?: number;
  /** Bytes for the KV cache pool (default 2 GiB, or less when that would exceed what can be used). */
  readonly kvCacheMemory?: number;
  /** Context length (default: the model's max_position_embeddings, capped by the KV pool). */
  readonly maxModelLen?: number;
  /** Share full KV blocks between prompts with the same prefix (default true). */
  readonly enablePrefixCaching?: boolean;
  /** Embedding pooling over the final hidden states (default "last"). */
  readonly pooling?: "last" | "mean";
  /** L2-normalise embeddings (default true). */
  readonly normalizeEmbeddings?: boolean;
  /**
   * Where the model runs: `"webgpu"` (WGSL kernels on the WebGPU adapter), `"wasm"`
   * (WebAssembly SIMD on the CPU, in worker threads) or `"auto"` (the default: wasm when
   * the adapter is a fallback or software one such as llvmpipe, or when there is none;
   * WebGPU otherwise). A `gpu` given here is always used.
   */
  readonly backend?: "auto" | "webgpu" | "wasm";
  /** Worker threads of the wasm backend (default `navigator.hardwareConcurrency`). */
  readonly threads?: number;
  /** An opened device (default: the runtime's default adapter). */
  readonly gpu?: Gpu;
  /** Called as the weights load (the engine prints nothing itself). */
  readonly onProgress?: (progress: LoadProgress) => void;
  /** Called after every engine step (for metrics). */
  readonly onStep?: (step: StepReport) => void;
  /**
   * WebGPU kernel class: `"cpu"` (shaped for software rasterisers like llvmpipe), `"gpu"`
   * (shaped for discrete GPUs) or `"auto"` (the default: `cpu` on a fallback or software
   * adapter, `gpu` otherwise).
   */
  readonly kernels?: "auto" | "cpu" | "gpu";
  /**
   * How the KV cache stores keys and values: `"f32"`, `"f16"` (half the bytes, so twice the
   * tokens in the same --kv-cache-memory; WebGPU only) or `"auto"` (the default: f16 for the
   * `gpu` kernel class on a device with `shader-f16`, f32 otherwise).
   */
  readonly kvCacheDtype?: "auto" | "f16" | "f32";
  /**
   * Time every kernel of every step: on the GPU by timestamp queries (one compute pass per
   * kernel, so steps run slower), on the wasm backend by the host clock at the barrier that
   * ends each op. Read it with {@linkcode Engine.kernelProfile}.
   */
  readonly profile?: boolean;
  /**
   * Schedule and launch step n+1 while step n runs, its decode inputs fed on the device from
   * step n's draws, as vLLM's `--async-scheduling` does (default true). Steps whose rows need
   * the drawn ids on the host first (logprobs, penalties, grammars, host sampling) still run
   * one at a time; answers are the same either way.
   */
  readonly asyncScheduling?: boolean;
}

/** How far {@linkcode Engine.load} got: `done` of `total` weight tensors read. */
export interface LoadProgress {
  readonly stage: "weights";
  readonly done: number;
  readonly total: number;
}

/** One engine step, as reported to `onStep`. */
export interface StepReport {
  /** Wall time of the step (inputs, compute, read-back, sampling). */
  readonly seconds: number;
  /** Tokens computed in the step (prefill chunks and decodes). */
  readonly numTokens: number;
  /** Sequences in the step. */
  readonly numSeqs: number;
}

/** A backend ready to create a runner once the engine has sized the KV pool. */
interface BackendChoice {
  readonly limits: BackendLimits;
  create(shape: ModelShape, source: WeightSource, options: RunnerOptions): Promise<Runner>;
  /** Releases what opening took (a device the engine opened) when loading fails. */
  abandon(): void;
}

/** Opens the backend the options ask for and states its limits. */
async function openBackend(options: EngineOptions, shape: ModelShape): Promise<BackendChoice> {
  const wasm = (): BackendChoice => {
    if (options.kvCacheDtype === "f16") {
      throw new Error(
        "--kv-cache-dtype f16 needs the webgpu backend (the wasm backend keeps f32): " +
          "add --backend webgpu, or drop --kv-cache-dtype",
      );
    }
    return {
      limits: wasmLimits(shape),
      create: (shape, source, o) => WasmRunner.create(shape, source, o, options),
      abandon: () => {},
    };
  };
  if (options.backend === "wasm") return wasm();
  const vocabSize = shape.vocabSize;
  // A device the engine opens is the engine's: its runner destroys it last on close.
  const owned = options.gpu === undefined;
  // The wasm backend computes in Web Workers (Deno, browsers; not Node.js).
  const auto = options.backend !== "webgpu" && owned && typeof Worker !== "undefined";
  if (auto) {
    // Decide from the adapter alone: a device opened only to be closed again is work for the
    // driver (and, on Mesa, one more teardown at exit) for nothing.
    const probed = await Gpu.probe();
    if (probed === null || chooseKernelClass("auto", probed) === "cpu") return wasm();
  }
  let gpu: Gpu;
  try {
    gpu = options.gpu ?? await Gpu.open();
  } catch (e) {
    if (auto && e instanceof NoGpuError) return wasm();
    throw e;
  }
  // A software rasteriser leaves most of the CPU unused: WebAssembly SIMD threads beat it.
  const adapter = {
    isFallbackAdapter: gpu.adapter.info.isFallbackAdapter,
    description: gpu.description,
  };
  if (auto && chooseKernelClass("auto", adapter) === "cpu") {
    gpu.destroy();
    return wasm();
  }
  const kvCacheDtype = chooseKvCacheDtype(
    options.kvCacheDtype ?? "auto",
    chooseKernelClass(options.kernels ?? "auto", adapter),
    gpu.hasF16,
  );
  return {
    limits: {
      maxKvBytesPerLayer: gpu.maxBinding - 16,
      defaultKvBytes: 2 * GIB,
      maxLogitRows: Math.floor(gpu.maxBinding / (vocabSize * 4)),
      kvBytesPerValue: kvCacheDtype === "f16" ? 2 : 4,
    },
    create: (shape, source, o) =>
      ModelRunner.create(gpu, shape, source, o, {
        kernels: options.kernels,
        kvCacheDtype,
        profile: options.profile,
        ownsDevice: owned,
      }),
    abandon: () => {
      if (owned) gpu.destroy();
    },
  };
}

/**
 * Counters for progress reports and benchmarks.
 *
 * @example
 * ```ts
 * import { DEFAULT_SAMPLING } from "./types.ts";
 *
 * await using engine = await Engine.load("models/ernie-tiny");
 * const sampling = { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 4 };
 * await Promise.all(["a", "b"].map((id) => engine.generate({ id, promptIds: [5, 6], sampling })));
 * const stats: EngineStats = engine.stats;
 * console.log(stats.generatedTokens, (stats.seqsInSteps / stats.steps).toFixed(1));
 * ```
 */
export interface EngineStats {
  steps: number;
  promptTokensComputed: number;
  generatedTokens: number;
  /** Sum over steps of sequences in the step (mean occupancy = this / steps). */
  seqsInSteps: number;
  preemptions: number;
  /** Steps launched while the step before them was still running (async scheduling). */
  overlappedSteps: number;
}

interface SeqState {
  readonly kind: "generate" | "embed";
  readonly resolve: (r: GenerateResult | EmbedResult) => void;
  readonly reject: (e: unknown) => void;
  readonly seed: number;
  readonly text?: OutputText;
  /** Ids appended whose text is not yet pushed: detokenized while the next step runs. */
  readonly pendingText: number[];
  readonly logprobs: StepLogprobs[];
  readonly hiddenSum?: Float64Array;
  hiddenCount: number;
  /** A response_format's matcher and this step's mask of allowed ids (engine/grammar.ts). */
  readonly grammar?: { readonly matcher: TokenMatcher; readonly mask: Uint32Array };
}

/** A step handed to the runner whose results are not applied yet. */
interface Flight {
  readonly batch: ScheduledBatch<SeqState>;
  readonly seqs: readonly StepSeq[];
  readonly pending: Promise<{ result: StepResult } | { error: unknown }>;
  /** Each "sample" sequence's row in the step (a fed step's `fromSampleRow`). */
  readonly sampleRowOf: ReadonlyMap<Sequence<SeqState>, number>;
  /** The next step may be scheduled and launched before this one lands. */
  readonly chainable: boolean;
  /** When it was launched (performance.now()). */
  readonly started: number;
  /** Its tokens are marked computed in the scheduler. */
  committed: boolean;
  /** What went wrong while launching it (a grammar mask): its requests fail when it lands. */
  readonly failure: unknown;
}

const GIB = 1024 ** 3;

/**
 * The batch inference engine over one ERNIE-4.5 model: token ids in, token ids
 * (and text) or embeddings out. Requests submitted together share steps.
 *
 * @example
 * ```ts
 * import { DEFAULT_SAMPLING } from "./types.ts";
 *
 * await using engine = await Engine.load("models/ernie-tiny");
 * const promptIds = engine.tokenizer.encode("The capital of France is");
 * const sampling = { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 4 };
 * const [answer, vector] = await Promise.all([
 *   engine.generate({ id: "gen", promptIds, sampling }),
 *   engine.embed({ id: "emb", promptIds }),
 * ]);
 * console.log(answer.text, answer.finishReason, vector.embedding.length === engine.hiddenSize);
 * ```
 */
export class Engine {
  readonly #scheduler: Scheduler<SeqState>;
  readonly #eos: ReadonlySet<number>;
  /** The same ids as a list, for the sampler's min_tokens mask. */
  readonly #eosList: readonly number[];
  #loop: Promise<void> | null = null;
  /** Sequences with ids appended whose text is not yet pushed. */
  readonly #pendingText = new Set<Sequence<SeqState>>();
  /** Compiles response formats; created by the first constrained request. */
  #grammars: Promise<GrammarEngine> | null = null;
  /** Token masks computed for constrained requests, and the time they took. */
  readonly grammarStats: GrammarStats = { compiled: 0, masks: 0, maskMs: 0 };
  #closed = false;
  /** Set when the backend failed: every request, waiting or new, fails with it. */
  #failure: EngineFailure | null = null;
  readonly stats: EngineStats = {
    steps: 0,
    promptTokensComputed: 0,
    generatedTokens: 0,
    seqsInSteps: 0,
    preemptions: 0,
    overlappedSteps: 0,
  };
  /** When the last step landed (performance.now()), for `onStep`'s seconds. */
  #landedAt = 0;

  private constructor(
    readonly runner: Runner,
    readonly config: ModelConfig,
    readonly tokenizer: ModelTokenizer,
    readonly generationDefaults: GenerationConfig,
    readonly modelName: string,
    readonly maxModelLen: number,
    readonly options: Required<
      Omit<
        EngineOptions,
        | "gpu"
        | "backend"
        | "threads"
        | "kernels"
        | "kvCacheDtype"
        | "profile"
        | "servedModelName"
        | "kvCacheMemory"
        | "maxModelLen"
        | "onProgress"
        | "onStep"
      >
    >,
    readonly onStep?: (step: StepReport) => void,
  ) {
    const o = runner.options;
    this.#scheduler = new Scheduler({
      maxNumSeqs: o.maxNumSeqs,
      maxNumBatchedTokens: o.maxNumBatchedTokens,
      blockSize: o.blockSize,
      numBlocks: o.numBlocks,
      enablePrefixCaching: options.enablePrefixCaching,
      maxModelLen,
    });
    this.#eos = new Set([
      ...config.eosTokenIds,
      ...(generationDefaults.eosTokenIds ?? []),
      ...tokenizer.eosTokenIds,
    ]);
    this.#eosList = [...this.#eos];
  }

  /** Hidden size of the model (the embedding width). */
  get hiddenSize(): number {
    return this.config.hiddenSize;
  }

  /** Loads a model directory onto the GPU. */
  static async load(dir: string, options: EngineOptions = {}): Promise<Engine> {
    const config = await loadModelConfig(dir);
    const generation = await loadGenerationConfig(dir);
    const tokenizer = await ModelTokenizer.load(dir);
    const backend = await openBackend(options, config);
    try {
      return await Engine.#loadOn(backend, dir, options, config, generation, tokenizer);
    } catch (e) {
      backend.abandon();
      throw e;
    }
  }

  /** The rest of {@linkcode Engine.load}, once the backend is open. */
  static async #loadOn(
    backend: BackendChoice,
    dir: string,
    options: EngineOptions,
    config: ModelConfig,
    generation: GenerationConfig,
    tokenizer: ModelTokenizer,
  ): Promise<Engine> {
    const limits = backend.limits;
    const blockSize = options.blockSize ?? 16;
    const maxNumBatchedTokens = options.maxNumBatchedTokens ?? 512;
    const maxRequested = options.maxModelLen ?? config.maxPositionEmbeddings;
    if (options.maxModelLen !== undefined && options.maxModelLen > config.maxPositionEmbeddings) {
      throw new Error(
        `--max-model-len ${options.maxModelLen} exceeds the model's max_position_embeddings (${config.maxPositionEmbeddings})`,
      );
    }
    // One layer, K or V.
    const bytesPerToken = config.numKvHeads * config.headDim * (limits.kvBytesPerValue ?? 4);
    const maxNumSeqs = Math.min(options.maxNumSeqs ?? 64, limits.maxLogitRows);
    const budget = options.kvCacheMemory ?? limits.defaultKvBytes;
    const tokensByBudget = Math.floor(budget / (2 * config.numLayers * bytesPerToken));
    const tokensByBinding = Math.floor(limits.maxKvBytesPerLayer / bytesPerToken);
    const tokensWanted = maxNumSeqs * maxRequested;
    const numBlocks = Math.floor(
      Math.min(tokensByBudget, tokensByBinding, tokensWanted + blockSize) / blockSize,
    );
    if (numBlocks < 2) {
      throw new Error(
        `The KV cache budget (${budget} bytes) holds fewer than 2 blocks: raise --kv-cache-memory`,
      );
    }
    const maxModelLen = Math.min(maxRequested, numBlocks * blockSize);
    const checkpoint = await Checkpoint.open(dir, config);
    const names = new Set(checkpoint.names());
    let loaded = 0;
    const loadedOne = <T>(tensor: T): T => {
      options.onProgress?.({ stage: "weights", done: ++loaded, total: names.size });
      return tensor;
    };
    let runner: Runner;
    try {
      runner = await backend.create(config, {
        get: (
          name,
        ) => (names.has(name) ? checkpoint.get(name).then(loadedOne) : Promise.resolve(null)),
      }, {
        maxNumBatchedTokens,
        maxNumSeqs,
        numBlocks,
        blockSize,
        maxBlocksPerSeq: Math.ceil(maxModelLen / blockSize),
        validVocab: Math.min(tokenizer.vocabSize, config.vocabSize),
      });
    } finally {
      checkpoint.close();
    }
    const name = options.servedModelName ?? basename(resolve(dir));
    return new Engine(runner, config, tokenizer, generation, name, maxModelLen, {
      maxNumSeqs,
      maxNumBatchedTokens,
      blockSize,
      // Mean pooling needs every prompt position's hidden state, which cached blocks skip.
      enablePrefixCaching: (options.enablePrefixCaching ?? true) && options.pooling !== "mean",
      pooling: options.pooling ?? "last",
      normalizeEmbeddings: options.normalizeEmbeddings ?? true,
      asyncScheduling: options.asyncScheduling ?? true,
    }, options.onStep);
  }

  /**
   * Per-kernel (wasm: per-op) time, GFLOP/s and GB/s over the steps so far when loaded with
   * `profile: true` (else undefined); print it with `formatProfile` (engine/gpu/profile.ts).
   *
   * @example
   * ```ts
   * import { formatProfile } from "./gpu/profile.ts";
   * import { DEFAULT_SAMPLING } from "./types.ts";
   * await using engine = await Engine.load("models/ernie-tiny", { backend: "webgpu", profile: true });
   * await engine.generate({ id: "a", promptIds: [5, 6, 7], sampling: DEFAULT_SAMPLING });
   * const profile = engine.kernelProfile();
   * if (profile) console.error(formatProfile(profile));
   * ```
   */
  kernelProfile(): KernelProfile | undefined {
    return this.runner.kernelProfile?.();
  }

  /** Forgets the kernel profile so far, for example after warm-up steps. */
  resetKernelProfile(): void {
    this.runner.resetProfile?.();
  }

  /** Ids whose logits are real tokens (the rest of the embedding is padding). */
  get validVocab(): number {
    return this.runner.options.validVocab;
  }

  /** Prefix-cache hit rate over all admitted prompt tokens. */
  get prefixCacheHitRate(): number {
    return this.#scheduler.blockManager.hitRate;
  }

  /** Sequences in the running queue (being prefilled or decoded). */
  get numRunning(): number {
    return this.#scheduler.numRunning;
  }

  /** Sequences waiting for admission (new or preempted). */
  get numWaiting(): number {
    return this.#scheduler.numWaiting;
  }

  /** Fraction of KV blocks held by sequences (0..1; evictable cached blocks count as free). */
  get kvCacheUsage(): number {
    const blocks = this.#scheduler.blockManager;
    return 1 - blocks.numFreeBlocks / blocks.numBlocks;
  }

  /** Prompt tokens looked up in the prefix cache, and those found there. */
  get prefixCacheTokens(): { readonly queries: number; readonly hits: number } {
    const blocks = this.#scheduler.blockManager;
    return { queries: blocks.queriedTokens, hits: blocks.hitTokens };
  }

  /** Generates a completion for one prompt. */
  generate(req: GenerateRequest, signal?: AbortSignal): Promise<GenerateResult> {
    const format = req.sampling.responseFormat;
    if (format !== undefined) return this.#generateConstrained(req, format, signal);
    return this.#submit(req, "generate", signal) as Promise<GenerateResult>;
  }

  /** A request whose answer must follow `format`: a matcher first, then the queue. */
  async #generateConstrained(
    req: GenerateRequest,
    format: ResponseFormat,
    signal?: AbortSignal,
  ): Promise<GenerateResult> {
    const p = req.sampling;
    if (p.ignoreEos || p.minTokens > 0 || p.stop.length > 0) {
      throw new RequestError(
        "response_format cannot be combined with stop, min_tokens or ignore_eos",
        400,
        "response_format",
        "invalid_value",
      );
    }
    this.#grammars ??= GrammarEngine.create(
      this.tokenizer,
      this.config.vocabSize,
      this.#eosList,
      this.grammarStats,
    );
    let matcher: TokenMatcher;
    try {
      matcher = await (await this.#grammars).matcher(format, p.stopTokenIds);
    } catch (e) {
      if (!(e instanceof SchemaError)) throw e;
      throw new RequestError(`response_format: ${e.message}`, 400, "response_format");
    }
    const grammar = { matcher, mask: new Uint32Array(matcher.maskWords) };
    try {
      return await this.#submit(req, "generate", signal, grammar) as GenerateResult;
    } finally {
      matcher.dispose();
    }
  }

  /** Computes a pooled embedding of one prompt. */
  embed(req: EmbedRequest, signal?: AbortSignal): Promise<EmbedResult> {
    const sampling = { ...DEFAULT_SAMPLING, temperature: 0, maxTokens: 1 };
    return this.#submit({ ...req, sampling }, "embed", signal) as Promise<EmbedResult>;
  }

  #submit(
    req: GenerateRequest,
    kind: SeqState["kind"],
    signal?: AbortSignal,
    grammar?: SeqState["grammar"],
  ): Promise<unknown> {
    if (this.#closed) return Promise.reject(new Error("The engine is closed"));
    if (this.#failure) return Promise.reject(this.#failure);
    if (req.promptIds.length === 0) {
      return Promise.reject(new RequestError("The prompt is empty", 400, "messages"));
    }
    if (req.promptIds.length > this.maxModelLen) {
      return Promise.reject(
        new RequestError(
          `The prompt has ${req.promptIds.length} tokens, more than the context length ${this.maxModelLen}`,
          400,
          null,
          "context_length_exceeded",
        ),
      );
    }
    for (const id of req.promptIds) {
      if (!Number.isInteger(id) || id < 0 || id >= this.validVocab) {
        return Promise.reject(
          new RequestError(`Token id ${id} is outside the vocabulary (0..${this.validVocab - 1})`),
        );
      }
    }
    return new Promise((resolve, reject) => {
      const seed = req.sampling.seed ?? crypto.getRandomValues(new Uint32Array(1))[0]!;
      const state: SeqState = {
        kind,
        resolve: resolve as SeqState["resolve"],
        reject,
        seed,
        text: kind === "generate"
          ? new OutputText(this.tokenizer, {
            stop: req.sampling.stop,
            minTokens: req.sampling.minTokens,
            promptIds: req.promptIds,
          })
          : undefined,
        pendingText: [],
        logprobs: [],
        hiddenSum: kind === "embed" ? new Float64Array(this.config.hiddenSize) : undefined,
        hiddenCount: 0,
        grammar,
      };
      const seq = new Sequence<SeqState>(req, state);
      if (signal?.aborted) return reject(signal.reason);
      signal?.addEventListener("abort", () => {
        if (this.#scheduler.abort(seq.id)) reject(signal.reason);
      }, { once: true });
      this.#scheduler.add(seq);
      this.#loop ??= this.#run().finally(() => (this.#loop = null));
    });
  }

  /**
   * Steps until no work is left. With async scheduling, step n+1 is scheduled and
   * launched while step n runs, its decode inputs fed on the device from step n's draws
   * (placeholders in the sequences until step n lands); otherwise one step at a time.
   */
  async #run(): Promise<void> {
    // Let the other requests submitted in this tick join the first step.
    await new Promise((r) => setTimeout(r, 0));
    let flight: Flight | null = null;
    while (true) {
      let next: Flight | null = null;
      if (this.#failure === null && (flight === null || flight.chainable)) {
        if (flight !== null) this.#commit(flight);
        const batch = this.#scheduler.hasWork() ? this.#scheduler.schedule() : null;
        if (batch === null && flight === null) break;
        for (const { seq, reason } of batch?.rejected ?? []) {
          seq.state!.reject(new RequestError(reason, 400, null, "context_length_exceeded"));
        }
        if (batch !== null && batch.items.length > 0) {
          next = await this.#launch(batch, flight).catch((e) => (this.#failItems(batch, e), null));
        }
      } else if (flight === null) break;
      if (flight !== null) {
        if (next !== null) this.stats.overlappedSteps++;
        await this.#land(flight);
        // Let new requests in between steps: one turn of the event loop (setImmediate; a
        // setTimeout(0) here cost 2.2 ms a step, the timer clamp, more than a GPU step).
        await new Promise((r) => setImmediate(r));
      }
      flight = next;
    }
    this.#pushPendingText();
  }

  /**
   * Hands a scheduled batch to the runner. Sequences whose next id the device draws get a
   * placeholder for it, so that the next step can be scheduled at once (`chainable`).
   */
  async #launch(batch: ScheduledBatch<SeqState>, before: Flight | null): Promise<Flight> {
    const items = batch.items;
    // A runner that samples on the device reads back ids only (and the logits of rows
    // that want logprobs); otherwise any non-greedy row reads every row's logits.
    const device = this.runner.deviceSampling === true;
    const wantLogits = !device &&
      items.some((it) =>
        it.sample && it.seq.state!.kind === "generate" && !this.#isPlainGreedy(it.seq)
      );
    const seqs: StepSeq[] = items.map(({ seq, start, count, sample }) => {
      // The last step's draw, still on the device: fed from its sample row there.
      const fed = seq.hasPlaceholder && start + count === seq.numTokens;
      const fromSampleRow = fed ? before?.sampleRowOf.get(seq) : undefined;
      if (fed && fromSampleRow === undefined) {
        throw new Error(`Sequence "${seq.id}" waits for an id no step in flight draws`);
      }
      return {
        tokens: seq.tokenIds.slice(start, start + count),
        start,
        blockTable: seq.blockTable,
        output: seq.state!.kind === "embed"
          ? (this.options.pooling === "mean" ? "hidden-all" : sample ? "hidden-last" : "none")
          : sample
          ? "sample"
          : "none",
        sampling: device && sample && seq.state!.kind === "generate"
          ? this.#deviceSampling(seq)
          : undefined,
        fromSampleRow,
      };
    });
    // Constrained rows' masks are computed on the CPU while the step runs; a runner that
    // samples on the device takes them once `masksReady` resolves, the host sampler after.
    let masksDone = () => {};
    const masksReady = new Promise<void>((resolve) => (masksDone = resolve));
    const started = performance.now();
    const pending = this.runner.step(seqs, wantLogits, masksReady).then(
      (result) => ({ result }),
      (error: unknown) => ({ error }),
    );
    // The next step may start before this one's ids are back when the device keeps them for
    // it and every sequence that samples here either goes on with a fed id or surely ends.
    const sampleRowOf = new Map<Sequence<SeqState>, number>();
    const continuing: Sequence<SeqState>[] = [];
    let chainable = this.options.asyncScheduling && this.runner.feedsNextStep?.() === true;
    seqs.forEach((s, i) => {
      if (s.output !== "sample") return;
      const seq = items[i]!.seq;
      sampleRowOf.set(seq, sampleRowOf.size);
      if (this.#endsAfterThisToken(seq)) return;
      if (this.#drawnWithoutHistory(seq, s)) continuing.push(seq);
      else chainable = false;
    });
    if (chainable) { for (const seq of continuing) seq.appendPlaceholder(); }
    // The step is submitted: the previous step's tokens are detokenized (and matched
    // against stop strings) while it runs. A sequence that a stop string ends here is
    // also in this step; its row is dropped when the step returns.
    this.#pushPendingText();
    let failure: unknown = undefined;
    try {
      for (const { seq, sample } of items) {
        const g = seq.state!.grammar;
        if (sample && g !== undefined) await g.matcher.fillMask(g.mask);
      }
    } catch (e) {
      failure = e;
    } finally {
      masksDone();
    }
    return { batch, seqs, pending, sampleRowOf, chainable, started, committed: false, failure };
  }

  /** Anything else than the backend failing fails the step's requests only. */
  #failItems(batch: ScheduledBatch<SeqState>, error: unknown): void {
    for (const { seq } of batch.items) {
      seq.dropPlaceholders();
      this.#scheduler.abort(seq.id);
      seq.state!.reject(error);
    }
  }

  /** Marks a launched step's tokens computed in the scheduler (once). */
  #commit(flight: Flight): void {
    if (flight.committed) return;
    flight.committed = true;
    this.#scheduler.commit(flight.batch);
  }

  /**
   * Whether the id this step draws for `seq` ends it by length (so no step follows), or
   * the context's end.
   */
  #endsAfterThisToken(seq: Sequence<SeqState>): boolean {
    const p = seq.request.sampling;
    return seq.numOutputTokens + 1 >= p.maxTokens || seq.numTokens + 1 >= this.maxModelLen;
  }

  /**
   * Whether the id drawn for this row stays on the device and the row after it needs no
   * knowledge of it on the host: greedy or a device draw without penalties (which count
   * the ids drawn), grammars (which advance on them) or logprobs (sampled on the host).
   */
  #drawnWithoutHistory(seq: Sequence<SeqState>, s: StepSeq): boolean {
    const p = seq.request.sampling;
    if (seq.state!.kind !== "generate" || seq.state!.grammar !== undefined) return false;
    if (s.sampling === "logits" || p.logprobs) return false;
    if (s.sampling === undefined && !this.#isPlainGreedy(seq)) return false;
    return p.presencePenalty === 0 && p.frequencyPenalty === 0 && p.repetitionPenalty === 1;
  }

  /** Waits for a launched step and applies its results; a failure ends its requests. */
  async #land(flight: Flight): Promise<void> {
    const outcome = await flight.pending;
    if (this.#failure !== null) return; // every request already failed with it
    const items = flight.batch.items;
    try {
      if (flight.failure !== undefined) throw flight.failure;
      if ("error" in outcome) throw this.#backendFailure(outcome.error);
      this.#commit(flight);
      this.#apply(flight, outcome.result);
      const now = performance.now();
      this.onStep?.({
        seconds: (now - Math.max(flight.started, this.#landedAt)) / 1000,
        numTokens: flight.batch.numTokens,
        numSeqs: items.length,
      });
      this.#landedAt = now;
    } catch (e) {
      if (e instanceof EngineFailure) return this.#failAll(e);
      this.#failItems(flight.batch, e);
    } finally {
      this.stats.preemptions = this.#scheduler.preemptions;
    }
  }

  /** A landed step's ids, logits and hidden rows, into its sequences. */
  #apply(flight: Flight, result: StepResult): void {
    const { batch: { items }, seqs } = flight;
    this.stats.steps++;
    this.stats.seqsInSteps += items.length;
    const V = this.config.vocabSize;
    const H = this.config.hiddenSize;
    let sampleRow = 0;
    let hiddenRow = 0;
    for (let i = 0; i < items.length; i++) {
      const { seq, start, count, sample: reachedEnd } = items[i]!;
      const st = seq.state!;
      const out = seqs[i]!.output;
      if (start < seq.numPromptTokens) {
        this.stats.promptTokensComputed += Math.min(count, seq.numPromptTokens - start);
      }
      if (out === "sample") {
        const row = sampleRow++;
        // Ended while the step ran (a stop string found in its text, or aborted).
        if (seq.status === "finished") continue;
        // The text of the ids before this one first (still pending when no step was launched
        // while this one ran): a stop string there ends the sequence before this id.
        if (st.pendingText.length > 0 && this.#pushText(seq)) continue;
        this.stats.generatedTokens++;
        // The id takes the first placeholder's place; those of steps after this one stay.
        const later = Math.max(0, seq.dropPlaceholders() - 1);
        const logitRow = result.logitIndex ? result.logitIndex[row]! : result.logits ? row : -1;
        const id = logitRow >= 0
          ? this.#sample(seq, result.logits!.subarray(logitRow * V, (logitRow + 1) * V))
          : result.ids![row]!;
        if (!(id >= 0 && id < this.validVocab)) {
          // NO_TOKEN from the sampler, 0xFFFFFFFF from the GPU argmax.
          this.#fail(
            seq,
            new RequestError(
              `engine step ${this.stats.steps}, output token ${seq.numOutputTokens + 1}: ` +
                "the model's logits for this request are all NaN or -Infinity, so no token " +
                `can be sampled (got id ${id})`,
              500,
              null,
              "internal_error",
              "server_error",
            ),
          );
          continue;
        }
        st.grammar?.matcher.accept(id);
        this.#accept(seq, id, later);
      } else {
        const rows = out === "hidden-all" ? count : out === "hidden-last" ? 1 : 0;
        if (seq.status === "finished") {
          hiddenRow += rows;
          continue;
        }
        for (let r = 0; r < rows; r++, hiddenRow++) {
          const h = result.hidden!.subarray(hiddenRow * H, (hiddenRow + 1) * H);
          for (let c = 0; c < H; c++) st.hiddenSum![c]! += h[c]!;
          st.hiddenCount++;
        }
        if (st.kind === "embed" && reachedEnd) this.#finishEmbed(seq);
      }
    }
  }

  /** What a backend error becomes: the device's state is unknown, so nothing may run on. */
  #backendFailure(e: unknown): EngineFailure {
    return new EngineFailure(
      `The compute backend (${this.runner.description}) failed at engine step ` +
        `${this.stats.steps + 1}: ${(e as Error)?.message ?? String(e)}`,
    );
  }

  /** Fails every waiting and running request, and every later one, with `failure`. */
  #failAll(failure: EngineFailure): void {
    this.#failure = failure;
    for (const seq of this.#scheduler.abortAll()) seq.state!.reject(failure);
  }

  #isPlainGreedy(seq: Sequence<SeqState>): boolean {
    const p = seq.request.sampling;
    return p.temperature < 1e-5 && !p.logprobs && p.logitBias.size === 0 &&
      p.presencePenalty === 0 &&
      p.frequencyPenalty === 0 && p.repetitionPenalty === 1 && seq.numOutputTokens >= p.minTokens &&
      seq.state!.grammar === undefined;
  }

  /** How the device picks this sequence's next token (undefined: greedy; "logits": the host). */
  #deviceSampling(seq: Sequence<SeqState>): RowSampling | "logits" | undefined {
    if (this.#isPlainGreedy(seq)) return undefined;
    const st = seq.state!;
    const p = seq.request.sampling;
    if (p.logprobs) return "logits";
    const row = rowSampling(p, {
      // The prompt matters only to the repetition penalty: no per-step copy otherwise.
      promptIds: p.repetitionPenalty !== 1 ? seq.tokenIds.slice(0, seq.numPromptTokens) : [],
      outputIds: seq.outputIds,
      eosTokenIds: p.ignoreEos ? [] : this.#eosList,
      validVocab: this.validVocab,
    }, uniform({ seed: st.seed, step: seq.numOutputTokens }));
    // A grammar's mask is filled while the step's forward pass runs, then applied on the GPU.
    return st.grammar ? { ...row, mask: st.grammar.mask } : row;
  }

  #sample(seq: Sequence<SeqState>, logits: Float32Array): number {
    const st = seq.state!;
    const p = seq.request.sampling;
    const r = sample(logits, {
      validVocab: this.validVocab,
      promptIds: seq.tokenIds.slice(0, seq.numPromptTokens),
      outputIds: seq.outputIds,
      params: p,
      rngKey: { seed: st.seed, step: seq.numOutputTokens },
      eosTokenIds: p.ignoreEos ? [] : this.#eosList,
      allowed: st.grammar?.mask,
    });
    if (p.logprobs) {
      st.logprobs.push({ tokenId: r.tokenId, logprob: r.logprob ?? 0, top: r.top ?? [] });
    }
    return r.tokenId;
  }

  /**
   * Appends a sampled id and finishes the sequence when an end id or a length limit
   * says so. Its text (and the stop strings) follow in {@linkcode #pushPendingText},
   * while the next step runs, or at once when the sequence ends here. `later`
   * placeholders (ids that steps still in flight draw) follow it again if it goes on.
   */
  #accept(seq: Sequence<SeqState>, id: number, later = 0): void {
    const p = seq.request.sampling;
    const st = seq.state!;
    const isEos = (!p.ignoreEos && this.#eos.has(id)) || p.stopTokenIds.includes(id);
    if (isEos && seq.numOutputTokens >= p.minTokens) {
      if (!this.#pushText(seq)) this.#finish(seq, "stop", id);
      return;
    }
    seq.appendToken(id);
    st.pendingText.push(id);
    this.#pendingText.add(seq);
    if (seq.numOutputTokens >= p.maxTokens || seq.numTokens >= this.maxModelLen) {
      if (!this.#pushText(seq)) this.#finish(seq, "length");
      return;
    }
    for (let k = 0; k < later; k++) seq.appendPlaceholder();
  }

  /** Pushes a sequence's pending ids into its text; true when a stop string ended it. */
  #pushText(seq: Sequence<SeqState>): boolean {
    const st = seq.state!;
    const ids = st.pendingText.splice(0);
    this.#pendingText.delete(seq);
    if (seq.status === "finished") return false;
    try {
      for (const id of ids) {
        if (st.text!.push(id)) {
          this.#finish(seq, "stop");
          return true;
        }
      }
    } catch (e) {
      // This runs while a step is in flight: a failure here ends this request alone.
      this.#fail(seq, e instanceof Error ? e : new Error(String(e)));
      return true;
    }
    return false;
  }

  /** The text of every sequence with pending ids (see {@linkcode #accept}). */
  #pushPendingText(): void {
    for (const seq of [...this.#pendingText]) this.#pushText(seq);
  }

  /**
   * Resolves a finished sequence. `endId` is the end-of-sequence or stop id that
   * ended it: counted in the output ids (and so in `completion_tokens`, next to
   * its logprobs entry) but not in the text, as vLLM does.
   */
  #finish(seq: Sequence<SeqState>, reason: FinishReason, endId?: number): void {
    seq.dropPlaceholders();
    this.#scheduler.finish(seq);
    const st = seq.state!;
    const tokenIds = seq.outputIds;
    if (endId !== undefined) tokenIds.push(endId);
    st.resolve(
      {
        id: seq.id,
        tokenIds,
        text: st.text!.finish(),
        finishReason: reason,
        promptTokens: seq.numPromptTokens,
        cachedTokens: Math.min(seq.numCachedTokens, seq.numPromptTokens),
        logprobs: seq.request.sampling.logprobs ? st.logprobs : undefined,
      } satisfies GenerateResult,
    );
  }

  /** Ends one sequence with an error and frees its blocks; the others go on. */
  #fail(seq: Sequence<SeqState>, error: Error): void {
    seq.dropPlaceholders();
    this.#scheduler.finish(seq);
    seq.state!.reject(error);
  }

  #finishEmbed(seq: Sequence<SeqState>): void {
    this.#scheduler.finish(seq);
    const st = seq.state!;
    const v = new Float32Array(st.hiddenSum!.length);
    for (let c = 0; c < v.length; c++) v[c] = st.hiddenSum![c]! / Math.max(1, st.hiddenCount);
    if (this.options.normalizeEmbeddings) {
      const norm = Math.hypot(...v) || 1;
      for (let c = 0; c < v.length; c++) v[c]! /= norm;
    }
    st.resolve(
      { id: seq.id, embedding: v, promptTokens: seq.numPromptTokens } satisfies EmbedResult,
    );
  }

  /** Waits for the running work, then releases the backend: its buffers, then a device it opened. */
  async close(): Promise<void> {
    this.#closed = true;
    await this.#loop;
    await (await this.#grammars?.catch(() => null))?.dispose();
    this.runner.destroy();
  }

  /** `await using engine = await Engine.load(...)` closes it at the end of the scope. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}
