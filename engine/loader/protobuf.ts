/**
 * A minimal protobuf wire-format reader: enough to walk a message field by
 * field, read scalars, strings and embedded messages, and skip whatever a
 * caller does not know (including deprecated groups).
 *
 * @module
 */

/** Protobuf wire types. */
export const WireType = { VARINT: 0, I64: 1, LEN: 2, SGROUP: 3, EGROUP: 4, I32: 5 } as const;
const { VARINT, I64, LEN, SGROUP, EGROUP, I32 } = WireType;

/** One field key of a message: its number and wire type (the value follows). */
export interface Field {
  readonly number: number;
  readonly wireType: number;
}

/**
 * Reads protobuf wire format from `bytes[start, end)`. Every read is
 * bounds-checked; a truncated or malformed message throws a
 * {@linkcode ProtoError} carrying the byte offset.
 *
 * @example
 * ```ts
 * import { ProtoReader } from "./protobuf.ts";
 * const r = new ProtoReader(new Uint8Array([0x08, 0x96, 0x01])); // field 1 = 150
 * const f = r.next();
 * f?.number; // 1
 * r.varint(); // 150
 * ```
 */
export class ProtoReader {
  #pos: number;
  readonly #end: number;
  readonly #bytes: Uint8Array;
  readonly #view: DataView;

  constructor(bytes: Uint8Array, start = 0, end = bytes.length) {
    this.#bytes = bytes;
    this.#view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.#pos = start;
    this.#end = end;
  }

  /** The next field's key, or null at the end of the message. */
  next(): Field | null {
    if (this.#pos >= this.#end) return null;
    const key = this.varint();
    const number = Math.floor(key / 8);
    if (number === 0) throw new ProtoError("field number 0", this.#pos);
    return { number, wireType: key % 8 };
  }

  /** An unsigned varint (exact up to 2^53). */
  varint(): number {
    return this.#varint()[0];
  }

  /** A varint read as `int32`/`enum` (negative values are 10-byte varints). */
  int32(): number {
    return this.#varint()[1];
  }

  /** A varint read as `bool`. */
  bool(): boolean {
    return this.varint() !== 0;
  }

  /** A little-endian IEEE `float` (wire type 5). */
  float32(): number {
    const at = this.#take(4);
    return this.#view.getFloat32(at, true);
  }

  /** A length-delimited value's bytes (a view, not a copy). */
  bytes(): Uint8Array {
    const length = this.varint();
    const at = this.#take(length);
    return this.#bytes.subarray(at, at + length);
  }

  /** A length-delimited UTF-8 string. */
  string(): string {
    const at = this.#pos;
    try {
      return new TextDecoder("utf-8", { fatal: true }).decode(this.bytes());
    } catch (e) {
      if (e instanceof ProtoError) throw e;
      throw new ProtoError("a string is not valid UTF-8", at);
    }
  }

  /** A reader over an embedded message (wire type 2). */
  message(): ProtoReader {
    const length = this.varint();
    const at = this.#take(length);
    return new ProtoReader(this.#bytes, at, at + length);
  }

  /** Skips the value of a field this decoder does not read. */
  skip(field: Field): void {
    switch (field.wireType) {
      case VARINT:
        this.varint();
        return;
      case I64:
        this.#take(8);
        return;
      case LEN:
        this.#take(this.varint());
        return;
      case I32:
        this.#take(4);
        return;
      case SGROUP: {
        // A deprecated group: skip fields up to its matching end marker.
        for (let f = this.next(); f !== null; f = this.next()) {
          if (f.wireType === EGROUP) {
            if (f.number !== field.number) break;
            return;
          }
          this.skip(f);
        }
        throw new ProtoError(`group ${field.number} is not closed`, this.#pos);
      }
      default:
        throw new ProtoError(`unknown wire type ${field.wireType}`, this.#pos);
    }
  }

  /** [value as a non-negative number, low 32 bits as int32]. */
  #varint(): [number, number] {
    let value = 0, low = 0;
    for (let shift = 0; shift < 70; shift += 7) {
      const at = this.#take(1);
      const b = this.#bytes[at] as number;
      value += (b & 0x7f) * 2 ** shift;
      if (shift < 32) low |= (b & 0x7f) << shift;
      if ((b & 0x80) === 0) return [value, low];
    }
    throw new ProtoError("a varint is longer than 10 bytes", this.#pos);
  }

  /** Advances over `n` bytes and returns where they start. */
  #take(n: number): number {
    const at = this.#pos;
    if (at + n > this.#end) throw new ProtoError("the message is truncated", at);
    this.#pos = at + n;
    return at;
  }
}

/** Malformed protobuf data (`offset` is where reading failed). */
export class ProtoError extends Error {
  constructor(reason: string, readonly offset: number) {
    super(`${reason} (at byte ${offset})`);
    this.name = "ProtoError";
  }
}
