/**
 * The kernels module instantiated in worker threads over one shared
 * `WebAssembly.Memory`. The main thread allocates memory, writes a call into a
 * control block and wakes the workers through `Atomics.notify`; every worker
 * runs the same exported function with its own thread index (the C code splits
 * the work and meets at barriers), and the last one to finish wakes the main
 * thread, which waits with `Atomics.waitAsync` so its event loop stays free.
 *
 * @module
 */
import { KERNELS_WASM_BASE64 } from "./kernels_wasm.ts";

/** The exported C functions a pool can run; each takes (ptr, thread, ...args). */
const FUNCTIONS = ["run_step", "run_matmul", "run_sample"] as const;
export type KernelFunction = typeof FUNCTIONS[number];

// Control block, i32 words.
const GEN = 0; // bumped by the main thread to start a call
const DONE = 1; // workers finished with the current call
const FIN = 2; // bumped by the last worker of a call
const QUIT = 3; // set before the workers are terminated
const THREADS = 4;
const FN = 5; // index into FUNCTIONS
const ARGS = 6; // ARGS..ARGS+5: the call's arguments (the first is passed before the thread index)
const CONTROL_WORDS = 16;

const STACK_BYTES = 256 << 10;
const PAGE = 65536;
const MAX_PAGES = 65536; // 4 GiB: all a wasm32 memory can address

// Runs in each worker (a blob URL, so no file is read at run time).
const WORKER_SOURCE = `
const FUNCTIONS = ${JSON.stringify(FUNCTIONS)};
self.onmessage = (e) => {
  const { module, memory, thread, control, stackTop } = e.data;
  let instance;
  try {
    instance = new WebAssembly.Instance(module, { env: { memory, now: () => performance.now() } });
    instance.exports.__stack_pointer.value = stackTop;
  } catch (err) {
    self.postMessage({ error: String(err && err.stack || err) });
    return;
  }
  const c = new Int32Array(memory.buffer, control, ${CONTROL_WORDS});
  self.postMessage({ ready: true });
  let seen = 0;
  for (;;) {
    Atomics.wait(c, ${GEN}, seen);
    seen = Atomics.load(c, ${GEN});
    if (Atomics.load(c, ${QUIT})) break;
    try {
      const a = ${ARGS};
      instance.exports[FUNCTIONS[c[${FN}]]](c[a], thread, c[a + 1], c[a + 2], c[a + 3], c[a + 4], c[a + 5]);
    } catch (err) {
      self.postMessage({ error: String(err && err.stack || err) });
      return;
    }
    if (Atomics.add(c, ${DONE}, 1) === c[${THREADS}] - 1) {
      Atomics.store(c, ${DONE}, 0);
      Atomics.add(c, ${FIN}, 1);
      Atomics.notify(c, ${FIN});
    }
  }
};
`;

/** A pool of worker threads sharing one wasm memory, with a bump allocator over it. */
export class WasmThreads {
  readonly memory: WebAssembly.Memory;
  readonly #workers: Worker[] = [];
  readonly #control: number;
  #top: number;
  #failed: Promise<never>;
  #fail: (e: Error) => void = () => {};
  #busy = false;
  /** Sizes of kernels.c's structs in u32 words, to check the TypeScript layouts against. */
  structWords = { model: 0, weight: 0, layer: 0, sampleRow: 0, ops: 0 };
  #closed = false;

  private constructor(
    readonly threads: number,
    readonly module: WebAssembly.Module,
    memory: WebAssembly.Memory,
    heapBase: number,
  ) {
    this.memory = memory;
    this.#top = heapBase;
    this.#control = this.alloc(CONTROL_WORDS * 4);
    this.#failed = new Promise((_, reject) => (this.#fail = reject));
    this.#failed.catch(() => {}); // observed by run()
  }

