/**
 * A Web `Worker` on `node:worker_threads`, enough for the WebAssembly CPU
 * backend (engine/backends/wasm/threads.ts): a module worker from a blob URL,
 * `onmessage`/`onerror`, `postMessage` (structured clone: a
 * `WebAssembly.Module` and a shared `WebAssembly.Memory` pass as in a
 * browser), `terminate`. Node 20 has no Web Workers.
 *
 * A blob URL is valid only in the thread that made it, so the worker starts
 * with a small CommonJS bootstrap that receives the module's source as its
 * first message, imports it as a `data:` module with `self`, `postMessage` and
 * `onmessage` defined, and replays messages that came before it was loaded.
 *
 * @module
 */
import { Worker as ThreadWorker } from "node:worker_threads";
import { resolveObjectURL } from "node:buffer";

const BOOTSTRAP = `
const { parentPort } = require("node:worker_threads");
globalThis.self = globalThis;
globalThis.postMessage = (data) => parentPort.postMessage(data);
const early = [];
parentPort.on("message", (data) => {
  if (data && data.__batchwrightSource !== undefined) {
    import("data:text/javascript," + encodeURIComponent(data.__batchwrightSource)).then(() => {
      for (const d of early.splice(0)) self.onmessage({ data: d });
    }, (e) => parentPort.postMessage({ error: String(e && e.stack || e) }));
  } else if (typeof self.onmessage === "function" && early.length === 0) {
    self.onmessage({ data });
  } else {
    early.push(data);
  }
});
`;

/** What the backend uses of a Web Worker, on a `worker_threads` thread. */
export class NodeWebWorker {
  onmessage: ((e: { data: unknown }) => void) | null = null;
  onerror: ((e: { message: string; preventDefault(): void }) => void) | null = null;
  readonly #thread: ThreadWorker;
  /** Resolves once the source was posted: messages go after it. */
  readonly #sent: Promise<void>;

  constructor(url: string | URL, options?: { type?: string }) {
    if (options?.type !== "module") throw new Error("NodeWebWorker runs module workers only");
    const blob = resolveObjectURL(String(url));
    if (blob === undefined) throw new Error(`NodeWebWorker: ${url} is not a live blob URL`);
    this.#thread = new ThreadWorker(BOOTSTRAP, { eval: true });
    this.#thread.on("message", (data) => this.onmessage?.({ data }));
    this.#thread.on("error", (e) => this.onerror?.({ message: String(e), preventDefault() {} }));
    this.#sent = blob.text().then((source) =>
      this.#thread.postMessage({ __batchwrightSource: source })
    );
  }

  postMessage(data: unknown): void {
    this.#sent.then(() => this.#thread.postMessage(data));
  }

  terminate(): void {
    this.#thread.terminate();
  }
}
