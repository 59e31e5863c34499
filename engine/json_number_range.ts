/**
 * Grammars for bounded integers and decimals (`minimum`, `maximum`,
 * `exclusiveMinimum`, `exclusiveMaximum`), exact to the digit: a number is
 * split into sign, integer part and fraction, and each part's range is
 * written digit by digit (the classic range-to-regex construction, with the
 * fraction compared as if padded with zeros).
 *
 * @module
 */

import { FRACTION_DIGITS, group, INTEGER_DIGITS, type Schema, SchemaError } from "./json_schema.ts";

/** A decimal bound: the value as digits, and whether it is excluded. */
interface Bound {
  readonly negative: boolean;
  /** Integer part without leading zeros ("0" for zero). */
  readonly int: bigint;
  /** Fraction digits without trailing zeros ("" for none). */
  readonly frac: string;
  readonly exclusive: boolean;
}

/** The tighter of `inclusive` and `exclusive` (`pick` "max" for lower bounds, "min" for upper). */
export function bound(
  s: Schema,
  inclusive: string,
  exclusive: string,
  pick: "max" | "min",
  path: string,
): Bound | null {
  const a = s[inclusive];
  const b = s[exclusive];
  for (const [key, v] of [[inclusive, a], [exclusive, b]] as const) {
    if (v !== undefined && (typeof v !== "number" || !Number.isFinite(v))) {
      throw new SchemaError(path, key, `${path}/${key}: expected a number`);
    }
  }
  if (a === undefined && b === undefined) return null;
  let value: number;
  let isExclusive: boolean;
  if (a === undefined) [value, isExclusive] = [b as number, true];
  else if (b === undefined) [value, isExclusive] = [a as number, false];
  else {
    const tighter = pick === "max"
      ? (b as number) >= (a as number)
      : (b as number) <= (a as number);
    [value, isExclusive] = tighter ? [b as number, true] : [a as number, false];
  }
  const text = String(Math.abs(value));
  const m = /^(\d+)(?:\.(\d+))?$/.exec(text);
  const key = isExclusive ? exclusive : inclusive;
  if (m === null || m[1]!.length > INTEGER_DIGITS) {
    throw new SchemaError(
      path,
      key,
      `${path}/${key}: ${value} is not supported as a bound (use a plain decimal with at most ` +
        `${INTEGER_DIGITS} integer digits)`,
    );
  }
  return {
    negative: value < 0,
    int: BigInt(m[1]!),
    frac: (m[2] ?? "").replace(/0+$/, ""),
    exclusive: isExclusive,
  };
}

const isZero = (b: Bound) => b.int === 0n && b.frac === "";

/** Integers within the bounds. */
export function integerRange(lower: Bound | null, upper: Bound | null, path: string): string {
  // Integer bounds: lo = ceil(lower) (+1 when exclusive and integral), hi likewise.
  const signed = (b: Bound) => (b.negative ? -b.int : b.int);
  let lo: bigint | null = null;
  let hi: bigint | null = null;
  if (lower !== null) {
    const v = signed(lower);
    const fractional = lower.frac !== "";
    lo = fractional ? (lower.negative ? v : v + 1n) : (lower.exclusive ? v + 1n : v);
  }
  if (upper !== null) {
    const v = signed(upper);
    const fractional = upper.frac !== "";
    hi = fractional ? (upper.negative ? v - 1n : v) : (upper.exclusive ? v - 1n : v);
  }
  const limit = 10n ** BigInt(INTEGER_DIGITS) - 1n;
  lo = lo === null || lo < -limit ? -limit : lo;
  hi = hi === null || hi > limit ? limit : hi;
  if (lo > hi) throw new SchemaError(path, "minimum", `${path}: no integer lies within the bounds`);
  const alts: string[] = [];
  if (hi >= 0n) alts.push(naturals(lo > 0n ? lo : 0n, hi));
  if (lo < 0n) {
    const magnitudes = naturals(hi < 0n ? -hi : 1n, -lo);
    alts.push(`"-" ${magnitudes}`);
  }
  return group(alts);
}

/** Decimals within the bounds, written without exponent. */
export function numberRange(lower: Bound | null, upper: Bound | null, path: string): string {
  const digits = Math.max(FRACTION_DIGITS, lower?.frac.length ?? 0, upper?.frac.length ?? 0);
  const zero: Bound = { negative: false, int: 0n, frac: "", exclusive: false };
  const alts: string[] = [];
  // x ≥ 0 part: magnitude in [max(lower, 0), upper].
  if (upper === null || !upper.negative || isZero(upper)) {
    const lo = lower === null || lower.negative ? zero : lower;
    const m = magnitude(lo, upper, digits);
    if (m !== null) alts.push(m);
  }
  // x < 0 part: "-" then a magnitude in (max(-upper, 0), -lower], never zero.
  if (lower === null || (lower.negative && !isZero(lower))) {
    const lo = upper !== null && upper.negative
      ? { ...upper, negative: false }
      : { ...zero, exclusive: true };
    const hi = lower === null ? null : { ...lower, negative: false };
    const m = magnitude(lo, hi, digits);
    if (m !== null) alts.push(`"-" ${m}`);
  }
  if (alts.length === 0) {
    throw new SchemaError(path, "minimum", `${path}: no number lies within the bounds`);
  }
  return group(alts);
}

