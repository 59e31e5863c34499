/**
 * Input: a local path, an http(s) URL or `-` (stdin) → numbered lines, as a
 * stream. Gzip is detected by its magic bytes (which covers `.gz` names and
 * servers that send `application/gzip`; `fetch` itself undoes a
 * `Content-Encoding: gzip`). Invalid UTF-8 and over-long lines become error
 * lines; the whole file is never held in memory.
 *
 * @module
 */

/** One non-blank input line, or the reason it could not be read. */
export type InputLine =
  | { readonly lineNo: number; readonly text: string; readonly error?: undefined }
  | { readonly lineNo: number; readonly text?: undefined; readonly error: string };

/** Options for {@linkcode readLines} and {@linkcode openInput}. */
export interface ReadLinesOptions {
  /** The stream read for input `-` (default: `Deno.stdin.readable`). */
  readonly stdin?: ReadableStream<Uint8Array>;
  /** Lines longer than this many bytes become error lines (default 16 MiB). */
  readonly maxLineBytes?: number;
  /** For URL input: give up when no byte arrived for this long (default 60 s). */
  readonly idleTimeoutMs?: number;
  /** Stops reading. */
  readonly signal?: AbortSignal;
}

/**
 * The input could not be read at all (missing file, HTTP error, dropped connection, ...).
 *
 * @example
 * ```ts
 * try {
 *   for await (const _ of readLines("missing.jsonl"));
 * } catch (e) {
 *   if (e instanceof InputError) console.error(e.message); // Cannot read input "missing.jsonl": ...
 * }
 * ```
 */
export class InputError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "InputError";
  }
}

/** Default maximum line length: 16 MiB. */
export const DEFAULT_MAX_LINE_BYTES = 16 * 1024 * 1024;

const isUrl = (input: string) => /^https?:\/\//i.test(input);

/**
 * Opens the input as a byte stream, already decompressed when it is gzip.
 *
 * @example
 * ```ts ignore
 * const bytes = await openInput("requests.jsonl.gz");
 * for await (const chunk of bytes) console.log(chunk.byteLength);
 * ```
 */
export async function openInput(
  input: string,
  options: ReadLinesOptions = {},
): Promise<ReadableStream<Uint8Array>> {
  let raw: ReadableStream<Uint8Array>;
  if (input === "-") {
    raw = options.stdin ?? Deno.stdin.readable;
  } else if (isUrl(input)) {
    raw = await _openUrl(input, options);
  } else {
    try {
      raw = (await Deno.open(input, { read: true })).readable;
    } catch (e) {
      throw new InputError(`Cannot read input "${input}": ${describeFsError(e)}`, { cause: e });
    }
  }
  return await _decompressIfGzip(raw);
}

async function _openUrl(
  url: string,
  options: ReadLinesOptions,
): Promise<ReadableStream<Uint8Array>> {
  const idleMs = options.idleTimeoutMs ?? 60_000;
  const controller = new AbortController();
  const onAbort = () => controller.abort(options.signal?.reason);
  options.signal?.addEventListener("abort", onAbort, { once: true });
  let timer = setTimeout(() => controller.abort(new Error("timed out")), idleMs);
  let response: Response;
  try {
    response = await fetch(url, { signal: controller.signal });
  } catch (e) {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", onAbort);
    const why = controller.signal.aborted
      ? `no response within ${idleMs} ms`
      : (e as Error).message;
    throw new InputError(`Cannot read input "${url}": ${why}`, { cause: e });
  }
  if (!response.ok || response.body === null) {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", onAbort);
    await response.body?.cancel();
    throw new InputError(
      `Cannot read input "${url}": HTTP ${response.status} ${response.statusText}`.trimEnd(),
    );
  }
  const reader = response.body.getReader();
  const done = () => {
    clearTimeout(timer);
    options.signal?.removeEventListener("abort", onAbort);
  };
  // Re-arm the idle timer on every chunk, so a server that hangs mid-body is noticed.
  return new ReadableStream<Uint8Array>({
    async pull(out) {
      clearTimeout(timer);
      timer = setTimeout(() => controller.abort(new Error("timed out")), idleMs);
      try {
        const { done: end, value } = await reader.read();
        if (end) {
          done();
          out.close();
        } else out.enqueue(value);
      } catch (e) {
        done();
        const why = controller.signal.aborted && !options.signal?.aborted
          ? `no data for ${idleMs} ms`
          : `connection lost (${(e as Error).message})`;
        out.error(new InputError(`Cannot read input "${url}": ${why}`, { cause: e }));
      }
    },
    async cancel(reason) {
      done();
      await reader.cancel(reason);
    },
  });
}

