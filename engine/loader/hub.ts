/**
 * Fetches a model from the Hugging Face hub (or a mirror) into a local cache
 * and returns the directory the engine loads, so `--model owner/name` works
 * like `--model DIR`.
 *
 * The revision lookup (branch or tag → commit sha, file list) goes through
 * `@huggingface/hub`'s `modelInfo`; the downloads are our own, because the
 * library's `downloadFileToCacheDir` neither resumes nor reports progress.
 *
 * Cache layout, as huggingface_hub's but without the blob symlinks:
 * ```
 * {cacheDir}/models--{owner}--{name}/refs/{revision}       the commit sha
 * {cacheDir}/models--{owner}--{name}/snapshots/{sha}/{file}
 * {cacheDir}/models--{owner}--{name}/snapshots/{sha}/{file}.incomplete   a partial download
 * ```
 * A file appears under its own name only once complete, so presence means
 * done. Every call looks the revision up once (a moved branch gets its new
 * snapshot) and downloads only what is missing. No network is used when the
 * revision is a commit sha whose snapshot is complete, or with `offline`;
 * when the lookup cannot reach the hub, a complete snapshot that
 * `refs/{revision}` points to is used instead.
 *
 * @module
 */
import { dirname, join } from "node:path";
import { getRepoFolderName, HubApiError, modelInfo } from "@huggingface/hub";

/** The files the engine reads beside the weights; the hub may lack any of them. */
export const OPTIONAL_FILES: readonly string[] = [
  "generation_config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "tokenizer.model",
  "special_tokens_map.json",
];
const SINGLE = "model.safetensors";
const INDEX = "model.safetensors.index.json";
const SHA = /^[0-9a-f]{40}$/;

/** One model on the hub: `owner/name` at a branch, tag or commit. */
export interface ModelRef {
  readonly repo: string;
  readonly revision: string;
}

/** Bytes of one file so far; `total` is undefined when the server does not say. */
export interface DownloadProgress {
  readonly file: string;
  readonly received: number;
  readonly total: number | undefined;
}

/** How to reach the hub and where to keep what comes from it. */
export interface HubOptions {
  /** Root of the cache, e.g. `$HF_HOME/hub`. */
  readonly cacheDir: string;
  /** The hub or a mirror (default `https://huggingface.co`). */
  readonly endpoint?: string;
  /** Sent as `Authorization: Bearer TOKEN` (private and gated repos). */
  readonly token?: string;
  /** Use the cached snapshot without any request (default false). */
  readonly offline?: boolean;
  /** Also fetch the weights (default true; false for config and tokenizer only). */
  readonly weights?: boolean;
  /** Extra attempts after a dropped connection or 5xx, each resuming (default 2). */
  readonly retries?: number;
  /** Called as bytes arrive, and once when a file starts and ends. */
  readonly onProgress?: (progress: DownloadProgress) => void;
  readonly signal?: AbortSignal;
  /** Replaces the global fetch (tests). */
  readonly fetch?: typeof fetch;
}

/** A download that failed in a way the user can act on; `status` is the HTTP status. */
export class HubError extends Error {
  constructor(message: string, readonly status?: number, readonly retryable = false) {
    super(message);
    this.name = "HubError";
  }
}

/**
 * Reads `owner/name` or `owner/name@revision`; null when `text` is not shaped
 * like a hub id.
 *
 * @example
 * ```ts
 * parseModelRef("baidu/ERNIE-4.5-0.3B-PT@main"); // { repo: "baidu/ERNIE-4.5-0.3B-PT", revision: "main" }
 * ```
 */
export function parseModelRef(text: string): ModelRef | null {
  const m = /^([\w.-]+\/[\w.-]+)(?:@([\w.\-/]+))?$/.exec(text);
  if (!m || m[1]!.includes("..") || m[2]?.includes("..") || m[2]?.startsWith("/")) return null;
  return { repo: m[1]!, revision: m[2] ?? "main" };
}

/**
 * Makes sure the cache holds the engine's files of `model` and returns the
 * snapshot directory to load.
 *
 * @example
 * ```ts ignore
 * // Needs the network (or an HF_ENDPOINT mirror).
 * const dir = await downloadModel("baidu/ERNIE-4.5-0.3B-PT", {
 *   cacheDir: "/home/me/.cache/huggingface/hub",
 *   onProgress: ({ file, received, total }) => console.error(file, received, total),
 * });
 * ```
 */
