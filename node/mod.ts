/**
 * The library on Node.js 20+: the same API as `mod.ts`, with the `Deno`
 * namespace and WebGPU (the `webgpu` package's Dawn) installed first.
 *
 * @example
 * ```ts ignore
 * import { Batchwright } from "batchwright";
 *
 * await using llm = await Batchwright.load("models/ernie-tiny");
 * console.log(llm.modelName);
 * ```
 *
 * @module
 */
import "./setup.ts";
export * from "../mod.ts";
