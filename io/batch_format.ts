/**
 * The batch file format: one request envelope per input line, one answer per
 * output line, in the exact shapes FastDeploy and vLLM write and OpenAI
 * clients parse.
 *
 * @module
 */
import { z } from "zod";

/** One validated input line. */
export interface BatchRequest {
  /** 1-based line number in the input. */
  readonly lineNo: number;
  /** The caller's id, unique in the batch; it names the answer. */
  readonly customId: string;
  /** Always POST, as OpenAI's batch format requires. */
  readonly method: "POST";
  /** The endpoint, e.g. `/v1/chat/completions`. */
  readonly url: string;
  /** The endpoint's request body. */
  readonly body: Record<string, unknown>;
}

/** An input line that cannot become a request. */
export interface LineError {
  /** 1-based line number in the input. */
  readonly lineNo: number;
  /** The line's custom_id when it could be read, else null. */
  readonly customId: string | null;
  /** Starts with `line N:`; names the field and the reason. */
  readonly message: string;
  /** The offending field (`custom_id`, `body.messages`, ...), or null. */
  readonly param: string | null;
  /** A machine-readable reason, e.g. `invalid_json`, `invalid_field`. */
  readonly code: string;
  /** HTTP-like status for the error line (400 for everything the line itself got wrong). */
  readonly status: number;
}

/** The result of {@linkcode parseRequestLine}. */
export type ParsedLine =
  | { readonly ok: true; readonly request: BatchRequest }
  | { readonly ok: false; readonly error: LineError };

const requiredOr = (reason: string) => (issue: { input: unknown }) =>
  issue.input === undefined ? "is required" : reason;

const envelopeSchema = z.object({
  custom_id: z.string({ error: requiredOr("expected a string") }),
  method: z.literal("POST", { error: requiredOr('expected "POST"') }),
  url: z.string({ error: requiredOr("expected a string") }),
  body: z.record(z.string(), z.unknown(), {
    error: requiredOr("expected an object"),
  }),
});

/**
 * Builds a line error whose message is prefixed with the line number.
 *
 * @example
 * ```ts
 * const e = lineError(12, "req-1", "field \"url\": unsupported", "url", "unsupported_url");
 * console.log(e.message); // line 12: field "url": unsupported
 * ```
 */
export function lineError(
  lineNo: number,
  customId: string | null,
  reason: string,
  param: string | null,
  code: string,
  status = 400,
): LineError {
  return { lineNo, customId, message: `line ${lineNo}: ${reason}`, param, code, status };
}

/**
 * Parses one input line into a request envelope, or a line error naming the
 * line, the field and the reason.
 *
 * @example
 * ```ts
 * const p = parseRequestLine(3, '{"custom_id":7,"method":"POST","url":"/v1/completions","body":{}}');
 * if (!p.ok) console.log(p.error.message); // line 3: field "custom_id": expected a string
 * ```
 */
export function parseRequestLine(lineNo: number, text: string): ParsedLine {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    const reason = e instanceof Error ? e.message : String(e);
    return {
      ok: false,
      error: lineError(lineNo, null, `invalid JSON: ${reason}`, null, "invalid_json"),
    };
  }
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return {
      ok: false,
      error: lineError(lineNo, null, "expected a JSON object", null, "invalid_request"),
    };
  }
  const rawId = (value as Record<string, unknown>).custom_id;
  const customId = typeof rawId === "string" ? rawId : null;
  const parsed = envelopeSchema.safeParse(value);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const field = issue?.path.map(String).join(".") ?? "";
    const reason = field === ""
      ? (issue?.message ?? "invalid request")
      : `field "${field}": ${issue?.message ?? "invalid"}`;
    const hasMethod = (value as Record<string, unknown>).method !== undefined;
    const code = field === "method" && hasMethod ? "method_not_allowed" : "invalid_field";
    return { ok: false, error: lineError(lineNo, customId, reason, field || null, code) };
  }
  const { custom_id, method, url, body } = parsed.data;
  return { ok: true, request: { lineNo, customId: custom_id, method, url, body } };
}

const hex32 = (): string => crypto.randomUUID().replaceAll("-", "");

/** A non-HTTP failure code, as OpenAI's Batch API names them. */
export type BatchFailureCode = "batch_cancelled" | "request_timeout" | "batch_expired";

/**
 * The output line for a request that succeeded (no trailing newline).
 *
 * @example
 * ```ts
 * const line = successLine("req-1", { object: "chat.completion" });
 * JSON.parse(line).response.status_code; // 200
 * ```
 */
export function successLine(customId: string, body: unknown): string {
  return JSON.stringify({
    id: `batch_req_${hex32()}`,
    custom_id: customId,
    response: { status_code: 200, request_id: `batchwright-batch-${hex32()}`, body },
    error: null,
  });
}

/** The `error` object inside an HTTP-style failure's response body. */
export interface HttpErrorBody {
  readonly message: string;
  readonly type: string;
  readonly param: string | null;
  readonly code: string | null;
}

/**
 * The output line for an HTTP-style failure: OpenAI puts these inside
 * `response.body.error`, with `error: null` at the top.
 *
 * @example
 * ```ts
 * const line = httpErrorLine(null, 400, {
 *   message: "line 4: invalid JSON", type: "invalid_request_error", param: null, code: "invalid_json",
 * });
 * JSON.parse(line).response.body.error.code; // "invalid_json"
 * ```
 */
export function httpErrorLine(
  customId: string | null,
  statusCode: number,
  error: HttpErrorBody,
): string {
  return JSON.stringify({
    id: `batch_req_${hex32()}`,
    custom_id: customId,
    response: {
      status_code: statusCode,
      request_id: `batchwright-batch-${hex32()}`,
      body: { error },
    },
    error: null,
  });
}

/**
 * The output line for a line error (status 400, type `invalid_request_error`).
 *
 * @example
 * ```ts
 * const p = parseRequestLine(1, "{");
 * if (!p.ok) console.log(lineErrorLine(p.error));
 * ```
 */
export function lineErrorLine(error: LineError): string {
  return httpErrorLine(error.customId, error.status, {
    message: error.message,
    type: "invalid_request_error",
    param: error.param,
    code: error.code,
  });
}

/**
 * The output line for a failure that never got an HTTP answer
 * (`response: null`, the reason in `error`).
 *
 * @example
 * ```ts
 * const line = failureLine("req-9", "batch_cancelled", "the batch was cancelled before this request ran");
 * JSON.parse(line).error.code; // "batch_cancelled"
 * ```
 */
export function failureLine(customId: string, code: BatchFailureCode, message: string): string {
  return JSON.stringify({
    id: `batch_req_${hex32()}`,
    custom_id: customId,
    response: null,
    error: { code, message },
  });
}

/**
 * Reads the custom_id of an output line that answered successfully
 * (`response.status_code` 200), or null for failures and unreadable lines
 * (such as the torn last line of a killed run).
 *
 * @example
 * ```ts
 * successfulCustomId(successLine("a", {})); // "a"
 * successfulCustomId('{"custom_id":"a","response":null'); // null
 * ```
 */
export function successfulCustomId(line: string): string | null {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null) return null;
  const record = value as { custom_id?: unknown; response?: { status_code?: unknown } | null };
  if (typeof record.custom_id !== "string") return null;
  return record.response?.status_code === 200 ? record.custom_id : null;
}