  /** Compiles the kernels and starts `threads` workers, each with its own stack. */
  static async start(threads: number): Promise<WasmThreads> {
    if (!(threads >= 1 && Number.isInteger(threads))) {
      throw new Error(`wasm backend: threads must be a positive integer, got ${threads}`);
    }
    const module = await WebAssembly.compile(Uint8Array.fromBase64(KERNELS_WASM_BASE64));
    const memory = new WebAssembly.Memory({ initial: 32, maximum: MAX_PAGES, shared: true });
    const main = new WebAssembly.Instance(module, {
      env: { memory, now: () => performance.now() },
    });
    const heapBase = (main.exports.__heap_base as WebAssembly.Global).value as number;
    const pool = new WasmThreads(threads, module, memory, heapBase);
    const word = (f: string) => (main.exports[f] as () => number)();
    pool.structWords = {
      model: word("model_fields"),
      weight: word("weight_fields"),
      layer: word("layer_fields"),
      sampleRow: word("sample_row_fields"),
      ops: word("op_count"),
    };
    pool.i32(pool.#control, CONTROL_WORDS)[THREADS] = threads;
    const url = URL.createObjectURL(new Blob([WORKER_SOURCE], { type: "text/javascript" }));
    try {
      await Promise.all(Array.from({ length: threads }, (_, thread) => {
        const stack = pool.alloc(STACK_BYTES, 16);
        const worker = new Worker(url, { type: "module" });
        pool.#workers.push(worker);
        return new Promise<void>((resolve, reject) => {
          worker.onmessage = (e: MessageEvent<{ ready?: boolean; error?: string }>) => {
            if (e.data.ready) return resolve();
            const error = new Error(`wasm backend: worker ${thread} failed: ${e.data.error}`);
            reject(error);
            pool.#fail(error);
          };
          worker.onerror = (e) => {
            e.preventDefault();
            const error = new Error(`wasm backend: worker ${thread} failed: ${e.message}`);
            reject(error);
            pool.#fail(error);
          };
          worker.postMessage({
            module,
            memory,
            thread,
            control: pool.#control,
            stackTop: stack + STACK_BYTES,
          });
        });
      }));
    } catch (e) {
      pool.close();
      throw e;
    } finally {
      URL.revokeObjectURL(url);
    }
    return pool;
  }

  /** Bytes allocated so far (the memory's high-water mark). */
  get allocatedBytes(): number {
    return this.#top;
  }

  /** Allocates `bytes` (aligned), growing the memory; throws when 4 GiB would not hold it. */
  alloc(bytes: number, align = 64): number {
    const at = Math.ceil(this.#top / align) * align;
    const end = at + bytes;
    if (end > MAX_PAGES * PAGE) {
      throw new Error(
        `wasm backend: ${end} bytes do not fit a WebAssembly memory (at most 4 GiB): ` +
          `lower --kv-cache-memory or --max-num-batched-tokens, or use --backend webgpu`,
      );
    }
    const pages = Math.ceil(end / PAGE);
    const have = this.memory.buffer.byteLength / PAGE;
    if (pages > have) this.memory.grow(pages - have);
    this.#top = end;
    return at;
  }

  /** Views of the shared memory (made fresh: the buffer changes when the memory grows). */
  u32(at: number, n: number): Uint32Array {
    return new Uint32Array(this.memory.buffer, at, n);
  }
  i32(at: number, n: number): Int32Array {
    return new Int32Array(this.memory.buffer, at, n);
  }
  f32(at: number, n: number): Float32Array {
    return new Float32Array(this.memory.buffer, at, n);
  }

  /** Runs `fn(first, thread, ...rest)` on every worker and resolves when all have returned. */
  async run(fn: KernelFunction, first: number, ...rest: number[]): Promise<void> {
    if (this.#closed) throw new Error("wasm backend: the runner was destroyed");
    if (this.#busy) throw new Error("wasm backend: a call is already running");
    this.#busy = true;
    try {
      const c = this.i32(this.#control, CONTROL_WORDS);
      c[FN] = FUNCTIONS.indexOf(fn);
      [first, ...rest].forEach((v, i) => (c[ARGS + i] = v | 0));
      const fin = Atomics.load(c, FIN);
      Atomics.add(c, GEN, 1);
      Atomics.notify(c, GEN);
      const wait = Atomics.waitAsync(c, FIN, fin);
      if (wait.async) await Promise.race([wait.value, this.#failed]);
    } finally {
      this.#busy = false;
    }
  }

  /** Stops the workers (they are terminated, so a process can exit). */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const c = this.i32(this.#control, CONTROL_WORDS);
    Atomics.store(c, QUIT, 1);
    Atomics.add(c, GEN, 1);
    Atomics.notify(c, GEN);
    for (const w of this.#workers) w.terminate();
  }
}
