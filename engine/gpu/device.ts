/**
 * The WebGPU device: adapter selection, limits, one pipeline cache keyed by
 * (kernel, override constants), and buffer helpers.
 *
 * @module
 */

/** Options for {@linkcode openGpu}. */
export interface GpuOptions {
  /** Ask for a high-performance adapter (default true). */
  readonly highPerformance?: boolean;
}

/** A kernel: its WGSL source and a short name for labels and cache keys. */
export interface Kernel {
  readonly name: string;
  readonly source: string;
}

/**
 * Thrown when no usable WebGPU adapter exists.
 *
 * @example
 * ```ts
 * try {
 *   const gpu = await Gpu.open();
 *   console.log(`WebGPU on ${gpu.description}`);
 *   gpu.destroy();
 * } catch (e) {
 *   if (!(e instanceof NoGpuError)) throw e;
 *   console.log(`No GPU, the wasm backend will run: ${e.message}`);
 * }
 * ```
 */
export class NoGpuError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "NoGpuError";
  }
}

/**
 * The opened device, its limits, and the pipeline cache. An engine given a
 * `Gpu` runs on it and leaves it open: destroy it after closing the engine.
 *
 * @example
 * ```ts
 * import { Engine } from "../engine.ts";
 *
 * const gpu = await Gpu.open();
 * console.log(gpu.description, gpu.hasF16, gpu.maxBinding);
 * const engine = await Engine.load("models/ernie-tiny", { gpu });
 * const { embedding } = await engine.embed({ id: "a", promptIds: [5, 6, 7] });
 * console.log(embedding.length);
 * await engine.close();
 * gpu.destroy();
 * ```
 */
export class Gpu {
  readonly #modules = new Map<string, GPUShaderModule>();
  readonly #pipelines = new Map<string, GPUComputePipeline>();

  #failure: Error | null = null;
  #destroyed = false;
  readonly #buffers = new Set<WeakRef<GPUBuffer>>();
  #pruneAt = 1024;

  private constructor(
    readonly adapter: GPUAdapter,
    readonly device: GPUDevice,
    readonly description: string,
  ) {
    // Errors outside an error scope (and a lost device) would otherwise pass
    // silently, leaving invalid buffers and wrong answers behind.
    device.addEventListener("uncapturederror", (event) => {
      this.#fail(`WebGPU error: ${(event as GPUUncapturedErrorEvent).error.message}`);
    });
    device.lost.then((info) => {
      if (this.#destroyed) return;
      this.#fail(`The GPU device was lost (${info.message || info.reason || "unknown reason"})`);
    });
  }

  /**
   * The first GPU error no error scope caught, or the device's loss; null while
   * the device is healthy. Once set, nothing computed on this device can be trusted.
   */
  get failure(): Error | null {
    return this.#failure;
  }

  #fail(message: string): void {
    this.#failure ??= new Error(message);
  }

  /**
   * The device's failure once a lost device has had up to `ms` to say so: work on a
   * destroyed device can fail (a validation error, a rejected mapping) before the
   * device's `lost` promise settles, and the loss is the error worth reporting.
   */
  async failureAfter(ms = 250): Promise<Error | null> {
    if (this.#failure === null) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const waited = new Promise((r) => (timer = setTimeout(r, ms)));
      await Promise.race([this.device.lost, waited]);
      clearTimeout(timer);
    }
    return this.#failure;
  }

  /** Whether shaders may use f16 (`enable f16;`): the device has `shader-f16`. */
  get hasF16(): boolean {
    return this.device.features.has("shader-f16");
  }

  /** Whether compute passes can write GPU timestamps (`timestamp-query`, for --profile). */
  get hasTimestamps(): boolean {
    return this.device.features.has("timestamp-query");
  }

  /** The largest buffer a single storage binding may cover. */
  get maxBinding(): number {
    return this.device.limits.maxStorageBufferBindingSize;
  }

