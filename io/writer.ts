/**
 * Output: lines → a local file (through `OUTPUT.partial`, renamed into place
 * at the end), an http(s) URL (the same local file, uploaded with PUT and
 * retries at the end) or `-` (stdout). Lines are written as they come, a small
 * group per write, so a killed run leaves a valid JSONL prefix that
 * {@linkcode openOutput} with `resume` folds back in.
 *
 * @module
 */
import { basename, dirname, join, resolve } from "node:path";
import { successfulCustomId } from "./batch_format.ts";
import { describeFsError, readLines } from "./reader.ts";

/** Retry policy for uploading the output to a URL. */
export interface UploadOptions {
  /** Tries in all (default 5). */
  readonly attempts?: number;
  /** First backoff delay; doubles each try (default 500 ms). */
  readonly baseDelayMs?: number;
  /** Longest wait between tries, Retry-After included (default 30 s). */
  readonly maxDelayMs?: number;
  /** One try's time limit (default 10 min). */
  readonly timeoutMs?: number;
}

/** Options for {@linkcode openOutput}. */
export interface OutputOptions {
  /** A local path, an http(s) URL or `-` for stdout. */
  readonly output: string;
  /** Where the partial file waits (default: beside the output; a fresh temp dir for URLs). */
  readonly outputTmpDir?: string;
  /** Replace an existing output file. */
  readonly overwrite?: boolean;
  /** Keep the successful answers of an earlier (possibly killed) run. */
  readonly resume?: boolean;
  /** The input, so that it is never overwritten. */
  readonly input?: string;
  /** The stream written for output `-` (default: `Deno.stdout.writable`; never closed). */
  readonly stdout?: WritableStream<Uint8Array>;
  readonly upload?: UploadOptions;
}

/** Where the lines went once the sink is committed. */
export interface CommitResult {
  /** The final path or URL; for a failed upload, the local file that was kept. */
  readonly path: string;
  /** Set when the output could not be put in place (e.g. the upload failed). */
  readonly error?: string;
}

/** An open output. */
export interface OutputSink {
  /** The local file being written (`OUTPUT.partial`), or null for stdout. */
  readonly partialPath: string | null;
  /** custom_ids already answered successfully by an earlier run (only with `resume`). */
  readonly answered: ReadonlySet<string>;
  /** Appends one line (no newline in it); resolves once it reached the file. */
  write(line: string): Promise<void>;
  /** Flushes, syncs and puts the output in place (rename or upload). */
  commit(): Promise<CommitResult>;
  /** Flushes and closes without putting the output in place; returns the partial path. */
  keep(): Promise<string | null>;
}

/**
 * The output cannot be opened as asked (exists, would overwrite the input, ...).
 *
 * @example
 * ```ts
 * const existing = await Deno.makeTempFile({ suffix: ".jsonl" });
 * await openOutput({ output: existing }).catch((e) => {
 *   if (e instanceof OutputError) console.error(e.message); // ... pass --overwrite ...
 * });
 * ```
 */
export class OutputError extends Error {
  constructor(message: string, options?: ErrorOptions) {
    super(message, options);
    this.name = "OutputError";
  }
}

const isUrl = (s: string) => /^https?:\/\//i.test(s);
const encoder = new TextEncoder();

async function _exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** Creates `dir` and its parents, then proves a file can be created in it. */
async function _writableFolder(dir: string, what: string): Promise<void> {
  try {
    await Deno.mkdir(dir, { recursive: true });
  } catch (e) {
    const why = e instanceof Deno.errors.AlreadyExists || e instanceof Deno.errors.NotADirectory
      ? "a file is in the way (a part of the path is a file, not a folder)"
      : describeFsError(e);
    throw new OutputError(`Cannot create the folder "${dir}" for ${what}: ${why}`);
  }
  let probe: string;
  try {
    probe = await Deno.makeTempFile({ dir, prefix: ".batchwright-probe-" });
  } catch (e) {
    throw new OutputError(`Cannot write ${what} into "${dir}": ${describeFsError(e)}`);
  }
  await Deno.remove(probe);
}

/**
 * Checks a local output before anything is written: not the input, not a
 * folder, its folder created (`mkdir -p`) and writable, and, unless
 * `overwrite` or `resume`, neither it nor its `.partial` from an interrupted
 * run exists. Throws {@linkcode OutputError} naming the path and what to do.
 *
 * @example
 * ```ts
 * await checkOutput("out/results.jsonl", { overwrite: false }); // creates out/
 * ```
 */
