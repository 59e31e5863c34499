/**
 * What the library needs from its runtime, on Node.js 20+: the `Deno`
 * namespace (`@deno/shim-deno`, plus the few members it lacks) and
 * `navigator.gpu` from the `webgpu` package (Google's Dawn). The Node entry
 * points (`node/mod.ts`, `node/cli.ts`) import this module first, so it runs
 * before any library module is evaluated. Under Deno it changes nothing.
 *
 * The WebAssembly CPU backend (`backend: "wasm"`) runs its threads as Web
 * Workers: on Node they are `worker_threads` (node/web_worker.ts).
 *
 * @module
 */
import process from "node:process";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { randomUUID } from "node:crypto";
import { read } from "node:fs";
import { availableParallelism } from "node:os";
import { Buffer } from "node:buffer";
import { setFlagsFromString } from "node:v8";
import { NodeWebWorker } from "./web_worker.ts";

const global = globalThis as unknown as Record<string, unknown>;

if (!("Deno" in global)) {
  const { Deno: shim } = await import("@deno/shim-deno");
  // Error classes the shim does not define: `e instanceof Deno.errors.X` would throw.
  const errors = shim.errors as unknown as Record<string, unknown>;
  for (const name of ["IsADirectory", "NotADirectory", "NotCapable", "FilesystemLoop"]) {
    errors[name] ??= class extends Error {
      override name = name;
    };
  }
  patchSeek(shim.FsFile.prototype as unknown as Deno.FsFile);
  // The shim's members are read-only getters: corrections go on an object inheriting them.
  global.Deno = Object.create(shim, {
    // The shim has no HTTP server; io/metrics.ts needs its port bound synchronously.
    serve: {
      value: () => {
        throw new Error("--metrics-port needs Deno (Deno.serve): on Node.js, run without it");
      },
    },
    // The shim's makeTempFile ignores `dir` and takes `prefix` as a folder (io/writer.ts's probe).
    makeTempFile: {
      value: async (o: Deno.MakeTempOptions = {}) => {
        const name = `${o.prefix ?? ""}${randomUUID().slice(0, 8)}${o.suffix ?? ""}`;
        const path = join(o.dir ?? tmpdir(), name);
        (await shim.open(path, { write: true, createNew: true, mode: 0o600 })).close();
        return path;
      },
    },
  });
}

// Node 20 and 21 lack Promise.withResolvers (io/writer.ts uses it).
const promise = Promise as unknown as Record<string, unknown>;
promise.withResolvers ??= <T>() => {
  let resolve!: (value: T | PromiseLike<T>) => void;
  let reject!: (reason?: unknown) => void;
  const p = new Promise<T>((res, rej) => ((resolve = res), (reject = rej)));
  return { promise: p, resolve, reject };
};

// Node 20 lacks Uint8Array.fromBase64 (the wasm kernels are base64) and Web Workers.
const uint8 = Uint8Array as unknown as Record<string, unknown>;
uint8.fromBase64 ??= (text: string) => new Uint8Array(Buffer.from(text, "base64"));
global.Worker ??= NodeWebWorker;
// The wasm kernels use relaxed SIMD, on by default from V8 11.4 (Node 21); Node 20 has it behind
// a flag, which takes effect for modules compiled after it is set.
if (Number(process.versions.node.split(".")[0]) < 21) {
  setFlagsFromString("--experimental-wasm-relaxed-simd");
}

/**
 * The shim's `FsFile.seek` throws "not implemented" (the safetensors loader and
 * `merge` seek), and Node has no lseek: a file that was seeked keeps its own
 * position and reads at it.
 */
function patchSeek(proto: Deno.FsFile) {
  const positions = new WeakMap<Deno.FsFile, number>();
  const { read: readAtCursor } = proto;
  proto.seek = async function (this: Deno.FsFile, offset: number | bigint, whence: Deno.SeekMode) {
    const base = whence === 0 ? 0 : whence === 2 ? (await this.stat()).size : positions.get(this);
    if (base === undefined) throw new Error("seek from the current position needs a seek before");
    const at = base + Number(offset);
    positions.set(this, at);
    return at;
  };
  proto.read = function (this: Deno.FsFile, p: Uint8Array) {
    const at = positions.get(this);
    if (at === undefined) return readAtCursor.call(this, p);
    const fd = (this as unknown as { rid: number }).rid;
    return new Promise<number | null>((resolve, reject) =>
      read(fd, p, 0, p.byteLength, at, (e, n) => {
        if (e) return reject(e);
        positions.set(this, at + n);
        resolve(n === 0 && p.byteLength > 0 ? null : n);
      })
    );
  };
}

/** Why Dawn could not be loaded, when it could not (reported by the first `requestAdapter`). */
let dawnError: string | undefined;

if (!(global.navigator as { gpu?: unknown } | undefined)?.gpu) {
  let gpu: unknown;
  try {
    const { create, globals } = await import("webgpu");
    // GPUBufferUsage, GPUMapMode, GPUShaderStage … as in a browser or Deno.
    for (const [name, value] of Object.entries(globals)) global[name] ??= value;
    gpu = create([]);
  } catch (e) {
    dawnError = (e as Error).message;
    gpu = {
      requestAdapter: () =>
        Promise.reject(
          new Error(
            `The webgpu package (Dawn) did not load on ${process.platform}-${process.arch}: ` +
              `${dawnError}. Reinstall it (npm install webgpu), or run batchwright with Deno.`,
          ),
        ),
    };
  }
  if (global.navigator === undefined) {
    // Node 20 has no navigator; 21+ has one whose userAgent names Node.js.
    global.navigator = {
      userAgent: `Node.js/${process.versions.node}`,
      hardwareConcurrency: availableParallelism(),
    };
  }
  Object.defineProperty(global.navigator, "gpu", { value: gpu, configurable: true });
}