  /** Opens the default adapter with the largest limits it offers. */
  /**
   * What the default adapter is, without opening a device on it (null when there is
   * none): enough to decide whether to use WebGPU at all.
   *
   * @example
   * ```ts
   * const adapter = await Gpu.probe();
   * console.log(adapter?.description ?? "no WebGPU adapter");
   * ```
   */
  static async probe(
    options: GpuOptions = {},
  ): Promise<{ description: string; isFallbackAdapter: boolean } | null> {
    if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) return null;
    const adapter = await navigator.gpu.requestAdapter({
      powerPreference: options.highPerformance === false ? "low-power" : "high-performance",
    });
    if (!adapter) return null;
    const info = adapter.info;
    return {
      description: info.description || `${info.vendor} ${info.architecture}`.trim() ||
        "unknown adapter",
      isFallbackAdapter: info.isFallbackAdapter,
    };
  }

  static async open(options: GpuOptions = {}): Promise<Gpu> {
    if (typeof navigator === "undefined" || !("gpu" in navigator) || !navigator.gpu) {
      throw new NoGpuError(
        "WebGPU is not available in this runtime: run with Deno 2.x (`deno run -A cli.ts ...`).",
      );
    }
    const adapter = await navigator.gpu.requestAdapter({
      powerPreference: options.highPerformance === false ? "low-power" : "high-performance",
    });
    if (!adapter) {
      throw new NoGpuError(
        "No WebGPU adapter found. Install a GPU driver, or on Linux without a GPU install " +
          "Mesa's software drivers (`apt-get install mesa-vulkan-drivers`).",
      );
    }
    const l = adapter.limits;
    // f16 in shaders where the adapter has it (GEMM arithmetic, f16 KV cache kernels);
    // timestamp queries for --profile.
    const features = (["shader-f16", "timestamp-query"] as const).filter((f) =>
      adapter.features.has(f)
    );
    const device = await adapter.requestDevice({
      requiredFeatures: features,
      requiredLimits: {
        maxStorageBufferBindingSize: l.maxStorageBufferBindingSize,
        maxBufferSize: l.maxBufferSize,
        maxStorageBuffersPerShaderStage: l.maxStorageBuffersPerShaderStage,
        maxComputeWorkgroupStorageSize: l.maxComputeWorkgroupStorageSize,
        maxComputeInvocationsPerWorkgroup: l.maxComputeInvocationsPerWorkgroup,
        maxComputeWorkgroupSizeX: l.maxComputeWorkgroupSizeX,
        maxComputeWorkgroupSizeY: l.maxComputeWorkgroupSizeY,
        maxComputeWorkgroupsPerDimension: l.maxComputeWorkgroupsPerDimension,
      },
    });
    const info = adapter.info;
    const description = info.description || `${info.vendor} ${info.architecture}`.trim() ||
      "unknown adapter";
    return new Gpu(adapter, device, description);
  }

  /** Returns the cached pipeline for a kernel specialised by override constants. */
  pipeline(kernel: Kernel, constants: Readonly<Record<string, number>> = {}): GPUComputePipeline {
    const key = `${kernel.name}|${JSON.stringify(constants)}`;
    let pipeline = this.#pipelines.get(key);
    if (pipeline) return pipeline;
    let module = this.#modules.get(kernel.name);
    if (!module) {
      module = this.device.createShaderModule({ label: kernel.name, code: kernel.source });
      this.#modules.set(kernel.name, module);
    }
    pipeline = this.device.createComputePipeline({
      label: key,
      layout: "auto",
      compute: { module, entryPoint: "main", constants: { ...constants } },
    });
    this.#pipelines.set(key, pipeline);
    return pipeline;
  }

  /** Creates a bind group for a pipeline from buffers in binding order. */
  bindGroup(
    pipeline: GPUComputePipeline,
    buffers: readonly (GPUBuffer | { buffer: GPUBuffer; offset?: number; size?: number })[],
  ): GPUBindGroup {
    return this.device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: buffers.map((b, binding) => ({
        binding,
        resource: "offset" in b || !("usage" in b) ? b as GPUBufferBinding : { buffer: b },
      })),
    });
  }

  /** A storage buffer (rounded up to 16 bytes) that can be copied to and from. */
  storage(label: string, bytes: number): GPUBuffer {
    return this.#track(this.device.createBuffer({
      label,
      size: Math.max(16, Math.ceil(bytes / 16) * 16),
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST | GPUBufferUsage.COPY_SRC,
    }));
  }

  /** A uniform buffer (rounded up to 16 bytes). */
  uniform(label: string, bytes: number): GPUBuffer {
    return this.#track(this.device.createBuffer({
      label,
      size: Math.max(16, Math.ceil(bytes / 16) * 16),
      usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
    }));
  }

  /** A buffer the host can map for reading. */
  readback(label: string, bytes: number): GPUBuffer {
    return this.#track(this.device.createBuffer({
      label,
      size: Math.max(16, Math.ceil(bytes / 16) * 16),
      usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST,
    }));
  }

  /**
   * Remembers a buffer made on this device (weakly: a buffer nobody holds may
   * still be collected), so that {@linkcode destroy} frees every live one
   * before the device: buffers first, the device last.
   */
  #track(buffer: GPUBuffer): GPUBuffer {
    this.#buffers.add(new WeakRef(buffer));
    if (this.#buffers.size >= this.#pruneAt) {
      for (const ref of this.#buffers) if (ref.deref() === undefined) this.#buffers.delete(ref);
      this.#pruneAt = 2 * Math.max(512, this.#buffers.size);
    }
    return buffer;
  }

  /** Creates a storage buffer holding `data` (padded to 16 bytes). */
  upload(label: string, data: ArrayBufferView): GPUBuffer {
    const buffer = this.storage(label, data.byteLength);
    this.write(buffer, data);
    return buffer;
  }

  /** Writes `data` at `offset`, padding the tail so the size is a multiple of 4. */
  write(buffer: GPUBuffer, data: ArrayBufferView, offset = 0): void {
    const bytes = new Uint8Array(data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
    const whole = bytes.byteLength & ~3;
    if (whole > 0) this.device.queue.writeBuffer(buffer, offset, bytes, 0, whole);
    if (whole < bytes.byteLength) {
      const tail = new Uint8Array(4);
      tail.set(bytes.subarray(whole));
      this.device.queue.writeBuffer(buffer, offset + whole, tail);
    }
  }

  /** Copies `bytes` from a GPU buffer to the host (one submit and map). */
  async read(buffer: GPUBuffer, bytes: number, offset = 0): Promise<ArrayBuffer> {
    const size = Math.ceil(bytes / 4) * 4;
    const staging = this.readback("read", size);
    const encoder = this.device.createCommandEncoder();
    encoder.copyBufferToBuffer(buffer, offset, staging, 0, size);
    this.device.queue.submit([encoder.finish()]);
    await staging.mapAsync(GPUMapMode.READ);
    const out = staging.getMappedRange(0, size).slice(0, bytes);
    staging.unmap();
    staging.destroy();
    return out;
  }

  /**
   * Runs `fn` inside validation and out-of-memory error scopes and throws what
   * they caught (or the device's failure), naming `what` failed and, when given,
   * the `remedy` (for an allocation: what to lower).
   */
  async checked<T>(what: string, fn: () => T | Promise<T>, remedy?: string): Promise<T> {
    this.pushErrorScopes();
    let outcome: { ok: true; value: T } | { ok: false; error: unknown };
    try {
      outcome = { ok: true, value: await fn() };
    } catch (error) {
      outcome = { ok: false, error };
    }
    // Pop both scopes whatever happened, so the stack stays balanced.
    await this.popErrorScopes(what, remedy);
    if (!outcome.ok) throw outcome.error;
    return outcome.value;
  }

  /** Opens validation and out-of-memory error scopes; {@linkcode popErrorScopes} closes them. */
  pushErrorScopes(): void {
    this.device.pushErrorScope("out-of-memory");
    this.device.pushErrorScope("validation");
  }

  /**
   * Closes the scopes {@linkcode pushErrorScopes} opened and throws what they
   * caught, or the device's failure, naming `what` failed and, when given,
   * the `remedy` (for an allocation: what to lower).
   */
  async popErrorScopes(what: string, remedy?: string): Promise<void> {
    const validation = await this.device.popErrorScope();
    const oom = await this.device.popErrorScope();
    if (oom || validation) {
      // On a lost device the loss is the cause of whatever failed.
      const lost = await this.failureAfter();
      if (lost) throw new Error(`${what}: ${lost.message}`);
    }
    if (oom) {
      throw new Error(
        `${what}: the GPU is out of memory (${oom.message})${remedy ? `; ${remedy}` : ""}`,
      );
    }
    if (validation) {
      throw new Error(
        `${what}: WebGPU validation failed: ${validation.message}${remedy ? `; ${remedy}` : ""}`,
      );
    }
    if (this.#failure) throw new Error(`${what}: ${this.#failure.message}`);
  }

  /**
   * Releases the device (not a failure: `failure` stays null): every live
   * buffer made through this object first, then the device, so that nothing
   * of it is left for exit-time teardown. Call it with no work in flight.
   */
  destroy(): void {
    this.#destroyed = true;
    for (const ref of this.#buffers) ref.deref()?.destroy();
    this.#buffers.clear();
    this.#pipelines.clear();
    this.#modules.clear();
    this.device.destroy();
  }
}
