/**
 * Joins the outputs of sharded runs (`--shard K/N`) into one output file.
 * Every answer is keyed by its custom_id (answers to lines that had none, or
 * a duplicate one, by their input line number); a key seen twice is an
 * error. With the original input, answers are written in input order and a
 * request without an answer is an error too. Files are streamed: memory holds
 * one small index entry per answer, never the answers themselves.
 *
 * @module
 */
import { join, resolve } from "node:path";
import { openOutput, type OutputSink } from "./writer.ts";
import { describeFsError, openInput, readLines } from "./reader.ts";

/** Options for {@linkcode mergeOutputs}. */
export interface MergeOptions {
  /** The shard outputs (and error files), in any order: local paths or http(s) URLs, gzip or not. */
  readonly inputs: readonly string[];
  /** Where the merged answers go (local path; written through `OUTPUT.partial`). */
  readonly output: string;
  /** Failed answers go here instead of the output. */
  readonly errorFile?: string;
  /** The original batch input: write in its order, and require an answer for each of its lines. */
  readonly order?: string;
  /** Replace an existing output (and error file). */
  readonly overwrite?: boolean;
}

/** What {@linkcode mergeOutputs} wrote. */
export interface MergeSummary {
  /** Lines written, output and error file together. */
  readonly answers: number;
  /** Answers with status 200. */
  readonly succeeded: number;
  /** Error lines. */
  readonly failed: number;
}

/** The shard outputs do not add up to one batch (a duplicate, a missing answer, a torn line). */
export class MergeError extends Error {
  /** `message` says what does not add up and where. */
  constructor(message: string) {
    super(message);
    this.name = "MergeError";
  }
}

/** Where one answer lies. */
interface Entry {
  readonly file: number;
  readonly offset: number;
  readonly length: number;
  readonly lineNo: number;
  readonly ok: boolean;
}

const decoder = new TextDecoder();

/** Streams a file's non-blank lines with their byte offsets (a trailing CR stays in `bytes`). */
async function* _linesWithOffsets(
  path: string,
  name: string,
): AsyncGenerator<{ lineNo: number; offset: number; bytes: Uint8Array }> {
  const file = await Deno.open(path, { read: true }).catch((e) => {
    throw new MergeError(`Cannot read "${name}": ${describeFsError(e)}`);
  });
  let carry = new Uint8Array(0);
  let carryOffset = 0;
  let lineNo = 0;
  const emit = function* (bytes: Uint8Array, offset: number) {
    lineNo++;
    if (bytes.some((b) => b !== 0x20 && b !== 0x09 && b !== 0x0d)) yield { lineNo, offset, bytes };
  };
  for await (const chunk of file.readable) {
    const data = carry.byteLength === 0 ? chunk : _concat(carry, chunk);
    let start = 0;
    for (let nl = data.indexOf(0x0a); nl !== -1; nl = data.indexOf(0x0a, start)) {
      yield* emit(data.subarray(start, nl), carryOffset + start);
      start = nl + 1;
    }
    carryOffset += start;
    carry = data.slice(start);
  }
  if (carry.byteLength > 0) yield* emit(carry, carryOffset);
}

function _concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.byteLength + b.byteLength);
  out.set(a);
  out.set(b, a.byteLength);
  return out;
}

/** The key of an output line: its custom_id, or `line N` for an invalid input line. */
function _keyOf(text: string, where: string): { key: string; ok: boolean } {
  let value: {
    custom_id?: unknown;
    response?: { status_code?: unknown; body?: { error?: { message?: unknown; code?: unknown } } };
    error?: unknown;
  };
  try {
    value = JSON.parse(text);
  } catch {
    throw new MergeError(
      `${where} is not a complete JSON line (a killed run? finish it with --resume first)`,
    );
  }
  const ok = value?.response?.status_code === 200;
  const error = value?.response?.body?.error;
  const lineNo = typeof error?.message === "string"
    ? /^line (\d+):/.exec(error.message)?.[1]
    : null;
  // Answers to invalid lines have no usable custom_id: the input line number names them.
  if (typeof value?.custom_id !== "string" || error?.code === "duplicate_custom_id") {
    if (lineNo) return { key: `line ${lineNo}`, ok };
    throw new MergeError(`${where} has neither a custom_id nor an input line number`);
  }
  return { key: value.custom_id, ok };
}

/** The key the answer to an input line has (see {@linkcode _keyOf}). */
function _inputKey(text: string | undefined, lineNo: number, seen: Set<string>): string {
  let id: unknown;
  try {
    id = text === undefined ? undefined : (JSON.parse(text) as { custom_id?: unknown })?.custom_id;
  } catch { /* an invalid line: keyed by its number */ }
  if (typeof id !== "string" || seen.has(id)) return `line ${lineNo}`;
  seen.add(id);
  return id;
}

const _list = (items: readonly string[]) =>
  items.slice(0, 5).map((k) => `"${k}"`).join(", ") +
  (items.length > 5 ? ` and ${items.length - 5} more` : "");

/**
 * Merges shard outputs into one output. Throws {@linkcode MergeError} (and
 * writes nothing) when a custom_id appears twice, or, given the original
 * input in `order`, when one of its requests has no answer or an answer
 * belongs to no request.
 *
 * @example
 * ```ts ignore
 * await mergeOutputs({
 *   inputs: ["out-0.jsonl", "out-1.jsonl", "out-2.jsonl"],
 *   output: "out.jsonl",
 *   order: "requests.jsonl",
 * });
 * ```
 */