export async function checkOutput(
  output: string,
  options: Omit<OutputOptions, "output" | "stdout" | "upload">,
): Promise<void> {
  if (output === "-" || isUrl(output)) return;
  const target = resolve(output);
  if (
    options.input !== undefined && options.input !== "-" && !isUrl(options.input) &&
    resolve(options.input) === target
  ) {
    throw new OutputError(`Refusing to write the output over the input "${options.input}"`);
  }
  if ((await Deno.stat(target).catch(() => null))?.isDirectory) {
    throw new OutputError(`Output "${output}" is a directory: name a file inside it`);
  }
  await _writableFolder(dirname(target), `the output "${output}"`);
  if (options.outputTmpDir !== undefined) {
    await _writableFolder(options.outputTmpDir, `the partial output of "${output}"`);
  }
  if (options.overwrite || options.resume) return;
  if (await _exists(target)) {
    throw new OutputError(
      `Output "${output}" already exists: pass --overwrite to replace it or --resume to continue it`,
    );
  }
  const partial = resolve(options.outputTmpDir ?? dirname(target), `${basename(target)}.partial`);
  if (await _exists(partial)) {
    throw new OutputError(
      `Found "${partial}" from an interrupted run: pass --resume to continue it or --overwrite to start over`,
    );
  }
}

/** Serialises writes and groups the lines that arrive while one write is under way. */
class _GroupWriter {
  #group: { lines: string[]; done: PromiseWithResolvers<void> } | null = null;
  #chain: Promise<void> = Promise.resolve();
  #failure: unknown = null;

  constructor(private readonly writeBytes: (bytes: Uint8Array) => Promise<void>) {}

  write(line: string): Promise<void> {
    if (this.#failure !== null) return Promise.reject(this.#failure);
    if (this.#group === null) {
      const group = { lines: [] as string[], done: Promise.withResolvers<void>() };
      this.#group = group;
      this.#chain = this.#chain.then(async () => {
        if (this.#group === group) this.#group = null;
        try {
          await this.writeBytes(encoder.encode(group.lines.join("\n") + "\n"));
          group.done.resolve();
        } catch (e) {
          this.#failure = e;
          group.done.reject(e);
        }
      });
    }
    this.#group.lines.push(line);
    return this.#group.done.promise;
  }

  async flush(): Promise<void> {
    await this.#chain;
    if (this.#failure !== null) throw this.#failure;
  }
}

async function _writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let at = 0;
  while (at < bytes.byteLength) at += await file.write(bytes.subarray(at));
}

/** Copies the successful lines of earlier runs into `target`, once per custom_id. */
async function _foldSuccesses(
  sources: readonly string[],
  target: Deno.FsFile,
  answered: Set<string>,
): Promise<void> {
  const writer = new _GroupWriter((b) => _writeAll(target, b));
  for (const source of sources) {
    if (!(await _exists(source))) continue;
    for await (const line of readLines(source)) {
      if (line.text === undefined) continue;
      const id = successfulCustomId(line.text);
      if (id === null || answered.has(id)) continue; // failures are re-run; torn lines dropped
      answered.add(id);
      await writer.write(line.text);
    }
  }
  await writer.flush();
}

/**
 * Opens the output. For a local path it refuses an existing file (or a
 * leftover `OUTPUT.partial`) unless `overwrite` or `resume`; with `resume` it
 * keeps one successful answer per custom_id from the existing output and the
 * partial file, and reports those ids in `answered`.
 *
 * @example
 * ```ts
 * const dir = await Deno.makeTempDir();
 * const sink = await openOutput({ output: `${dir}/out.jsonl`, overwrite: true });
 * await sink.write('{"id":"batch_req_1","custom_id":"a","response":null,"error":null}');
 * const { path } = await sink.commit(); // the absolute path of out.jsonl
 * ```
 */
