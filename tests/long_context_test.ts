/**
 * Long prompts on the WebGPU runner against the float64 reference (the cases
 * live in _long_context.ts, shared with every backend).
 */
import { gpuTest } from "./_gpu.ts";
import { defineLongContextTests, type RunnerFactory } from "./_long_context.ts";
import { loadModelConfig } from "../engine/loader/config.ts";
import { Checkpoint } from "../engine/loader/checkpoint.ts";
import { ModelRunner } from "../engine/model_runner.ts";
import type { Gpu } from "../engine/gpu/device.ts";

/** The WebGPU runner on `gpu`, weights read straight from the checkpoint. */
function webGpuRunners(gpu: Gpu): RunnerFactory {
  return async (dir, options) => {
    const config = await loadModelConfig(dir);
    const ckpt = await Checkpoint.open(dir, config);
    const names = new Set(ckpt.names());
    try {
      return await ModelRunner.create(gpu, config, {
        get: (n) => (names.has(n) ? ckpt.get(n) : Promise.resolve(null)),
      }, options);
    } finally {
      ckpt.close();
    }
  };
}

defineLongContextTests("webgpu", (name, fn) => gpuTest(name, (gpu) => fn(webGpuRunners(gpu))));