export async function mergeOutputs(options: MergeOptions): Promise<MergeSummary> {
  const files = options.inputs;
  for (const target of [options.output, options.errorFile]) {
    if (target !== undefined && files.some((f) => resolve(f) === resolve(target))) {
      throw new MergeError(`Refusing to merge into "${target}", which is one of the shard outputs`);
    }
  }
  const copies = await _localCopies(files);
  try {
    return await _merge(options, copies.paths);
  } finally {
    await copies.remove();
  }
}

/** Shard outputs at URLs, or gzipped, are copied (decompressed) to temp files to be indexed. */
async function _localCopies(
  files: readonly string[],
): Promise<{ paths: string[]; remove(): Promise<void> }> {
  let dir: string | null = null;
  const paths: string[] = [];
  try {
    for (const [i, file] of files.entries()) {
      if (!/^https?:\/\//i.test(file) && !(await _isGzip(file))) {
        paths.push(file);
        continue;
      }
      dir ??= await Deno.makeTempDir({ prefix: "batchwright-merge-" });
      const copy = join(dir, `${i}.jsonl`);
      await (await openInput(file)).pipeTo((await Deno.create(copy)).writable);
      paths.push(copy);
    }
  } catch (e) {
    if (dir !== null) await Deno.remove(dir, { recursive: true });
    throw e;
  }
  return { paths, remove: async () => void (dir && await Deno.remove(dir, { recursive: true })) };
}

async function _isGzip(path: string): Promise<boolean> {
  const file = await Deno.open(path, { read: true }).catch(() => null);
  if (file === null) return false; // reported when indexed
  try {
    const head = new Uint8Array(2);
    return (await file.read(head)) === 2 && head[0] === 0x1f && head[1] === 0x8b;
  } finally {
    file.close();
  }
}

/** Indexes `paths` (the shard outputs, named in messages as `options.inputs`) and writes the merge. */
async function _merge(options: MergeOptions, paths: readonly string[]): Promise<MergeSummary> {
  const index = new Map<string, Entry>();
  const files = options.inputs;
  for (let file = 0; file < files.length; file++) {
    for await (const { lineNo, offset, bytes } of _linesWithOffsets(paths[file]!, files[file]!)) {
      const where = `"${files[file]}" line ${lineNo}`;
      const { key, ok } = _keyOf(decoder.decode(bytes), where);
      const earlier = index.get(key);
      if (earlier !== undefined) {
        throw new MergeError(
          `${key.startsWith("line ") ? `the answer to input ${key}` : `custom_id "${key}"`} ` +
            `appears twice: in "${files[earlier.file]}" line ${earlier.lineNo} and ${where} ` +
            `(was a shard merged twice, or run with a different --shard N?)`,
        );
      }
      index.set(key, { file, offset, length: bytes.byteLength, lineNo, ok });
    }
  }
  const sinks = await _openSinks(options);
  const handles = await Promise.all(paths.map((f) => Deno.open(f, { read: true })));
  try {
    const summary = { answers: 0, succeeded: 0, failed: 0 };
    const copy = async (entry: Entry) => {
      const bytes = new Uint8Array(entry.length);
      const handle = handles[entry.file]!;
      await handle.seek(entry.offset, Deno.SeekMode.Start);
      for (let at = 0; at < bytes.byteLength;) {
        const n = await handle.read(bytes.subarray(at));
        if (n === null) throw new MergeError(`"${files[entry.file]}" changed while merging`);
        at += n;
      }
      const line = decoder.decode(bytes).replace(/\r$/, "");
      await (entry.ok || sinks.errSink === null ? sinks.sink : sinks.errSink).write(line);
      summary.answers++;
      summary[entry.ok ? "succeeded" : "failed"]++;
    };
    if (options.order === undefined) {
      const byPlace = [...index.values()].sort((a, b) => a.file - b.file || a.offset - b.offset);
      for (const entry of byPlace) await copy(entry);
    } else {
      const missing: string[] = []; // the first few, for the message
      let numMissing = 0;
      const seen = new Set<string>();
      for await (const line of readLines(options.order)) {
        const key = _inputKey(line.text, line.lineNo, seen);
        const entry = index.get(key);
        if (entry === undefined) {
          if (numMissing++ < 5) missing.push(key);
          continue;
        }
        index.delete(key);
        if (numMissing === 0) await copy(entry);
      }
      if (numMissing > 0) {
        const more = numMissing > missing.length ? ` and ${numMissing - missing.length} more` : "";
        throw new MergeError(
          `${numMissing} request(s) of "${options.order}" have no answer in the shard ` +
            `outputs: ${
              _list(missing)
            }${more} (a shard missing, or not finished: rerun it with --resume)`,
        );
      }
      if (index.size > 0) {
        throw new MergeError(
          `${index.size} answer(s) belong to no request of "${options.order}": ` +
            `${_list([...index.keys()])} (outputs of another batch?)`,
        );
      }
    }
    await sinks.sink.commit();
    await sinks.errSink?.commit();
    return summary;
  } catch (e) {
    for (const s of [sinks.sink, sinks.errSink]) {
      const partial = await s?.keep().catch(() => null);
      if (partial) await Deno.remove(partial).catch(() => {});
    }
    throw e;
  } finally {
    for (const h of handles) h.close();
  }
}

async function _openSinks(
  options: MergeOptions,
): Promise<{ sink: OutputSink; errSink: OutputSink | null }> {
  const sink = await openOutput({ output: options.output, overwrite: options.overwrite });
  if (options.errorFile === undefined) return { sink, errSink: null };
  try {
    return {
      sink,
      errSink: await openOutput({ output: options.errorFile, overwrite: options.overwrite }),
    };
  } catch (e) {
    const partial = await sink.keep();
    if (partial) await Deno.remove(partial);
    throw e;
  }
}
