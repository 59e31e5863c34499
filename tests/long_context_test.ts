/**
 * Long prompts on every runner against the float64 reference (the cases live
 * in _long_context.ts): WebGPU with each kernel class, and WebAssembly.
 */
import { gpuTest } from "./_gpu.ts";
import { defineLongContextTests } from "./_long_context.ts";
import { makeWasmRunner, withWeights } from "./_runners.ts";
import { ModelRunner } from "../engine/model_runner.ts";

// The gpu class keeps its KV cache in f16 where the adapter has shader-f16 (its default):
// about 1e-3 of relative logit error on this model, against 1e-6 in f32.
for (const [kernels, tolerance] of [["cpu", 1e-4], ["gpu", 5e-3]] as const) {
  defineLongContextTests(
    `webgpu (${kernels} kernels)`,
    (name, fn) =>
      gpuTest(
        name,
        (gpu) =>
          fn((dir, options) =>
            withWeights(dir, (shape, source, o) =>
              ModelRunner.create(gpu, shape, source, o, { kernels }), options)
          ),
      ),
    { tolerance },
  );
}

defineLongContextTests(
  "wasm",
  (name, fn) => Deno.test(name, () => fn((dir, options) => makeWasmRunner(dir, options))),
);
