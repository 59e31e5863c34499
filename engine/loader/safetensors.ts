/**
 * Reads and writes the safetensors format: an 8-byte little-endian header
 * length, a JSON header (`name → {dtype, shape, data_offsets}`), then raw
 * little-endian tensor bytes. The reader opens `model.safetensors` or a
 * sharded `model.safetensors.index.json` and reads one tensor at a time with
 * seek + read, so a checkpoint never sits whole in memory.
 *
 * @module
 */

import { basename, dirname, join } from "node:path";

/** The safetensors dtypes this engine reads. `U16` holds raw bf16 bits (Paddle exports). */
export type SafetensorsDtype = "BF16" | "F16" | "F32" | "U16";

const BYTES_PER_ELEMENT: Record<SafetensorsDtype, number> = { BF16: 2, F16: 2, F32: 4, U16: 2 };

/** Header facts about one tensor. */
export interface TensorInfo {
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
}

/** One tensor's raw bytes as stored (little-endian). */
export interface RawTensor extends TensorInfo {
  readonly bytes: Uint8Array;
}

/** A tensor to write: name, dtype, shape and its bytes. */
export interface NamedTensor extends RawTensor {
  readonly name: string;
}

interface Entry extends TensorInfo {
  readonly file: string;
  /** Absolute byte range in `file`. */
  readonly start: number;
  readonly end: number;
}

/** Largest header accepted; a bigger length means the file is not safetensors. */
const MAX_HEADER_BYTES = 100 * 1024 * 1024;

function isDtype(s: unknown): s is SafetensorsDtype {
  return typeof s === "string" && s in BYTES_PER_ELEMENT;
}

/** Number of elements of a shape (1 for a scalar). */
export function numel(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

async function readExactly(f: Deno.FsFile, buf: Uint8Array, file: string): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const n = await f.read(buf.subarray(done));
    if (n === null) throw new Error(`Cannot read "${file}": the file ends early (truncated?)`);
    done += n;
  }
}

