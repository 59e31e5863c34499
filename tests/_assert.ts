/**
 * The few assertions the tests use (JSR's @std/assert cannot be reached here).
 *
 * @module
 */
import { deepStrictEqual, match, ok, rejects, throws } from "node:assert/strict";

/** Deep equality, with a readable diff on failure. */
export function assertEquals<T>(actual: unknown, expected: T, message?: string): void {
  deepStrictEqual(actual, expected, message);
}

/** Truthiness. */
export function assert(value: unknown, message?: string): asserts value {
  ok(value, message);
}

/** The string matches the pattern. */
export function assertMatch(actual: string, expected: RegExp, message?: string): void {
  match(actual, expected, message);
}

/** `fn` throws an error whose message matches `pattern`. */
export function assertThrows(fn: () => unknown, pattern: RegExp = /./): void {
  throws(fn, pattern);
}

/** The promise rejects with an error whose message matches `pattern`. */
export async function assertRejects(
  fn: () => Promise<unknown>,
  pattern: RegExp = /./,
): Promise<void> {
  await rejects(fn, pattern);
}
