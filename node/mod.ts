/**
 * The library on Node.js 20+: the same API as `mod.ts`, with the `Deno`
 * namespace and WebGPU (the `webgpu` package's Dawn) installed first.
 *
 * @example
 * ```ts ignore
 * import { Batchwright } from "batchwright";
 *
 * // { backend: "wasm" } runs on the CPU (worker_threads) where Dawn finds no GPU.
 * const llm = await Batchwright.load("models/ernie-tiny");
 * console.log(llm.modelName);
 * await llm.close();
 * ```
 *
 * @module
 */
import "./setup.ts";
export * from "../mod.ts";