export async function downloadModel(
  model: ModelRef | string,
  options: HubOptions,
): Promise<string> {
  const ref = typeof model === "string" ? parseModelRef(model) : model;
  if (ref === null) {
    throw new HubError(`"${model}" is not a hub model id like owner/name[@revision]`);
  }
  const endpoint = (options.endpoint ?? "https://huggingface.co").replace(/\/+$/, "");
  const storage = join(options.cacheDir, getRepoFolderName({ type: "model", name: ref.repo }));
  const wantWeights = options.weights ?? true;

  const cachedSha = SHA.test(ref.revision)
    ? ref.revision
    : await Deno.readTextFile(join(storage, "refs", ref.revision)).then(
      (s) => s.trim(),
      () => null,
    );
  const cached = cachedSha &&
    await completeSnapshot(join(storage, "snapshots", cachedSha), wantWeights);
  if (cached && (options.offline || cachedSha === ref.revision)) return cached;
  if (options.offline) {
    throw new HubError(
      `Cannot load "${ref.repo}" offline: ${storage} holds no complete snapshot of "${ref.revision}"; go online once or pass a local directory`,
    );
  }

  const fetchFn = options.fetch ?? fetch;
  const auth: Record<string, string> = options.token
    ? { Authorization: `Bearer ${options.token}` }
    : {};
  const infoUrl = `${endpoint}/api/models/${ref.repo}/revision/${encodeURIComponent(ref.revision)}`;
  let info: { sha?: string; filePaths?: string[] };
  try {
    info = await modelInfo({
      name: ref.repo,
      revision: ref.revision,
      hubUrl: endpoint,
      additionalFields: ["sha", "filePaths"],
      // The header goes in here: the library refuses tokens without an "hf_" prefix, which mirrors may use.
      fetch: (input, init) =>
        fetchFn(input, {
          ...init,
          headers: { ...init?.headers as Record<string, string>, ...auth },
          signal: options.signal,
        }),
    });
  } catch (e) {
    options.signal?.throwIfAborted();
    if (!(e instanceof HubApiError) && cached) return cached; // unreachable hub, snapshot on disk
    throw e instanceof HubApiError
      ? statusError(e.statusCode, infoUrl, ref, null)
      : new HubError(`Cannot reach the hub at ${infoUrl}: ${(e as Error).message}`);
  }
  const sha = info.sha;
  if (typeof sha !== "string" || !SHA.test(sha) || !Array.isArray(info.filePaths)) {
    throw new HubError(`The hub answered ${infoUrl} without a commit sha and file list`);
  }
  const listed = new Set(info.filePaths);
  const snapshot = join(storage, "snapshots", sha);
  await Deno.mkdir(snapshot, { recursive: true });
  if (sha !== ref.revision) {
    const refFile = join(storage, "refs", ref.revision);
    await Deno.mkdir(dirname(refFile), { recursive: true });
    await Deno.writeTextFile(refFile, sha);
  }

  const get = (file: string) =>
    fetchFile(`${endpoint}/${ref.repo}/resolve/${sha}/${file}`, join(snapshot, file), file, {
      ...options,
      fetchFn,
      auth,
      ref,
    });
  const required = (file: string) => {
    if (!listed.has(file)) {
      throw new HubError(`The hub repo "${ref.repo}" at "${ref.revision}" has no ${file}`, 404);
    }
    return get(file);
  };
  await required("config.json");
  for (const file of OPTIONAL_FILES) if (listed.has(file)) await get(file);
  if (!wantWeights) return snapshot;
  if (listed.has(SINGLE) || !listed.has(INDEX)) {
    await required(SINGLE);
  } else {
    await get(INDEX);
    for (const shard of await shardNames(join(snapshot, INDEX))) await required(shard);
  }
  return snapshot;
}

/** A one-line description of a download's progress, e.g. `model.safetensors 12.0/687.0 MiB 2%`. */
export function formatProgress({ file, received, total }: DownloadProgress): string {
  const mib = (n: number) => (n / 2 ** 20).toFixed(1);
  if (total === undefined) return `${file} ${mib(received)} MiB`;
  const pct = total > 0 ? Math.floor((received / total) * 100) : 100;
  return `${file} ${mib(received)}/${mib(total)} MiB ${pct}%`;
}

/** The shard files a safetensors index names, each a plain file name. */
async function shardNames(index: string): Promise<string[]> {
  let map: unknown;
  try {
    map = (JSON.parse(await Deno.readTextFile(index)) as { weight_map?: unknown }).weight_map;
  } catch (e) {
    throw new HubError(`Cannot parse "${index}": ${(e as Error).message}`);
  }
  if (typeof map !== "object" || map === null) {
    throw new HubError(`Cannot parse "${index}": field "weight_map" is missing or invalid`);
  }
  const shards = new Set<string>();
  for (const shard of Object.values(map)) {
    if (typeof shard !== "string" || !/^[\w.-]+$/.test(shard) || shard.startsWith("..")) {
      throw new HubError(
        `Cannot use "${index}": shard ${JSON.stringify(shard)} is not a file name`,
      );
    }
    shards.add(shard);
  }
  return [...shards];
}

