/**
 * Shared helper for tests that need a WebGPU adapter: opens one device per
 * test file and registers GPU tests as ignored, with the reason printed, when
 * no adapter exists. When the environment says an adapter must exist
 * (`BATCHWRIGHT_REQUIRE_GPU=1`, set by `.ci/run`), they fail instead, so a
 * broken driver install never passes as green.
 *
 * @module
 */
import { Gpu } from "../engine/gpu/device.ts";

/** The environment variable that turns "no adapter" from a skip into a failure. */
export const REQUIRE_GPU_ENV = "BATCHWRIGHT_REQUIRE_GPU";

async function tryOpen(): Promise<{ gpu: Gpu | null; reason: string }> {
  try {
    return { gpu: await Gpu.open(), reason: "" };
  } catch (e) {
    return { gpu: null, reason: (e as Error).message };
  }
}

const opened = await tryOpen();
const required = Deno.env.get(REQUIRE_GPU_ENV) === "1";
const missing = `No WebGPU adapter opened, but ${REQUIRE_GPU_ENV}=1 says one must exist: ` +
  opened.reason;
if (!opened.gpu) console.error(required ? missing : `GPU tests skipped: ${opened.reason}`);
// The shared device goes once every test of the file ran and its queue is idle
// (Gpu.destroy frees the buffers tests left, then the device), so the process
// never exits with a live device.
Deno.test.afterAll(async () => {
  await opened.gpu?.device.queue.onSubmittedWorkDone();
  opened.gpu?.destroy();
});

/** Whether this machine has a WebGPU adapter. */
export const hasGpu: boolean = opened.gpu !== null;

/**
 * Whether tests that need an adapter but not this device (they spawn the CLI)
 * are ignored: only when there is none and none is required. When one is
 * required they run, and fail on the missing adapter.
 */
export const ignoreWithoutGpu: boolean = !hasGpu && !required;

/**
 * Registers a test that runs on the shared device; without one it is ignored,
 * or fails when `BATCHWRIGHT_REQUIRE_GPU=1`.
 */
export function gpuTest(name: string, fn: (gpu: Gpu) => Promise<void> | void): void {
  const gpu = opened.gpu;
  Deno.test({
    name,
    ignore: ignoreWithoutGpu,
    sanitizeResources: false,
    sanitizeOps: false,
    fn: () => {
      if (gpu === null) throw new Error(missing);
      return fn(gpu);
    },
  });
}

/** A seeded PRNG (mulberry32) returning floats in [0, 1). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Fills an array with uniform values in [-scale, scale). */
export function randomArray(n: number, random: () => number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (random() * 2 - 1) * scale;
  return out;
}

/** Rounds f32 values to bf16 (nearest even) and returns the raw bits. */
export function toBf16(values: Float32Array): Uint16Array {
  const u32 = new Uint32Array(values.buffer, values.byteOffset, values.length);
  const out = new Uint16Array(values.length);
  for (let i = 0; i < values.length; i++) {
    const x = u32[i]!;
    out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16;
  }
  return out;
}

/** Widens raw bf16 bits to f32. */
export function fromBf16(bits: Uint16Array): Float32Array {
  const u32 = new Uint32Array(bits.length);
  for (let i = 0; i < bits.length; i++) u32[i] = bits[i]! << 16;
  return new Float32Array(u32.buffer);
}

/** Asserts |a − b| ≤ atol + rtol·|b| element-wise, naming the first bad index and both values. */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  { rtol = 1e-4, atol = 1e-5, what = "value" } = {},
): void {
  if (actual.length !== expected.length) {
    throw new Error(`${what}: length ${actual.length} != expected ${expected.length}`);
  }
  for (let i = 0; i < expected.length; i++) {
    const a = actual[i]!;
    const b = expected[i]!;
    if (!(Math.abs(a - b) <= atol + rtol * Math.abs(b))) {
      throw new Error(`${what}[${i}]: got ${a}, expected ${b} (|diff| ${Math.abs(a - b)})`);
    }
  }
}

/** max |a − b| / max |b| over the finite entries of b: a logits row's error relative to its scale. */
export function relError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < b.length; i++) {
    if (!Number.isFinite(b[i]!)) continue;
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / scale;
}
