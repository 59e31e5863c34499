/**
 * GPU failures stop the engine cleanly: a lost device or a WebGPU error no
 * scope caught fails every request with an {@linkcode EngineFailure} (never a
 * wrong answer), a batch run stops with status "failed" keeping the answers
 * written so far and writing no line for the rest, and `resume` finishes it.
 *
 * Each test opens its own device, since it breaks it on purpose. These cases run in a
 * child process of their own (tests/gpu_failure_test.ts).
 */
import { assert, assertEquals } from "./_assert.ts";
import { gpuTest } from "./_gpu.ts";
import { Engine } from "../engine/engine.ts";
import { Gpu } from "../engine/gpu/device.ts";
import { DEFAULT_SAMPLING, EngineFailure, type GenerateRequest } from "../engine/types.ts";
import { ApiBackend } from "../api/backend.ts";
import { runBatch } from "../io/run_batch.ts";

const MODEL = "models/ernie-tiny";

/** The error `p` rejects with, checked to be an instance of `type`. */
async function rejection<E extends Error>(
  p: Promise<unknown>,
  type: new (...args: never[]) => E,
): Promise<E> {
  try {
    await p;
  } catch (e) {
    assert(e instanceof type, `expected ${type.name}, got ${String(e)}`);
    return e;
  }
  throw new Error(`expected a rejection with ${type.name}`);
}

function request(i: number, maxTokens = 24): GenerateRequest {
  return {
    id: `r${i}`,
    promptIds: [300 + i, 301, 302, 303],
    sampling: { ...DEFAULT_SAMPLING, temperature: 0, maxTokens, ignoreEos: true },
  };
}

gpuTest(
  "a lost device fails every request with an EngineFailure, and every later one",
  async () => {
    const gpu = await Gpu.open();
    const engine = await Engine.load(MODEL, { gpu, maxNumSeqs: 2 });
    const first = await engine.generate(request(0, 2));
    assertEquals(first.tokenIds.length, 2);
    // Four requests, two per step: the device goes away under the first step.
    const pending = [1, 2, 3, 4].map((i) => engine.generate(request(i)));
    gpu.device.destroy(); // not Gpu.destroy(): to the engine this is a lost device
    for (const p of pending) {
      const e = await rejection(p, EngineFailure);
      assert(/engine step \d+: .*device was lost/.test(e.message), e.message);
    }
    await rejection(engine.generate(request(5)), EngineFailure);
    await engine.close();
    gpu.destroy(); // what the lost device still tracks goes before the process exits
  },
);

gpuTest("a WebGPU error outside any scope stops the engine at its next step", async () => {
  const gpu = await Gpu.open();
  const engine = await Engine.load(MODEL, { gpu });
  assertEquals((await engine.generate(request(0, 2))).tokenIds.length, 2);
  // MAP_READ with STORAGE is invalid: a validation error nothing is waiting for. Wait for
  // its event however long a loaded machine takes (the engine's own listener runs first).
  const seen = new Promise((r) =>
    gpu.device.addEventListener("uncapturederror", r, { once: true })
  );
  gpu.device.createBuffer({ size: 16, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.STORAGE });
  await seen;
  assert(gpu.failure !== null, "the uncapturederror event was seen");
  const e = await rejection(engine.generate(request(1, 2)), EngineFailure);
  assert(/WebGPU error: .*usage/i.test(e.message), e.message);
  await engine.close();
  gpu.destroy();
});

gpuTest("loading onto a lost device fails, naming what could not be allocated", async () => {
  const gpu = await Gpu.open();
  gpu.device.destroy();
  await gpu.device.lost;
  const e = await rejection(Engine.load(MODEL, { gpu }), Error);
  assert(/^Uploading the weights to the GPU: The GPU device was lost/.test(e.message), e.message);
  gpu.destroy();
});

gpuTest(
  "a batch whose device is lost stops as failed, keeps its answers, and resume finishes it",
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "gpu_failure_" });
    const input = `${dir}/in.jsonl`;
    const output = `${dir}/out.jsonl`;
    const N = 12;
    const lines = Array.from({ length: N }, (_, i) =>
      JSON.stringify({
        custom_id: `c${i}`,
        method: "POST",
        url: "/v1/completions",
        body: { prompt: `story ${i}`, max_tokens: 8, temperature: 0, ignore_eos: true },
      }));
    await Deno.writeTextFile(input, lines.join("\n") + "\n");

    const gpu = await Gpu.open();
    const engine = await Engine.load(MODEL, { gpu, maxNumSeqs: 2 });
    let answered = 0;
    const failed = await runBatch({
      input,
      output,
      backend: new ApiBackend(engine),
      maxInFlight: 4,
      order: "input",
      onAnswer: () => {
        if (++answered === 3) gpu.device.destroy();
      },
    });
    await engine.close();
    gpu.destroy();
    assertEquals(failed.status, "failed");
    assert(/device was lost.*--resume/.test(failed.error ?? ""), failed.error);
    const partial = (await Deno.readTextFile(`${output}.partial`)).trim().split("\n");
    assert(partial.length >= 3 && partial.length < N, `${partial.length} lines kept`);
    for (const line of partial) {
      assertEquals(JSON.parse(line).response.status_code, 200, "no error line for the failed");
    }

    const fresh = await Gpu.open();
    const again = await Engine.load(MODEL, { gpu: fresh });
    const resumed = await runBatch({ input, output, backend: new ApiBackend(again), resume: true });
    await again.close();
    fresh.destroy();
    assertEquals(resumed.status, "completed");
    assertEquals(resumed.resumed, partial.length);
    const all = (await Deno.readTextFile(output)).trim().split("\n").map((l) => JSON.parse(l));
    assertEquals(all.map((a) => a.custom_id).sort(), lines.map((_, i) => `c${i}`).sort());
    assert(all.every((a) => a.response.status_code === 200));
    await Deno.remove(dir, { recursive: true });
  },
);

gpuTest("an allocation that does not fit names what failed and the remedy", async (gpu) => {
  const size = gpu.device.limits.maxBufferSize + 16;
  const e = await rejection(
    gpu.checked(
      "Allocating the KV cache (9 blocks)",
      () => gpu.device.createBuffer({ size, usage: GPUBufferUsage.STORAGE }),
      "lower --kv-cache-memory",
    ),
    Error,
  );
  assert(
    /^Allocating the KV cache \(9 blocks\): .*; lower --kv-cache-memory$/.test(e.message),
    e.message,
  );
  assertEquals(gpu.failure, null, "a caught error is not the device's failure");
});

gpuTest("Gpu.destroy frees the live buffers made through it first, then the device", async () => {
  const gpu = await Gpu.open();
  const calls: string[] = [];
  const spy = <T extends { destroy(): void }>(x: T, name: string): T => {
    const destroy = x.destroy.bind(x);
    x.destroy = () => {
      calls.push(name);
      destroy();
    };
    return x;
  };
  const kept = [
    spy(gpu.storage("a", 64), "a"),
    spy(gpu.uniform("b", 16), "b"),
    spy(gpu.readback("c", 16), "c"),
  ];
  spy(gpu.device, "device");
  await gpu.read(kept[0]!, 16); // its own staging buffer is made and freed on the way
  gpu.destroy();
  assertEquals(calls.at(-1), "device");
  assertEquals(calls.slice(0, -1).sort(), ["a", "b", "c"]);
  assertEquals(gpu.failure, null);
});