/** Peeks at the first two bytes; pipes through a gzip decompressor when they are 1f 8b. */
async function _decompressIfGzip(
  raw: ReadableStream<Uint8Array>,
): Promise<ReadableStream<Uint8Array>> {
  const reader = raw.getReader();
  const head: Uint8Array[] = [];
  let headLen = 0;
  let ended = false;
  while (headLen < 2) {
    const { done, value } = await reader.read();
    if (done) {
      ended = true;
      break;
    }
    head.push(value);
    headLen += value.byteLength;
  }
  const first = _concat(head, headLen);
  const stream = new ReadableStream<Uint8Array>({
    start(out) {
      if (first.byteLength > 0) out.enqueue(first);
      if (ended) out.close();
    },
    async pull(out) {
      const { done, value } = await reader.read();
      if (done) out.close();
      else out.enqueue(value);
    },
    cancel: (reason) => reader.cancel(reason),
  });
  if (first[0] === 0x1f && first[1] === 0x8b) {
    return stream.pipeThrough(
      new DecompressionStream("gzip") as TransformStream<Uint8Array, Uint8Array>,
    );
  }
  return stream;
}

function _concat(parts: readonly Uint8Array[], length: number): Uint8Array {
  if (parts.length === 1) return parts[0]!;
  const out = new Uint8Array(length);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.byteLength;
  }
  return out;
}

const _isBlank = (bytes: Uint8Array) =>
  bytes.every((b) => b === 0x20 || b === 0x09 || b === 0x0d || b === 0x0a);

/**
 * Reads the input as numbered lines (1-based; blank lines are skipped but
 * counted). A line with invalid UTF-8 or longer than `maxLineBytes` comes back
 * with `error` set and reading goes on. Throws {@linkcode InputError} when the
 * input itself fails (missing file, HTTP error, dropped connection, corrupt gzip).
 *
 * @example
 * ```ts ignore
 * for await (const line of readLines("requests.jsonl")) {
 *   if (line.error !== undefined) console.error(line.error);
 *   else console.log(line.lineNo, line.text.length);
 * }
 * ```
 */
