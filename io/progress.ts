/**
 * Progress on stderr: a redrawn bar on a terminal (done/total, tokens/s, ETA),
 * a plain log line every few seconds otherwise, nothing when quiet — so a hung
 * run can be told from a slow one.
 *
 * @module
 */

/** Options for {@linkcode createProgress}. */
export interface ProgressOptions {
  /** Print nothing. */
  readonly quiet?: boolean;
  /** Draw a bar redrawn in place (default: whether stderr is a terminal). */
  readonly isTerminal?: boolean;
  /** How often to print: bar redraw or log line (default 200 ms on a terminal, 10 s otherwise). */
  readonly intervalMs?: number;
  /** Where text goes (default: stderr). */
  readonly write?: (text: string) => void;
  /** Clock (for tests). */
  readonly now?: () => number;
  /**
   * Takes every report and message instead of `write` (e.g. a JSON logger):
   * `report` gets the rendered line and the counters it came from.
   */
  readonly sink?: {
    report(line: string, state: Readonly<ProgressState>, elapsedMs: number): void;
    log(message: string): void;
  };
}

/** Counters the run loop reports. */
export interface ProgressState {
  /** Requests answered (any outcome). */
  done: number;
  /** Of those, answered with an error line or cancelled. */
  failed: number;
  /** Known once the input is fully read or counted beforehand. */
  total?: number;
  /** Completion tokens generated so far. */
  completionTokens: number;
}

/** A progress reporter; call {@linkcode Progress.stop} at the end. */
export interface Progress {
  /** The counters; mutate them, the reporter reads them on its timer. */
  readonly state: ProgressState;
  /** Prints a line now (log mode) or above the bar (terminal). */
  log(message: string): void;
  /** Prints the final state and stops the timer. */
  stop(): void;
}

const _stderr = (text: string) => {
  const bytes = new TextEncoder().encode(text);
  let at = 0;
  while (at < bytes.byteLength) at += Deno.stderr.writeSync(bytes.subarray(at));
};

function _duration(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, "0")}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor(s / 60) % 60).padStart(2, "0")}m`;
}

/**
 * Renders one progress line from the counters (no newline).
 *
 * @example
 * ```ts
 * formatProgress({ done: 50, failed: 1, total: 100, completionTokens: 5000 }, 10_000, 30);
 * // "[#########.........................]  50/100 (50%) 1 failed, 500 tok/s, 10s elapsed, ETA 10s"
 * ```
 */
export function formatProgress(state: ProgressState, elapsedMs: number, barWidth = 0): string {
  const { done, failed, total, completionTokens } = state;
  const rate = elapsedMs > 0 ? Math.round(completionTokens / (elapsedMs / 1000)) : 0;
  const parts: string[] = [];
  if (total !== undefined && total > 0) {
    const frac = Math.min(1, done / total);
    if (barWidth > 0) {
      const fill = Math.round(frac * barWidth);
      parts.push(`[${"#".repeat(fill)}${".".repeat(barWidth - fill)}]`);
    }
    parts.push(`${done}/${total} (${Math.floor(frac * 100)}%)`);
  } else {
    parts.push(`${done} done`);
  }
  const tail = [`${failed} failed`, `${rate} tok/s`, `${_duration(elapsedMs)} elapsed`];
  if (total !== undefined && done > 0 && done < total) {
    tail.push(`ETA ${_duration((elapsedMs / done) * (total - done))}`);
  }
  return `${parts.join(" ")} ${tail.join(", ")}`;
}

/**
 * Starts a progress reporter on a timer.
 *
 * @example
 * ```ts
 * const progress = createProgress({ isTerminal: false, intervalMs: 5000 });
 * progress.state.done++;
 * progress.stop();
 * ```
 */
export function createProgress(options: ProgressOptions = {}): Progress {
  const state: ProgressState = { done: 0, failed: 0, completionTokens: 0 };
  const write = options.write ?? _stderr;
  const now = options.now ?? Date.now;
  const terminal = options.isTerminal ?? Deno.stderr.isTerminal();
  const start = now();
  const draw = () => {
    const line = formatProgress(state, now() - start, terminal ? 30 : 0);
    write(terminal ? `\r\x1b[2K${line}` : `batchwright: ${line}\n`);
  };
  if (options.quiet) return { state, log() {}, stop() {} };
  const sink = options.sink;
  if (sink !== undefined) {
    const report = () => sink.report(formatProgress(state, now() - start), state, now() - start);
    const timer = setInterval(report, options.intervalMs ?? 10_000);
    return {
      state,
      log: (message) => sink.log(message),
      stop() {
        clearInterval(timer);
        report();
      },
    };
  }
  const timer = setInterval(draw, options.intervalMs ?? (terminal ? 200 : 10_000));
  return {
    state,
    log(message) {
      write(terminal ? `\r\x1b[2K${message}\n` : `batchwright: ${message}\n`);
    },
    stop() {
      clearInterval(timer);
      draw();
      if (terminal) write("\n");
    },
  };
}
