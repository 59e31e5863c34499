/**
 * Real HTTP servers on 127.0.0.1 for the I/O tests: each started on port 0
 * and closed by the test. Handlers that hang are released when the server
 * closes, so a close never waits on them.
 *
 * @module
 */

/** A request the server saw. */
export interface SeenRequest {
  readonly method: string;
  readonly path: string;
  readonly body: string;
}

/** A running test server. */
export interface TestServer {
  /** `http://127.0.0.1:PORT`. */
  readonly url: string;
  readonly port: number;
  /** Requests seen, bodies read in full (empty when the handler read it itself). */
  readonly requests: SeenRequest[];
  close(): Promise<void>;
}

/** What a handler gets besides the request. */
export interface HandlerContext {
  /** 0-based index of this request on the server. */
  readonly index: number;
  /** Resolves when the server closes: a handler that hangs awaits this. */
  readonly closing: Promise<void>;
}

/**
 * Starts an HTTP server whose handler sees each request with its index.
 *
 * @example
 * ```ts
 * const server = startServer(() => new Response("ok"));
 * await (await fetch(server.url)).text();
 * await server.close();
 * ```
 */
export function startServer(
  handler: (req: Request, ctx: HandlerContext, body: string) => Response | Promise<Response>,
  options: { readBody?: boolean } = {},
): TestServer {
  const requests: SeenRequest[] = [];
  const controller = new AbortController();
  const closing = Promise.withResolvers<void>();
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, signal: controller.signal, onListen() {} },
    async (req) => {
      const index = requests.length;
      const path = new URL(req.url).pathname;
      const seen = { method: req.method, path, body: "" };
      requests.push(seen);
      if (options.readBody !== false && req.body !== null) {
        seen.body = await req.text();
      }
      return await handler(req, { index, closing: closing.promise }, seen.body);
    },
  );
  const port = server.addr.port;
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    requests,
    async close() {
      closing.resolve();
      controller.abort();
      await server.finished;
    },
  };
}

/**
 * A response whose body sends `prefix` and then breaks the connection.
 *
 * @example
 * ```ts
 * const server = startServer(() => brokenBody("partial"));
 * ```
 */
export function brokenBody(prefix: string): Response {
  return new Response(
    new ReadableStream<Uint8Array>({
      start(out) {
        out.enqueue(new TextEncoder().encode(prefix));
      },
      async pull(out) {
        await new Promise((r) => setTimeout(r, 20));
        out.error(new Error("connection dropped by the test server"));
      },
    }),
  );
}

/** A TCP proxy that drops the first connections mid-request. */
export interface DroppingProxy {
  readonly url: string;
  /** Connections accepted so far. */
  readonly accepted: () => number;
  close(): Promise<void>;
}

/**
 * A TCP proxy to `targetPort` that reads a little of each of the first
 * `dropFirst` connections and then closes it (the client sees its upload cut
 * mid-body); later connections are forwarded.
 *
 * @example
 * ```ts ignore
 * const proxy = startDroppingProxy(server.port, 1);
 * ```
 */
export function startDroppingProxy(targetPort: number, dropFirst: number): DroppingProxy {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const open = new Set<Deno.Conn>();
  const work: Promise<unknown>[] = [];
  let accepted = 0;
  const closeConn = (c: Deno.Conn) => {
    if (!open.delete(c)) return;
    try {
      c.close();
    } catch { /* already closed */ }
  };
  const serve = async (conn: Deno.Conn, index: number) => {
    open.add(conn);
    if (index < dropFirst) {
      await conn.read(new Uint8Array(64)).catch(() => null);
      closeConn(conn);
      return;
    }
    const upstream = await Deno.connect({ hostname: "127.0.0.1", port: targetPort });
    open.add(upstream);
    const pump = async (from: Deno.Conn, to: Deno.Conn) => {
      const buf = new Uint8Array(16 * 1024);
      try {
        while (true) {
          const n = await from.read(buf);
          if (n === null) break;
          let at = 0;
          while (at < n) at += await to.write(buf.subarray(at, n));
        }
      } catch { /* closed */ }
      closeConn(from);
      closeConn(to);
    };
    await Promise.all([pump(conn, upstream), pump(upstream, conn)]);
  };
  const loop = (async () => {
    try {
      for await (const conn of listener) work.push(serve(conn, accepted++));
    } catch { /* listener closed */ }
  })();
  const addr = listener.addr as Deno.NetAddr;
  return {
    url: `http://127.0.0.1:${addr.port}`,
    accepted: () => accepted,
    async close() {
      listener.close();
      await loop;
      for (const c of [...open]) closeConn(c);
      await Promise.all(work);
    },
  };
}
