/**
 * A GGUF (version 3) writer: typed metadata, then tensor infos, then each
 * tensor's bytes at 32-byte aligned offsets, streamed one tensor at a time.
 * Layout as in ggml's docs/gguf.md; `ernie_gguf.ts` uses it to hand our
 * models to llama.cpp for the benchmark.
 *
 * @module
 */

/** GGUF metadata value types (gguf.md `gguf_metadata_value_type`). */
const ValueType = {
  U32: 4,
  I32: 5,
  F32: 6,
  BOOL: 7,
  STRING: 8,
  ARRAY: 9,
} as const;

/** ggml tensor types this writer emits, with their ids and bytes per element. */
export const GGML_TYPES = {
  F32: { id: 0, bytes: 4 },
  F16: { id: 1, bytes: 2 },
  BF16: { id: 30, bytes: 2 },
} as const;

/** A ggml tensor type name. */
export type GgmlType = keyof typeof GGML_TYPES;

/** One metadata value, tagged with its GGUF type. */
export type GgufValue =
  | { readonly type: "u32"; readonly value: number }
  | { readonly type: "i32"; readonly value: number }
  | { readonly type: "f32"; readonly value: number }
  | { readonly type: "bool"; readonly value: boolean }
  | { readonly type: "string"; readonly value: string }
  | { readonly type: "string[]"; readonly value: readonly string[] }
  | { readonly type: "f32[]"; readonly value: ArrayLike<number> }
  | { readonly type: "i32[]"; readonly value: ArrayLike<number> };

/** A tensor to write. */
export interface GgufTensor {
  readonly name: string;
  readonly type: GgmlType;
  /** ggml order: ne[0] is the contiguous dimension (a torch [out, in] weight is [in, out]). */
  readonly shape: readonly number[];
  /** The tensor's bytes, little-endian, exactly numel × bytes per element; read when written. */
  readonly data: () => Promise<Uint8Array>;
}

/** Alignment of the data section and of every tensor in it (gguf.md default). */
export const GGUF_ALIGNMENT = 32;

const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
const GGUF_VERSION = 3;

/** A growable little-endian byte buffer. */
class ByteSink {
  #buf = new Uint8Array(1 << 16);
  #view = new DataView(this.#buf.buffer);
  length = 0;
  readonly #enc = new TextEncoder();

  #reserve(n: number): number {
    if (this.length + n > this.#buf.length) {
      const next = new Uint8Array(Math.max(this.#buf.length * 2, this.length + n));
      next.set(this.#buf.subarray(0, this.length));
      this.#buf = next;
      this.#view = new DataView(next.buffer);
    }
    const at = this.length;
    this.length += n;
    return at;
  }
  // Each reserves first: growing replaces #view, so it must be read after.
  u32(v: number) {
    const at = this.#reserve(4);
    this.#view.setUint32(at, v, true);
  }
  i32(v: number) {
    const at = this.#reserve(4);
    this.#view.setInt32(at, v, true);
  }
  f32(v: number) {
    const at = this.#reserve(4);
    this.#view.setFloat32(at, v, true);
  }
  u64(v: number) {
    const at = this.#reserve(8);
    this.#view.setBigUint64(at, BigInt(v), true);
  }
  u8(v: number) {
    const at = this.#reserve(1);
    this.#view.setUint8(at, v);
  }
  /** gguf_string_t: u64 byte length, then UTF-8 bytes without a terminator. */
  string(s: string) {
    const bytes = this.#enc.encode(s);
    this.u64(bytes.length);
    const at = this.#reserve(bytes.length);
    this.#buf.set(bytes, at);
  }
  pad(alignment: number) {
    this.#reserve((alignment - (this.length % alignment)) % alignment); // zero-filled
  }
  bytes(): Uint8Array {
    return this.#buf.subarray(0, this.length);
  }
}

function writeValue(sink: ByteSink, v: GgufValue): void {
  const array = (elementType: number, n: number, each: (i: number) => void) => {
    sink.u32(ValueType.ARRAY);
    sink.u32(elementType);
    sink.u64(n);
    for (let i = 0; i < n; i++) each(i);
  };
  switch (v.type) {
    case "u32":
      sink.u32(ValueType.U32);
      return sink.u32(v.value);
    case "i32":
      sink.u32(ValueType.I32);
      return sink.i32(v.value);
    case "f32":
      sink.u32(ValueType.F32);
      return sink.f32(v.value);
    case "bool":
      sink.u32(ValueType.BOOL);
      return sink.u8(v.value ? 1 : 0);
    case "string":
      sink.u32(ValueType.STRING);
      return sink.string(v.value);
    case "string[]":
      return array(ValueType.STRING, v.value.length, (i) => sink.string(v.value[i]!));
    case "f32[]":
      return array(ValueType.F32, v.value.length, (i) => sink.f32(v.value[i]!));
    case "i32[]":
      return array(ValueType.I32, v.value.length, (i) => sink.i32(v.value[i]!));
  }
}

/** Bytes of a tensor of this type and shape. */
export function tensorBytes(type: GgmlType, shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1) * GGML_TYPES[type].bytes;
}

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  for (let off = 0; off < bytes.length;) off += await file.write(bytes.subarray(off));
}

/**
 * Writes a GGUF file: the header (metadata and tensor infos) first, then the
 * tensors in the given order, each read from its `data()` only when written.
 *
 * @example
 * ```ts
 * const path = await Deno.makeTempFile({ suffix: ".gguf" });
 * await writeGguf(path, { "general.architecture": { type: "string", value: "llama" } }, [
 *   { name: "output_norm.weight", type: "F32", shape: [4], data: async () => new Uint8Array(16) },
 * ]);
 * ```
 */
export async function writeGguf(
  path: string,
  metadata: Readonly<Record<string, GgufValue>>,
  tensors: readonly GgufTensor[],
): Promise<void> {
  const head = new ByteSink();
  head.u32(GGUF_MAGIC);
  head.u32(GGUF_VERSION);
  head.u64(tensors.length);
  head.u64(Object.keys(metadata).length);
  for (const [key, value] of Object.entries(metadata)) {
    head.string(key);
    writeValue(head, value);
  }
  let offset = 0; // relative to the start of the data section
  for (const t of tensors) {
    head.string(t.name);
    head.u32(t.shape.length);
    for (const d of t.shape) head.u64(d);
    head.u32(GGML_TYPES[t.type].id);
    head.u64(offset);
    offset += tensorBytes(t.type, t.shape);
    offset += (GGUF_ALIGNMENT - (offset % GGUF_ALIGNMENT)) % GGUF_ALIGNMENT;
  }
  head.pad(GGUF_ALIGNMENT);

  const tmp = `${path}.partial`;
  const file = await Deno.open(tmp, { write: true, create: true, truncate: true });
  try {
    await writeAll(file, head.bytes());
    for (const t of tensors) {
      const bytes = await t.data();
      const want = tensorBytes(t.type, t.shape);
      if (bytes.length !== want) {
        throw new Error(
          `Cannot write GGUF "${path}": tensor "${t.name}" has ${bytes.length} bytes, its ${t.type} shape [${t.shape}] needs ${want}`,
        );
      }
      await writeAll(file, bytes);
      const pad = (GGUF_ALIGNMENT - (bytes.length % GGUF_ALIGNMENT)) % GGUF_ALIGNMENT;
      if (pad > 0) await writeAll(file, new Uint8Array(pad));
    }
  } finally {
    file.close();
  }
  await Deno.rename(tmp, path);
}