/** Parses one safetensors file's header into entries. */
async function readHeader(f: Deno.FsFile, file: string): Promise<Map<string, Entry>> {
  const size = (await f.stat()).size;
  const fail = (what: string): never => {
    throw new Error(`Cannot read safetensors file "${file}": ${what}`);
  };
  if (size < 8) fail("the file is shorter than 8 bytes");
  const lenBuf = new Uint8Array(8);
  await readExactly(f, lenBuf, file);
  const headerLen = Number(new DataView(lenBuf.buffer).getBigUint64(0, true));
  if (headerLen > MAX_HEADER_BYTES || 8 + headerLen > size) {
    fail(`the header length ${headerLen} does not fit the file; it is not a safetensors file`);
  }
  const headerBytes = new Uint8Array(headerLen);
  await readExactly(f, headerBytes, file);
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder().decode(headerBytes));
  } catch (e) {
    fail(`the header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof header !== "object" || header === null || Array.isArray(header)) {
    fail("the header is not a JSON object");
  }
  const dataStart = 8 + headerLen;
  const entries = new Map<string, Entry>();
  for (const [name, v] of Object.entries(header as Record<string, unknown>)) {
    if (name === "__metadata__") continue;
    const e = v as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    const shape = e.shape;
    const offs = e.data_offsets;
    if (
      !Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0) ||
      !Array.isArray(offs) || offs.length !== 2 || !offs.every((d) => Number.isInteger(d))
    ) {
      fail(`tensor "${name}" has a malformed header entry ${JSON.stringify(v)}`);
    }
    const dims = shape as number[];
    const [begin, end] = offs as [number, number];
    if (typeof e.dtype !== "string") fail(`tensor "${name}" has no dtype`);
    const dtype = e.dtype as string;
    if (isDtype(dtype) && end - begin !== numel(dims) * BYTES_PER_ELEMENT[dtype]) {
      fail(`tensor "${name}" (${dtype} ${JSON.stringify(dims)}) has ${end - begin} bytes`);
    }
    if (begin < 0 || end < begin || dataStart + end > size) {
      fail(`tensor "${name}" has data_offsets [${begin}, ${end}] outside the file`);
    }
    entries.set(name, {
      dtype: dtype as SafetensorsDtype, // checked when read: other dtypes may sit unused
      shape: Object.freeze([...dims]),
      file,
      start: dataStart + begin,
      end: dataStart + end,
    });
  }
  return entries;
}

/**
 * A safetensors checkpoint (single file or sharded), read one tensor at a time.
 *
 * @example
 * ```ts
 * const ckpt = await SafetensorsCheckpoint.open("models/ernie-tiny");
 * const t = await ckpt.read("model.norm.weight"); // { dtype: "BF16", shape: [64], bytes }
 * ckpt.close();
 * ```
 */
export class SafetensorsCheckpoint {
  /** The last queued read; reads run one after another. */
  private pending: Promise<void> = Promise.resolve();

  private constructor(
    /** Directory (or file) this was opened from, for messages. */
    readonly source: string,
    private readonly files: Map<string, Deno.FsFile>,
    private readonly entries: Map<string, Entry>,
  ) {}

  /**
   * Opens `DIR/model.safetensors.index.json` (sharded) or `DIR/model.safetensors`;
   * `path` may also name a `.safetensors` file directly.
   */
  static async open(path: string): Promise<SafetensorsCheckpoint> {
    const stat = await Deno.stat(path).catch(() => null);
    if (stat === null) throw new Error(`Cannot open checkpoint "${path}": it does not exist`);
    if (stat.isFile) return await SafetensorsCheckpoint.openFiles(path, [path], null);
    const index = join(path, "model.safetensors.index.json");
    let indexText: string | null = null;
    try {
      indexText = await Deno.readTextFile(index);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    if (indexText === null) {
      const single = join(path, "model.safetensors");
      if (!(await Deno.stat(single).catch(() => null))?.isFile) {
        throw new Error(
          `Cannot open checkpoint "${path}": found neither model.safetensors nor model.safetensors.index.json`,
        );
      }
      return await SafetensorsCheckpoint.openFiles(path, [single], null);
    }
    let weightMap: Record<string, unknown>;
    try {
      weightMap = (JSON.parse(indexText) as { weight_map: Record<string, unknown> }).weight_map;
      if (typeof weightMap !== "object" || weightMap === null) throw new Error("no weight_map");
    } catch (e) {
      throw new Error(
        `Cannot open checkpoint "${index}": field "weight_map" is missing or invalid (${
          (e as Error).message
        })`,
      );
    }
    const expect = new Map<string, string>();
    for (const [name, shard] of Object.entries(weightMap)) {
      if (typeof shard !== "string" || shard.includes("/") || shard.includes("\\")) {
        throw new Error(
          `Cannot open checkpoint "${index}": weight_map["${name}"] must be a file name beside it`,
        );
      }
      expect.set(name, join(path, shard));
    }
    const shards = [...new Set(expect.values())];
    return await SafetensorsCheckpoint.openFiles(path, shards, { index, expect });
  }

  private static async openFiles(
    source: string,
    paths: string[],
    sharded: { index: string; expect: Map<string, string> } | null,
  ): Promise<SafetensorsCheckpoint> {
    const files = new Map<string, Deno.FsFile>();
    const entries = new Map<string, Entry>();
    try {
      for (const p of paths) {
        const f = await Deno.open(p, { read: true }).catch((e: Error) => {
          throw new Error(`Cannot open checkpoint shard "${p}": ${e.message}`);
        });
        files.set(p, f);
        for (const [name, entry] of await readHeader(f, p)) {
          if (entries.has(name)) {
            throw new Error(`Cannot open checkpoint "${source}": tensor "${name}" is in two files`);
          }
          entries.set(name, entry);
        }
      }
      if (sharded !== null) {
        for (const [name, file] of sharded.expect) {
          if (entries.get(name)?.file !== file) {
            throw new Error(
              `Cannot open checkpoint "${sharded.index}": weight_map puts "${name}" in ${
                basename(file)
              }, which does not hold it`,
            );
          }
        }
      }
    } catch (e) {
      for (const f of files.values()) f.close();
      throw e;
    }
    return new SafetensorsCheckpoint(source, files, entries);
  }

  /** All tensor names, sorted. */
  names(): string[] {
    return [...this.entries.keys()].sort();
  }

  /** Whether the checkpoint holds `name`. */
  has(name: string): boolean {
    return this.entries.has(name);
  }

  /** Dtype and shape of `name` (throws when absent). */
  info(name: string): TensorInfo {
    const e = this.entry(name);
    return { dtype: e.dtype, shape: e.shape };
  }

  /** Reads one tensor's bytes from disk (a fresh, 8-byte aligned buffer). */
  async read(name: string): Promise<RawTensor> {
    const e = this.entry(name);
    if (!isDtype(e.dtype)) {
      throw new Error(
        `Cannot read tensor "${name}" from "${e.file}": dtype ${e.dtype} is not supported (BF16, F16, F32, U16)`,
      );
    }
    const f = this.files.get(e.file);
    if (f === undefined) throw new Error(`checkpoint "${this.source}" is closed`);
    const bytes = new Uint8Array(e.end - e.start);
    // seek + read on a shared handle: concurrent reads must not interleave.
    const done = this.pending.then(async () => {
      await f.seek(e.start, Deno.SeekMode.Start);
      await readExactly(f, bytes, e.file);
    });
    this.pending = done.catch(() => {});
    await done;
    return { dtype: e.dtype, shape: e.shape, bytes };
  }

  /** Closes all open files. */
  close(): void {
    for (const f of this.files.values()) f.close();
    this.files.clear();
  }

  private entry(name: string): Entry {
    const e = this.entries.get(name);
    if (e === undefined) {
      throw new Error(`Cannot read checkpoint "${this.source}": it has no tensor "${name}"`);
    }
    return e;
  }
}

/** Widens one IEEE half-precision value (as 16 bits) to a number. */
export function f16ToNumber(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24; // zero or subnormal
  if (exp === 0x1f) return frac === 0 ? sign * Infinity : NaN;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** The 16-bit words of a 2-byte tensor (copied when `bytes` is unaligned). */
function u16View(bytes: Uint8Array): Uint16Array {
  const b = bytes.byteOffset % 2 === 0 ? bytes : bytes.slice();
  return new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2);
}

/**
 * Raw bf16 bits of a BF16 or U16 tensor (a view when aligned).
 *
 * @example
 * ```ts ignore
 * const bits = bf16Bits(await ckpt.read("model.embed_tokens.weight")); // Uint16Array
 * ```
 */
export function bf16Bits(t: RawTensor): Uint16Array {
  if (t.dtype !== "BF16" && t.dtype !== "U16") throw new Error(`bf16Bits: dtype is ${t.dtype}`);
  return u16View(t.bytes);
}

/**
 * Widens a tensor to f32: bf16 / U16 by `bits << 16`, f16 exactly (subnormals,
 * infinities), f32 copied. All conversions are lossless.
 *
 * @example
 * ```ts ignore
 * const w = toFloat32(await ckpt.read("model.norm.weight")); // Float32Array [64]
 * ```
 */
export function toFloat32(t: RawTensor): Float32Array {
  const n = numel(t.shape);
  switch (t.dtype) {
    case "BF16":
    case "U16": {
      const src = u16View(t.bytes);
      const out = new Uint32Array(n);
      for (let i = 0; i < n; i++) out[i] = src[i]! << 16;
      return new Float32Array(out.buffer);
    }
    case "F16": {
      const src = u16View(t.bytes);
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = f16ToNumber(src[i]!);
      return out;
    }
    case "F32":
      return new Float32Array(t.bytes.slice().buffer, 0, n);
  }
}

/** Rounds f32 values to bf16 bits (round to nearest even; NaN stays NaN). */
export function f32ToBf16Bits(src: Float32Array): Uint16Array {
  const bits = new Uint32Array(src.buffer, src.byteOffset, src.length);
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    const b = bits[i]!;
    if ((b & 0x7f800000) === 0x7f800000 && (b & 0x7fffff) !== 0) {
      out[i] = (b >>> 16) | 0x40;
    } else {
      out[i] = (b + 0x7fff + ((b >>> 16) & 1)) >>> 16;
    }
  }
  return out;
}

/** What a writer needs up front for one tensor. */
export interface TensorSpec {
  readonly name: string;
  readonly dtype: SafetensorsDtype;
  readonly shape: readonly number[];
}

/**
 * Writes a safetensors file whose data arrives in chunks, in the order of the
 * specs, so a large checkpoint never sits whole in memory.
 *
 * @example
 * ```ts
 * const path = await Deno.makeTempFile({ suffix: ".safetensors" });
 * const w = await SafetensorsWriter.create(path, [{ name: "a", dtype: "F32", shape: [2] }]);
 * await w.append(new Uint8Array(new Float32Array([1, 2]).buffer));
 * await w.close();
 * ```
 */
export class SafetensorsWriter {
  private written = 0;

  private constructor(
    private readonly file: Deno.FsFile,
    private readonly path: string,
    private readonly total: number,
  ) {}

  /** Creates (or truncates) `path` and writes the header. */
  static async create(
    path: string,
    specs: readonly TensorSpec[],
    metadata?: Record<string, string>,
  ): Promise<SafetensorsWriter> {
    const header: Record<string, unknown> = {};
    if (metadata !== undefined) header["__metadata__"] = metadata;
    let offset = 0;
    for (const s of specs) {
      if (s.name in header) throw new Error(`writeSafetensors "${path}": duplicate "${s.name}"`);
      const size = numel(s.shape) * BYTES_PER_ELEMENT[s.dtype];
      header[s.name] = { dtype: s.dtype, shape: s.shape, data_offsets: [offset, offset + size] };
      offset += size;
    }
    let json = new TextEncoder().encode(JSON.stringify(header));
    const padded = Math.ceil(json.length / 8) * 8; // pad with spaces so data is 8-byte aligned
    if (padded !== json.length) {
      const p = new Uint8Array(padded).fill(0x20);
      p.set(json);
      json = p;
    }
    const len = new Uint8Array(8);
    new DataView(len.buffer).setBigUint64(0, BigInt(json.length), true);
    await Deno.mkdir(dirname(path), { recursive: true });
    const file = await Deno.open(path, { write: true, create: true, truncate: true });
    const w = new SafetensorsWriter(file, path, offset);
    await w.writeAll(len);
    await w.writeAll(json);
    return w;
  }

  /** Appends the next bytes of tensor data (any chunking). */
  async append(bytes: Uint8Array): Promise<void> {
    if (this.written + bytes.length > this.total) {
      throw new Error(`writeSafetensors "${this.path}": more data than the header declares`);
    }
    await this.writeAll(bytes);
    this.written += bytes.length;
  }

  /** Closes the file; throws when less data was written than declared. */
  async close(): Promise<void> {
    await this.file.syncData().catch(() => {});
    this.file.close();
    if (this.written !== this.total) {
      throw new Error(
        `writeSafetensors "${this.path}": wrote ${this.written} of ${this.total} data bytes`,
      );
    }
  }

  private async writeAll(bytes: Uint8Array): Promise<void> {
    let done = 0;
    while (done < bytes.length) done += await this.file.write(bytes.subarray(done));
  }
}

/**
 * Writes whole tensors to one safetensors file.
 *
 * @example
 * ```ts
 * await writeSafetensors(await Deno.makeTempFile({ suffix: ".safetensors" }), [
 *   { name: "w", dtype: "F32", shape: [2], bytes: new Uint8Array(8) },
 * ]);
 * ```
 */
export async function writeSafetensors(
  path: string,
  tensors: readonly NamedTensor[],
  metadata?: Record<string, string>,
): Promise<void> {
  for (const t of tensors) {
    if (t.bytes.length !== numel(t.shape) * BYTES_PER_ELEMENT[t.dtype]) {
      throw new Error(`writeSafetensors "${path}": "${t.name}" has the wrong number of bytes`);
    }
  }
  const w = await SafetensorsWriter.create(path, tensors, metadata);
  for (const t of tensors) await w.append(t.bytes);
  await w.close();
}