/** Non-negative decimals `I[.F]` with lo ≤ x ≤ hi (hi null: no upper bound), or null when none. */
function magnitude(lo: Bound, hi: Bound | null, digits: number): string | null {
  const limit = 10n ** BigInt(INTEGER_DIGITS) - 1n;
  const hiInt = hi === null ? limit : hi.int;
  if (lo.int > hiInt) return null;
  const anyFrac = `("." [0-9]{1,${digits}})?`;
  const alts: string[] = [];
  /** Integer part n with fraction F constrained by fLo/fHi (null: free); `bare` whether "n" alone fits. */
  const withFraction = (n: bigint, fLo: Frac | null, fHi: Frac | null, bare: boolean) => {
    const f = fraction(fLo, fHi, digits);
    const parts = [...(bare ? [`""`] : []), ...(f === null ? [] : [`"." ${f}`])];
    if (parts.length > 0) alts.push(`"${n}" ${group(parts)}`);
  };
  const loF: Frac = { digits: lo.frac, strict: lo.exclusive };
  const hiF: Frac | null = hi === null ? null : { digits: hi.frac, strict: hi.exclusive };
  const bareLo = lo.frac === "" && !lo.exclusive;
  const bareHi = hi === null || hi.frac !== "" || !hi.exclusive;
  if (lo.int === hiInt && hi !== null) {
    withFraction(lo.int, loF, hiF, bareLo && bareHi);
    return alts.length === 0 ? null : group(alts);
  }
  withFraction(lo.int, loF, null, bareLo);
  if (lo.int + 1n <= hiInt - (hi === null ? 0n : 1n)) {
    alts.push(`${naturals(lo.int + 1n, hiInt - (hi === null ? 0n : 1n))} ${anyFrac}`);
  }
  if (hi !== null) withFraction(hiInt, null, hiF, bareHi);
  return alts.length === 0 ? null : group(alts);
}

/** A fraction bound: digits after the point (no trailing zeros) and whether it is excluded. */
interface Frac {
  readonly digits: string;
  readonly strict: boolean;
}

/**
 * Digit strings F of 1..`max` digits with lo ≤ 0.F ≤ hi (null: unbounded on
 * that side; strict bounds exclude equality), or null when there is none.
 */
function fraction(lo: Frac | null, hi: Frac | null, max: number): string | null {
  if (lo !== null && lo.digits === "" && !lo.strict) lo = null; // ≥ 0 holds for every fraction
  const go = (lo: Frac | null, hi: Frac | null, len: number): string | null => {
    // Options: stop here (the rest reads as zeros), or write one more digit.
    const alts: string[] = [];
    const stopOk = len > 0 &&
      (lo === null || (lo.digits === "" && !lo.strict)) &&
      (hi === null || !(hi.digits === "" && hi.strict));
    if (stopOk) alts.push(`""`);
    if (len < max) {
      const a = lo === null ? 0 : Number(lo.digits[0] ?? "0");
      // A bound of zero from above (hi.digits "") allows only zero digits.
      const c = hi === null ? 9 : Number(hi.digits[0] ?? "0");
      if (a <= c) {
        const restLo = (
          d: number,
        ) => (lo !== null && d === a ? { digits: lo.digits.slice(1), strict: lo.strict } : null);
        const restHi = (
          d: number,
        ) => (hi !== null && d === c ? { digits: hi.digits.slice(1), strict: hi.strict } : null);
        const free = freeDigits(len + 1, max);
        const from = lo === null ? a : a + 1;
        const to = hi === null ? c : c - 1;
        if (from <= to) alts.push(`${digitClass(from, to)} ${free}`);
        for (const d of new Set([a, c])) {
          if ((d === a && lo !== null) || (d === c && hi !== null)) {
            const rest = go(restLo(d), restHi(d), len + 1);
            if (rest !== null) alts.push(`"${d}" ${rest}`);
          }
        }
      }
    }
    return alts.length === 0 ? null : group(alts);
  };
  return go(lo, hi, 0);
}

/** Any further digits once `len` digits were written (at most `max` in all). */
function freeDigits(len: number, max: number): string {
  return len >= max ? `""` : `[0-9]{0,${max - len}}`;
}

function digitClass(from: number, to: number): string {
  return from === to ? `"${from}"` : `[${from}-${to}]`;
}

/** Natural numbers in [lo, hi] without leading zeros. */
export function naturals(lo: bigint, hi: bigint): string {
  const alts: string[] = [];
  if (lo === 0n) {
    alts.push(`"0"`);
    lo = 1n;
  }
  for (let width = String(lo).length; width <= String(hi).length && lo <= hi; width++) {
    const top = 10n ** BigInt(width) - 1n;
    const end = hi < top ? hi : top;
    if (lo <= end) alts.push(fixedWidth(String(lo), String(end)));
    lo = top + 1n;
  }
  return group(alts);
}

/** Digit strings of one width between `a` and `b` (same length, a ≤ b). */
function fixedWidth(a: string, b: string): string {
  if (a.length === 0) return `""`;
  const rest = a.length - 1;
  const any = rest === 0 ? "" : ` [0-9]{${rest}}`;
  const a0 = Number(a[0]);
  const b0 = Number(b[0]);
  if (a0 === b0) return `"${a0}" ${fixedWidth(a.slice(1), b.slice(1))}`;
  const lowFull = /^0*$/.test(a.slice(1));
  const highFull = /^9*$/.test(b.slice(1));
  const alts: string[] = [];
  const from = lowFull ? a0 : a0 + 1;
  const to = highFull ? b0 : b0 - 1;
  if (!lowFull) alts.push(`"${a0}" ${fixedWidth(a.slice(1), "9".repeat(rest))}`);
  if (from <= to) alts.push(`${digitClass(from, to)}${any}`);
  if (!highFull) alts.push(`"${b0}" ${fixedWidth("0".repeat(rest), b.slice(1))}`);
  return group(alts);
}