/** The snapshot directory when it holds config.json and (if wanted) every weight file. */
async function completeSnapshot(dir: string, weights: boolean): Promise<string | null> {
  const has = (f: string) => Deno.stat(join(dir, f)).then((s) => s.isFile, () => false);
  if (!(await has("config.json"))) return null;
  if (!weights || await has(SINGLE)) return dir;
  if (!(await has(INDEX))) return null;
  const shards = await shardNames(join(dir, INDEX)).catch(() => null);
  if (shards === null) return null;
  for (const s of shards) if (!(await has(s))) return null;
  return dir;
}

function statusError(status: number, url: string, ref: ModelRef, file: string | null): HubError {
  const what = file ? `${file} of "${ref.repo}"` : `"${ref.repo}" at revision "${ref.revision}"`;
  if (status === 401 || status === 403) {
    return new HubError(
      `Cannot download ${what}: the hub refused access (HTTP ${status}, ${url}); set HF_TOKEN to a token that can read this repo (accept its license on the hub if it is gated)`,
      status,
    );
  }
  if (status === 404) {
    return new HubError(
      `Cannot download ${what}: no such model repo or file (HTTP 404, ${url}); check the id, or pass a local directory`,
      status,
    );
  }
  return new HubError(`Cannot download ${what}: HTTP ${status} from ${url}`, status, status >= 500);
}

interface FetchContext extends HubOptions {
  readonly fetchFn: typeof fetch;
  readonly auth: Record<string, string>;
  readonly ref: ModelRef;
}

/** Downloads `url` to `dest` unless it is there, retrying broken transfers from where they stopped. */
async function fetchFile(url: string, dest: string, file: string, ctx: FetchContext) {
  if (await Deno.stat(dest).then(() => true, () => false)) return;
  await Deno.mkdir(dirname(dest), { recursive: true });
  const retries = ctx.retries ?? 2;
  for (let attempt = 0;; attempt++) {
    try {
      return await fetchOnce(url, dest, file, ctx);
    } catch (e) {
      ctx.signal?.throwIfAborted();
      if (!(e instanceof HubError && e.retryable) || attempt >= retries) throw e;
      await new Promise((r) => setTimeout(r, 200 * 2 ** attempt));
    }
  }
}

/** One GET, appending to `{dest}.incomplete` when the server honours the Range. */
async function fetchOnce(url: string, dest: string, file: string, ctx: FetchContext) {
  const part = `${dest}.incomplete`;
  const have = (await Deno.stat(part).catch(() => null))?.size ?? 0;
  // identity: sizes and ranges then count the bytes we store.
  const headers: Record<string, string> = { ...ctx.auth, "Accept-Encoding": "identity" };
  if (have > 0) headers.Range = `bytes=${have}-`;
  let res: Response;
  try {
    res = await ctx.fetchFn(url, { headers, signal: ctx.signal });
  } catch (e) {
    ctx.signal?.throwIfAborted();
    throw new HubError(`Cannot reach ${url}: ${(e as Error).message}`, undefined, true);
  }
  if (res.status === 416 && have > 0) { // our partial file is no prefix of theirs
    await res.body?.cancel();
    await Deno.remove(part);
    throw new HubError(`${url} refused to resume ${file}; starting over`, 416, true);
  }
  if (!res.ok) {
    await res.body?.cancel();
    throw statusError(res.status, url, ctx.ref, file);
  }
  const num = (name: string) => {
    const v = res.headers.get(name);
    return v !== null && /^\d+$/.test(v) ? Number(v) : undefined;
  };
  let offset = 0;
  let total = num("x-linked-size");
  if (res.status === 206) {
    const m = /^bytes (\d+)-\d+\/(\d+|\*)$/.exec(res.headers.get("content-range") ?? "");
    if (!m || Number(m[1]) !== have) {
      await res.body?.cancel();
      await Deno.remove(part);
      throw new HubError(`${url} answered a resume with the wrong range; starting over`, 206, true);
    }
    offset = have;
    total ??= m[2] === "*" ? undefined : Number(m[2]);
  } else {
    const length = num("content-length");
    total ??= res.headers.has("content-encoding") ? undefined : length;
  }

  let received = offset;
  ctx.onProgress?.({ file, received, total });
  const out = await Deno.open(part, {
    write: true,
    create: true,
    append: offset > 0,
    truncate: offset === 0,
  });
  try {
    for await (const chunk of res.body ?? []) {
      for (let n = 0; n < chunk.length;) n += await out.write(chunk.subarray(n));
      received += chunk.length;
      ctx.onProgress?.({ file, received, total });
    }
  } catch (e) {
    ctx.signal?.throwIfAborted();
    throw new HubError(
      `Download of ${url} broke off after ${received} bytes (${
        (e as Error).message
      }); ${part} is kept, run again to resume`,
      undefined,
      true,
    );
  } finally {
    out.close();
  }
  if (total !== undefined && received !== total) {
    if (received > total) await Deno.remove(part);
    throw new HubError(
      `Download of ${url} gave ${received} bytes, expected ${total}`,
      undefined,
      true,
    );
  }
  await Deno.rename(part, dest);
}