export async function openOutput(options: OutputOptions): Promise<OutputSink> {
  const { output } = options;
  if (output === "-") {
    if (options.resume) throw new OutputError("Cannot resume when the output is stdout (-)");
    return _stdoutSink(options.stdout ?? Deno.stdout.writable);
  }
  let partialPath: string;
  let tmpDirCreated: string | null = null;
  if (isUrl(output)) {
    const name = basename(new URL(output).pathname) || "output.jsonl";
    const dir = options.outputTmpDir ??
      (tmpDirCreated = await Deno.makeTempDir({ prefix: "batchwright-" }));
    partialPath = resolve(join(dir, `${name}.partial`));
  } else {
    await checkOutput(output, options);
    const target = resolve(output);
    partialPath = resolve(
      join(options.outputTmpDir ?? dirname(target), `${basename(target)}.partial`),
    );
  }
  const answered = new Set<string>();
  if (options.resume) {
    // Fold into a fresh file, then rename it over the partial: a kill during the
    // fold leaves the old partial intact for the next resume.
    const folding = `${partialPath}.new`;
    const file = await Deno.open(folding, { write: true, create: true, truncate: true });
    try {
      const sources = isUrl(output) ? [partialPath] : [resolve(output), partialPath];
      await _foldSuccesses(sources, file, answered);
      await file.syncData();
    } finally {
      file.close();
    }
    await Deno.rename(folding, partialPath);
  }
  const file = await Deno.open(partialPath, {
    write: true,
    create: true,
    append: options.resume === true,
    truncate: options.resume !== true,
  });
  const writer = new _GroupWriter((b) => _writeAll(file, b));
  let closed = false;
  const close = async () => {
    await writer.flush();
    if (!closed) {
      closed = true;
      await file.syncData();
      file.close();
    }
  };
  return {
    partialPath,
    answered,
    write: (line) => writer.write(line),
    async keep() {
      await close();
      return partialPath;
    },
    async commit() {
      await close();
      if (!isUrl(output)) {
        const target = resolve(output);
        try {
          await Deno.rename(partialPath, target);
        } catch {
          // Across file systems (outputTmpDir elsewhere): copy, then remove.
          await Deno.copyFile(partialPath, target);
          await Deno.remove(partialPath);
        }
        return { path: target };
      }
      try {
        await uploadFile(partialPath, output, options.upload);
      } catch (e) {
        return {
          path: partialPath,
          error: `${(e as Error).message}; the output is kept in "${partialPath}"`,
        };
      }
      await Deno.remove(partialPath);
      if (tmpDirCreated !== null) await Deno.remove(tmpDirCreated, { recursive: true });
      return { path: output };
    },
  };
}

function _stdoutSink(stream: WritableStream<Uint8Array>): OutputSink {
  const out = stream.getWriter();
  const writer = new _GroupWriter(async (b) => {
    await out.ready;
    await out.write(b);
  });
  const release = async () => {
    await writer.flush();
    await out.ready;
    out.releaseLock();
  };
  return {
    partialPath: null,
    answered: new Set(),
    write: (line) => writer.write(line),
    async commit() {
      await release();
      return { path: "-" };
    },
    async keep() {
      await release();
      return null;
    },
  };
}

/** Parses Retry-After (seconds or an HTTP date) into milliseconds. */
function _retryAfterMs(header: string | null): number | null {
  if (header === null) return null;
  const seconds = Number(header);
  if (Number.isFinite(seconds)) return Math.max(0, seconds * 1000);
  const date = Date.parse(header);
  return Number.isNaN(date) ? null : Math.max(0, date - Date.now());
}

/**
 * Uploads a local file with HTTP PUT, streamed from disk. Retries connection
 * errors, timeouts, 5xx and 429 (honouring Retry-After) with exponential
 * backoff; any 2xx is success. Throws an Error naming the URL and the last
 * failure.
 *
 * @example
 * ```ts ignore
 * await uploadFile("out.jsonl", "https://storage.example/out.jsonl", { attempts: 3 });
 * ```
 */
export async function uploadFile(
  path: string,
  url: string,
  options: UploadOptions = {},
): Promise<void> {
  const attempts = options.attempts ?? 5;
  const baseDelay = options.baseDelayMs ?? 500;
  const maxDelay = options.maxDelayMs ?? 30_000;
  const timeoutMs = options.timeoutMs ?? 600_000;
  let lastFailure = "";
  for (let attempt = 1; attempt <= attempts; attempt++) {
    let wait = Math.min(maxDelay, baseDelay * 2 ** (attempt - 1));
    const file = await Deno.open(path, { read: true });
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), timeoutMs);
    try {
      const response = await fetch(url, {
        method: "PUT",
        body: file.readable,
        headers: { "content-type": "application/jsonl" },
        signal: controller.signal,
      });
      await response.body?.cancel();
      if (response.ok) return;
      lastFailure = `HTTP ${response.status} ${response.statusText}`.trimEnd();
      if (response.status !== 429 && response.status < 500) break; // the server refused it: retrying won't help
      const hinted = _retryAfterMs(response.headers.get("retry-after"));
      if (hinted !== null) wait = Math.min(maxDelay, hinted);
    } catch (e) {
      lastFailure = controller.signal.aborted
        ? `no answer within ${timeoutMs} ms`
        : (e as Error).message;
    } finally {
      clearTimeout(timer);
      try {
        file.close();
      } catch { /* already closed by the finished body stream */ }
    }
    if (attempt < attempts) await new Promise((r) => setTimeout(r, wait));
  }
  throw new Error(`Cannot upload the output to "${url}": ${lastFailure}`);
}
