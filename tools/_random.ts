/**
 * Seeded random numbers for the fixtures: mulberry32 uniforms and
 * polar-method normals, plus a string hash so every tensor gets its own stream.
 *
 * @module
 */

/** A deterministic source of uniforms in [0, 1) and standard normals. */
export class Rng {
  private state: number;
  private spare: number | null = null;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** A uniform in [0, 1) (mulberry32). */
  uniform(): number {
    let t = (this.state = (this.state + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }

  /** A standard normal (Marsaglia's polar method, using both outputs). */
  normal(): number {
    if (this.spare !== null) {
      const s = this.spare;
      this.spare = null;
      return s;
    }
    const [a, b] = this.pair();
    this.spare = b;
    return a;
  }

  /**
   * Fills out[start, start + count) with mean + std·N(0, 1): the same values
   * as calling normal() that many times.
   */
  fillNormal(out: Float32Array, start: number, count: number, mean: number, std: number): void {
    let i = start;
    const end = start + count;
    if (this.spare !== null && i < end) out[i++] = mean + std * this.normal();
    for (; i + 1 < end; i += 2) {
      const [a, b] = this.pair();
      out[i] = mean + std * a;
      out[i + 1] = mean + std * b;
    }
    if (i < end) out[i] = mean + std * this.normal();
  }

  /** Two independent standard normals; no trigonometry, so it is fast. */
  private pair(): [number, number] {
    for (;;) {
      const u = 2 * this.uniform() - 1, v = 2 * this.uniform() - 1;
      const s = u * u + v * v;
      if (s > 0 && s < 1) {
        const f = Math.sqrt((-2 * Math.log(s)) / s);
        return [u * f, v * f];
      }
    }
  }
}

/** FNV-1a hash of a string, for deriving per-tensor seeds. */
export function hashString(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 0x01000193);
  return h >>> 0;
}