export async function* readLines(
  input: string,
  options: ReadLinesOptions = {},
): AsyncGenerator<InputLine> {
  const maxBytes = options.maxLineBytes ?? DEFAULT_MAX_LINE_BYTES;
  const decoder = new TextDecoder("utf-8", { fatal: true });
  const bytes = await openInput(input, options);
  const reader = bytes.getReader();
  let parts: Uint8Array[] = [];
  let length = 0;
  let tooLong = false;
  let lineNo = 0;

  const append = (piece: Uint8Array) => {
    if (tooLong) return;
    if (length + piece.byteLength > maxBytes) {
      tooLong = true;
      parts = [];
      length = 0;
    } else if (piece.byteLength > 0) {
      parts.push(piece);
      length += piece.byteLength;
    }
  };
  const finish = (): InputLine | null => {
    lineNo++;
    const overLimit = tooLong;
    const joined = _concat(parts, length);
    const line = joined.at(-1) === 0x0d ? joined.subarray(0, -1) : joined;
    parts = [];
    length = 0;
    tooLong = false;
    if (overLimit) {
      return { lineNo, error: `line ${lineNo}: longer than the maximum of ${maxBytes} bytes` };
    }
    if (_isBlank(line)) return null;
    try {
      return { lineNo, text: decoder.decode(line) };
    } catch {
      return { lineNo, error: `line ${lineNo}: invalid UTF-8` };
    }
  };

  try {
    while (true) {
      if (options.signal?.aborted) return;
      let chunk: ReadableStreamReadResult<Uint8Array>;
      try {
        chunk = await reader.read();
      } catch (e) {
        if (e instanceof InputError) throw e;
        throw new InputError(
          `Cannot read input "${input}" after line ${lineNo}: ${(e as Error).message}`,
          { cause: e },
        );
      }
      if (chunk.done) break;
      const data = chunk.value;
      let start = 0;
      while (true) {
        const nl = data.indexOf(0x0a, start);
        if (nl === -1) {
          // Copy: the tail outlives this chunk and some sources reuse buffers.
          append(data.slice(start));
          break;
        }
        append(data.subarray(start, nl));
        const line = finish();
        if (line !== null) yield line;
        start = nl + 1;
      }
    }
    if (length > 0 || tooLong) {
      const line = finish();
      if (line !== null) yield line;
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
}

/**
 * Counts the non-blank lines of a local, uncompressed file (for a progress
 * total), streaming it; undefined for stdin, URLs and gzip. With `keep`, only
 * the lines whose 0-based line index it accepts (a shard's lines).
 *
 * @example
 * ```ts
 * const total = await countLocalLines("requests.jsonl"); // e.g. 50000
 * const shard1of3 = await countLocalLines("requests.jsonl", (i) => i % 3 === 1);
 * ```
 */
export async function countLocalLines(
  input: string,
  keep: (lineIndex: number) => boolean = () => true,
): Promise<number | undefined> {
  if (input === "-" || isUrl(input)) return undefined;
  let file: Deno.FsFile;
  try {
    file = await Deno.open(input, { read: true });
  } catch {
    return undefined;
  }
  let count = 0;
  let lineIndex = 0;
  let lineHasText = false;
  let first = true;
  for await (const chunk of file.readable) {
    if (first && chunk[0] === 0x1f && chunk[1] === 0x8b) return undefined; // closes the file
    first = false;
    let start = 0;
    while (start < chunk.byteLength) {
      const nl = chunk.indexOf(0x0a, start);
      const end = nl === -1 ? chunk.byteLength : nl;
      if (!lineHasText && end > start && !_isBlank(chunk.subarray(start, end))) lineHasText = true;
      if (nl === -1) break;
      if (lineHasText && keep(lineIndex)) count++;
      lineIndex++;
      lineHasText = false;
      start = nl + 1;
    }
  }
  return lineHasText && keep(lineIndex) ? count + 1 : count;
}

/**
 * Why a file-system call failed, in words (no `os error 2`).
 *
 * @example
 * ```ts
 * await Deno.stat("nope").catch((e) => describeFsError(e)); // "it does not exist"
 * ```
 */
export function describeFsError(e: unknown): string {
  if (e instanceof Deno.errors.NotFound) return "it does not exist";
  if (e instanceof Deno.errors.PermissionDenied) return "permission denied";
  if (e instanceof Deno.errors.IsADirectory) return "it is a directory";
  if (e instanceof Deno.errors.NotADirectory) return "a part of the path is not a folder";
  if (e instanceof Deno.errors.AlreadyExists) return "it already exists";
  // Deno's messages end in "(os error N): op 'path'"; keep only the words.
  return (e as Error).message.replace(/\s*\(os error \d+\).*$/s, "");
}

/** Fails unless a local input file exists and can be opened for reading. */
export async function checkInput(input: string): Promise<void> {
  if (input === "-" || isUrl(input)) return;
  const fail = (why: string) =>
    new InputError(`Cannot read input "${input}": ${why} (check the --input-file path)`);
  let info: Deno.FileInfo;
  try {
    info = await Deno.stat(input);
  } catch (e) {
    throw fail(describeFsError(e));
  }
  if (info.isDirectory) throw fail("it is a directory, not a JSONL file");
  try {
    (await Deno.open(input, { read: true })).close();
  } catch (e) {
    throw fail(describeFsError(e));
  }
}
