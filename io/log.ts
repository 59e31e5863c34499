/**
 * What a run says on stderr, as plain text for people or as one JSON object
 * per line for log collectors (`--log-format json`), filtered by level.
 *
 * @module
 */

/** Levels, least to most severe. */
export const LOG_LEVELS = ["debug", "info", "warn", "error"] as const;
/** `debug`, `info`, `warn` or `error`. */
export type LogLevel = typeof LOG_LEVELS[number];

/** Structured context of a message (JSON fields; ignored in text). */
export type LogFields = Readonly<Record<string, unknown>>;

/** Writes messages at or above its level. */
export interface Logger {
  /** Text for people, JSON lines for collectors. */
  readonly format: "text" | "json";
  /** Whether a message at `level` would be written. */
  enabled(level: LogLevel): boolean;
  /** Writes `message` at `level` when enabled. */
  log(level: LogLevel, message: string, fields?: LogFields): void;
  /** Per-request detail (`answer` events). */
  debug(message: string, fields?: LogFields): void;
  /** What the run does: model, progress, summary. */
  info(message: string, fields?: LogFields): void;
  /** Something the user may want to act on (cancelling, a failed run's summary). */
  warn(message: string, fields?: LogFields): void;
  /** Why the run stopped. */
  error(message: string, fields?: LogFields): void;
}

/** Options for {@linkcode createLogger}. */
export interface LoggerOptions {
  /** Default "text". */
  readonly format?: "text" | "json";
  /** Least severe level written (default "info"). */
  readonly level?: LogLevel;
  /** Where lines go, newline included (default: stderr). */
  readonly write?: (line: string) => void;
  /** Clock (for tests). */
  readonly now?: () => Date;
}

const _stderr = (text: string) => {
  const bytes = new TextEncoder().encode(text);
  let at = 0;
  while (at < bytes.byteLength) at += Deno.stderr.writeSync(bytes.subarray(at));
};

/** Text prefixes: `error: ...` as the CLI has always printed errors, `batchwright: ...` otherwise. */
const TEXT_PREFIX: Record<LogLevel, string> = {
  debug: "batchwright: debug: ",
  info: "batchwright: ",
  warn: "batchwright: warning: ",
  error: "error: ",
};

/**
 * A logger. In JSON each line is `{"time","level","msg",...fields}`; fields
 * never override those three.
 *
 * @example
 * ```ts
 * const log = createLogger({ format: "json", level: "info" });
 * log.info("loaded", { model: "ernie-tiny" });
 * // {"time":"2026-01-01T00:00:00.000Z","level":"info","msg":"loaded","model":"ernie-tiny"}
 * log.debug("not written");
 * ```
 */
export function createLogger(options: LoggerOptions = {}): Logger {
  const format = options.format ?? "text";
  const min = LOG_LEVELS.indexOf(options.level ?? "info");
  const write = options.write ?? _stderr;
  const now = options.now ?? (() => new Date());
  const enabled = (level: LogLevel) => LOG_LEVELS.indexOf(level) >= min;
  const log = (level: LogLevel, message: string, fields: LogFields = {}) => {
    if (!enabled(level)) return;
    if (format === "text") return write(`${TEXT_PREFIX[level]}${message}\n`);
    const { time: _time, level: _level, msg: _msg, ...rest } = fields;
    write(JSON.stringify({ time: now().toISOString(), level, msg: message, ...rest }) + "\n");
  };
  return {
    format,
    enabled,
    log,
    debug: (m, f) => log("debug", m, f),
    info: (m, f) => log("info", m, f),
    warn: (m, f) => log("warn", m, f),
    error: (m, f) => log("error", m, f),
  };
}
