/**
 * Per-kernel GPU time for `--profile` and the bench: every dispatch of a step
 * in its own compute pass with timestamp writes (`timestamp-query`), summed by
 * kernel label, with each kernel's GFLOP/s and GB/s from its shapes and, for a
 * known card, those as fractions of the card's peak.
 *
 * Without `timestamp-query` each dispatch is submitted on its own and timed
 * with the host clock until the queue drains: that includes submit and
 * wake-up latency, and the report says so.
 *
 * @module
 */
import type { Gpu } from "./device.ts";
import type { Dispatch, StepShape } from "./kernels.ts";

/** What one launch must compute and move, from its shapes: the roofline's inputs. */
export interface KernelCost {
  /** Floating-point operations (a fused multiply-add is 2). */
  readonly flops: number;
  /** Bytes read and written at least once (weights, activations, KV cache). */
  readonly bytes: number;
}

/** One kernel label's totals over the profiled steps. */
export interface KernelStat {
  readonly label: string;
  /** Launches timed. */
  readonly calls: number;
  /** GPU seconds over all launches. */
  readonly seconds: number;
  readonly flops: number;
  readonly bytes: number;
}

/** How the times were taken. */
export type ProfileMethod = "timestamp-query" | "separate-submits" | "host-clock";

/** A card's peaks, for "fraction of peak". */
export interface DevicePeak {
  readonly name: string;
  /** DRAM bandwidth, bytes per second. */
  readonly bytesPerSecond: number;
  /** f32 FMA rate without tensor cores, FLOP per second (what WGSL f32 code can reach). */
  readonly flopsPerSecond: number;
}

/** What {@linkcode KernelProfiler.report} returns. */
export interface KernelProfile {
  readonly method: ProfileMethod;
  readonly adapter: string;
  readonly steps: number;
  /** By GPU time, largest first. */
  readonly kernels: readonly KernelStat[];
  /** The card's peaks when the adapter is one we know. */
  readonly peak?: DevicePeak;
}

/**
 * Datasheet peaks of the cards we aim at (NVIDIA H100 SXM5 / PCIe, H200 SXM):
 * HBM bandwidth and the non-tensor-core f32 rate.
 */
const KNOWN_PEAKS: readonly { readonly pattern: RegExp; readonly peak: DevicePeak }[] = [
  {
    pattern: /H200/i,
    peak: { name: "NVIDIA H200", bytesPerSecond: 4.8e12, flopsPerSecond: 66.9e12 },
  },
  {
    pattern: /H100.*PCIe/i,
    peak: { name: "NVIDIA H100 PCIe", bytesPerSecond: 2.0e12, flopsPerSecond: 51.2e12 },
  },
  {
    pattern: /H100/i,
    peak: { name: "NVIDIA H100 SXM5", bytesPerSecond: 3.35e12, flopsPerSecond: 66.9e12 },
  },
];

/** The peaks of a known card from its adapter description, else undefined. */
export function peakOf(description: string): DevicePeak | undefined {
  return KNOWN_PEAKS.find((k) => k.pattern.test(description))?.peak;
}

interface Totals {
  calls: number;
  seconds: number;
  flops: number;
  bytes: number;
}

/**
 * Times a runner's steps kernel by kernel. Use: `await record(encoder, dispatches,
 * shape)` in place of encoding the step's compute pass, submit the encoder, then
 * `await collect()`.
 */
export class KernelProfiler {
  readonly method: ProfileMethod;
  readonly #gpu: Gpu;
  readonly #totals = new Map<string, Totals>();
  readonly #capacity: number;
  readonly #querySet?: GPUQuerySet;
  readonly #resolved?: GPUBuffer;
  readonly #readback?: GPUBuffer;
  /** The launches of the step being recorded, in pass order (timestamp mode). */
  #pending: { label: string; cost: KernelCost }[] = [];
  #steps = 0;

  /** `maxPasses`: the most non-empty dispatches one step can launch. */
  constructor(gpu: Gpu, maxPasses: number) {
    this.#gpu = gpu;
    // A query set holds at most 4096 queries: two per pass.
    this.#capacity = Math.min(maxPasses, 2048);
    this.method = gpu.hasTimestamps ? "timestamp-query" : "separate-submits";
    if (this.method === "timestamp-query") {
      const count = 2 * this.#capacity;
      this.#querySet = gpu.device.createQuerySet({ label: "profile", type: "timestamp", count });
      this.#resolved = gpu.device.createBuffer({
        label: "profile.resolved",
        size: count * 8, // (passes, 2) u64 nanoseconds
        usage: GPUBufferUsage.QUERY_RESOLVE | GPUBufferUsage.COPY_SRC,
      });
      this.#readback = gpu.readback("profile.readback", count * 8);
    }
  }

  /**
   * Runs a step's dispatches: each in its own timed pass of `encoder`, or, without
   * timestamp queries, each submitted alone and awaited (the encoder then gets none).
   */
  async record(
    encoder: GPUCommandEncoder,
    dispatches: readonly Dispatch[],
    shape: StepShape,
  ): Promise<void> {
    this.#steps++;
    const launches = dispatches.flatMap((d) => {
      const [x, y, z] = d.workgroups(shape);
      if (x === 0 || y === 0 || z === 0) return [];
      return [{ d, size: [x, y, z] as const, cost: d.cost?.(shape) ?? { flops: 0, bytes: 0 } }];
    });
    if (this.method === "separate-submits") {
      const queue = this.#gpu.device.queue;
      await queue.onSubmittedWorkDone(); // earlier work must not count against the first kernel
      for (const { d, size, cost } of launches) {
        const one = this.#gpu.device.createCommandEncoder();
        const pass = one.beginComputePass();
        pass.setPipeline(d.pipeline);
        pass.setBindGroup(0, d.bindGroup);
        pass.dispatchWorkgroups(...size);
        pass.end();
        const t0 = performance.now();
        queue.submit([one.finish()]);
        await queue.onSubmittedWorkDone();
        this.#add(d.label, (performance.now() - t0) / 1000, cost);
      }
      return;
    }
    if (launches.length > this.#capacity) {
      throw new Error(
        `profile: a step launched ${launches.length} kernels, more than the ${this.#capacity} ` +
          "the query set holds",
      );
    }
    launches.forEach(({ d, size }, i) => {
      const pass = encoder.beginComputePass({
        timestampWrites: {
          querySet: this.#querySet!,
          beginningOfPassWriteIndex: 2 * i,
          endOfPassWriteIndex: 2 * i + 1,
        },
      });
      pass.setPipeline(d.pipeline);
      pass.setBindGroup(0, d.bindGroup);
      pass.dispatchWorkgroups(...size);
      pass.end();
    });
    if (launches.length > 0) {
      const bytes = launches.length * 16;
      encoder.resolveQuerySet(this.#querySet!, 0, 2 * launches.length, this.#resolved!, 0);
      encoder.copyBufferToBuffer(this.#resolved!, 0, this.#readback!, 0, bytes);
    }
    this.#pending = launches.map(({ d, cost }) => ({ label: d.label, cost }));
  }

  /** After the recorded encoder was submitted: reads its timestamps and adds them up. */
  async collect(): Promise<void> {
    const pending = this.#pending;
    this.#pending = [];
    if (pending.length === 0 || !this.#readback) return;
    const bytes = pending.length * 16;
    await this.#readback.mapAsync(GPUMapMode.READ, 0, bytes);
    const ns = new BigUint64Array(this.#readback.getMappedRange(0, bytes).slice(0));
    this.#readback.unmap();
    pending.forEach(({ label, cost }, i) => {
      const begin = ns[2 * i]!;
      const end = ns[2 * i + 1]!;
      this.#add(label, end > begin ? Number(end - begin) / 1e9 : 0, cost);
    });
  }

  #add(label: string, seconds: number, cost: KernelCost): void {
    let t = this.#totals.get(label);
    if (!t) this.#totals.set(label, t = { calls: 0, seconds: 0, flops: 0, bytes: 0 });
    t.calls++;
    t.seconds += seconds;
    t.flops += cost.flops;
    t.bytes += cost.bytes;
  }

  /** The totals so far, largest GPU time first. */
  report(): KernelProfile {
    const kernels = [...this.#totals].map(([label, t]) => ({ label, ...t }))
      .sort((a, b) => b.seconds - a.seconds);
    const adapter = this.#gpu.description;
    return { method: this.method, adapter, steps: this.#steps, kernels, peak: peakOf(adapter) };
  }

  /** Forgets the totals (for example after warm-up steps). */
  reset(): void {
    this.#totals.clear();
    this.#steps = 0;
  }

  destroy(): void {
    this.#querySet?.destroy();
    this.#resolved?.destroy();
    this.#readback?.destroy();
  }
}

const fixed = (x: number, digits: number) => x.toFixed(digits);

/**
 * The profile as a table: per kernel label its launches, GPU time (total, share,
 * mean per launch), GFLOP/s and GB/s, and for a known card the share of its peaks.
 *
 * @example
 * ```ts
 * import { Engine } from "../engine.ts";
 * import { DEFAULT_SAMPLING } from "../types.ts";
 * await using engine = await Engine.load("models/ernie-tiny", { backend: "webgpu", profile: true });
 * await engine.generate({ id: "a", promptIds: [5, 6, 7], sampling: DEFAULT_SAMPLING });
 * console.error(formatProfile(engine.kernelProfile()!));
 * ```
 */
export function formatProfile(p: KernelProfile): string {
  const total = p.kernels.reduce((s, k) => s + k.seconds, 0);
  const how = {
    "timestamp-query": "GPU timestamps (timestamp-query), one pass per kernel",
    "separate-submits":
      "no timestamp-query on this adapter: each kernel submitted alone and timed on the host " +
      "(includes submit and wake-up latency)",
    "host-clock":
      "the host clock at the barrier that ends each op (includes waiting for the slowest thread)",
  }[p.method];
  const lines = [
    `kernel profile: ${p.adapter}, ${p.steps} steps, ${fixed(total * 1e3, 2)} ms of kernels`,
    `timing: ${how}`,
  ];
  if (p.peak) {
    lines.push(
      `peaks (${p.peak.name}): ${fixed(p.peak.flopsPerSecond / 1e12, 1)} TFLOP/s f32, ` +
        `${fixed(p.peak.bytesPerSecond / 1e12, 2)} TB/s`,
    );
  }
  const head = ["kernel", "calls", "ms", "share", "µs/call", "GFLOP/s", "GB/s"];
  if (p.peak) head.push("%FLOP", "%BW");
  const rows = p.kernels.map((k) => {
    const flops = k.seconds > 0 ? k.flops / k.seconds : 0;
    const bw = k.seconds > 0 ? k.bytes / k.seconds : 0;
    const row = [
      k.label,
      String(k.calls),
      fixed(k.seconds * 1e3, 2),
      `${fixed(total > 0 ? (100 * k.seconds) / total : 0, 1)}%`,
      fixed((k.seconds * 1e6) / Math.max(1, k.calls), 1),
      k.flops > 0 ? fixed(flops / 1e9, 1) : "-",
      k.bytes > 0 ? fixed(bw / 1e9, 1) : "-",
    ];
    if (p.peak) {
      row.push(
        k.flops > 0 ? `${fixed((100 * flops) / p.peak.flopsPerSecond, 1)}%` : "-",
        k.bytes > 0 ? `${fixed((100 * bw) / p.peak.bytesPerSecond, 1)}%` : "-",
      );
    }
    return row;
  });
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) =>
    r.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join("  ");
  lines.push(line(head), ...rows.map(line));
  return lines.join("\n");
}
