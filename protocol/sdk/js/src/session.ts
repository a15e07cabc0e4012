/**
 * One logical session with an agent: the current connection, `hello`, requests matched to
 * replies by `req`, and transparent reconnection.
 *
 * Every request is an {@link Outstanding}, kept until it is done. When the connection drops,
 * the session dials again (with backoff, for up to `reconnectTimeoutMs`), says `hello`, checks
 * the `boot_id`, and asks each outstanding request how to continue on the new connection: a
 * followed run re-attaches from the next sequence number it has not received, an idempotent
 * request is sent again, and any other request fails with {@link ConnectionLostError}.
 *
 * @module
 */
import type * as net from "node:net";
import {
  BootChangedError,
  BoxError,
  ClosedError,
  ConnectionLostError,
  MalformedReplyError,
  RequestTimeoutError,
  UnauthorizedError,
  BadVersionError,
  errorFromReply,
} from "./errors.js";
import { openStream, formatAddress, type Address } from "./transport.js";
import { FrameReader, encodeFrame, num, text, type Message } from "./wire.js";

/** The protocol version this SDK speaks. */
export const PROTOCOL_VERSION = 1;
/** The SDK's name in `hello.client`. */
export const CLIENT_NAME = "boxd-js/0.1.0";
/** The largest frame accepted before `hello` says the agent's `max_event`. */
const PRE_HELLO_MAX_FRAME = 1 << 20;

/** Settings of a session, all in milliseconds. */
export interface SessionOptions {
  /** How long to wait for the socket to open (and a hybrid vsock handshake). */
  connectTimeoutMs: number;
  /** How long to wait for the reply to one request. Never stops a run. */
  requestTimeoutMs: number;
  /** How long to keep trying to reconnect after the connection drops. 0: do not reconnect. */
  reconnectTimeoutMs: number;
  /** While runs are followed, ping the agent after this long without a message. 0: never. */
  heartbeatMs: number;
  /** The token for `hello`, if the agent has one. */
  token: string | undefined;
}

/** What the agent said in its `hello` reply. */
export interface HelloInfo {
  readonly agent: string;
  readonly bootId: string;
  readonly pid: number;
  readonly capabilities: readonly string[];
  readonly limits: Readonly<Record<string, number>>;
}

/**
 * A request in progress. The session calls `first()` to send it the first time, `again()` after
 * a reconnect, `onMessage()` for each message carrying its `req`, and `fail()` when it cannot go
 * on.
 */
export interface Outstanding {
  /** The request to send first. */
  first(): Message;
  /** The request to send on a new connection, or `null` when repeating it is not safe. */
  again(): Message | null;
  /** Handles one message carrying this request's `req`; returns true when nothing more is due. */
  onMessage(m: Message): boolean;
  /** Ends it with an error. */
  fail(err: BoxError): void;
  /** True while it follows a run (heartbeats are sent only then). */
  readonly follows: boolean;
}

interface Entry {
  readonly req: number;
  readonly o: Outstanding;
  /** The connection generation it was last sent on; 0: not sent yet. */
  sentGen: number;
  /** A first message has come for it. */
  answered: boolean;
}

interface Conn {
  readonly socket: net.Socket;
  readonly gen: number;
}

/**
 * Resolves after ms milliseconds. The timer keeps the process alive: between two reconnect
 * attempts there is no socket, and the caller is waiting for what the session owes it.
 */
function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export class Session {
  readonly address: Address;
  readonly options: SessionOptions;
  hello: HelloInfo | null = null;
  #conn: Conn | null = null;
  #gen = 0;
  #nextReq = 1;
  #entries = new Map<number, Entry>();
  #reconnecting: Promise<void> | null = null;
  #closed = false;
  #lastRecv = Date.now();
  #pinging = false;
  #heartbeat: NodeJS.Timeout | null = null;
  #holds = new Set<object>();
  /** Called after each successful reconnect (same boot). */
  onReconnect: (() => void) | null = null;
  /** How many times the session has reconnected. */
  reconnects = 0;

  constructor(address: Address, options: SessionOptions) {
    this.address = address;
    this.options = options;
  }

  /** Opens the first connection. Rejects with the error of the first attempt. */
  async open(): Promise<void> {
    const { conn, hello } = await this.#dial();
    this.hello = hello;
    this.#install(conn);
    if (this.options.heartbeatMs > 0) {
      this.#heartbeat = setInterval(() => this.#beat(), Math.max(50, this.options.heartbeatMs / 2));
      this.#heartbeat.unref();
    }
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Allocates a `req` for a new request. */
  nextReq(): number {
    return this.#nextReq++;
  }

  /** Registers an outstanding request and sends it (now, or once connected). */
  track(req: number, o: Outstanding): void {
    if (this.#closed) {
      o.fail(new ClosedError());
      return;
    }
    const e: Entry = { req, o, sentGen: 0, answered: false };
    this.#entries.set(req, e);
    if (this.#conn) this.#send(e, o.first());
    else this.#ensureReconnecting(null);
  }

  /** Forgets an outstanding request: later messages with its `req` are ignored. */
  untrack(req: number): void {
    this.#entries.delete(req);
  }

  /**
   * Sends one request and resolves with its reply (rejects with its typed error).
   * `idempotent` requests are sent again after a reconnect; others fail with ConnectionLostError.
   */
  request(msg: Message, opts: { idempotent: boolean; timeoutMs?: number }): Promise<Message> {
    const timeoutMs = opts.timeoutMs ?? this.options.requestTimeoutMs;
    return new Promise((resolve, reject) => {
      const req = this.nextReq();
      let timer: NodeJS.Timeout | null = null;
      const done = (): void => {
        if (timer) clearTimeout(timer);
        this.untrack(req);
      };
      const full = { ...msg, req };
      this.track(req, {
        follows: false,
        first: () => full,
        again: () => (opts.idempotent ? full : null),
        onMessage: (m) => {
          done();
          if (m.type === "error") reject(errorFromReply(m));
          else resolve(m);
          return true;
        },
        fail: (err) => {
          done();
          reject(err);
        },
      });
      if (timeoutMs > 0 && this.#entries.has(req)) {
        timer = setTimeout(() => {
          this.untrack(req);
          reject(
            new RequestTimeoutError(
              `no reply to ${String(msg.type)} within ${timeoutMs} ms (requestTimeoutMs; the agent may be overloaded or unreachable)`,
            ),
          );
        }, timeoutMs);
        timer.unref();
      }
    });
  }

  /** Stops reading from the agent while `holder` is held (a slow stream consumer). */
  hold(holder: object): void {
    this.#holds.add(holder);
    this.#conn?.socket.pause();
  }

  /** Releases a hold from {@link hold}. */
  release(holder: object): void {
    if (this.#holds.delete(holder) && this.#holds.size === 0) this.#conn?.socket.resume();
  }

  /** Closes the connection for good; everything outstanding fails with ClosedError. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#heartbeat) clearInterval(this.#heartbeat);
    const conn = this.#conn;
    this.#conn = null;
    conn?.socket.destroy();
    this.#failAll(new ClosedError());
  }

  /** Cuts the current connection as if the network had dropped it (for tests). */
  dropConnection(): void {
    this.#conn?.socket.destroy();
  }

  #send(e: Entry, msg: Message): void {
    const conn = this.#conn;
    if (!conn) return;
    e.sentGen = conn.gen;
    conn.socket.write(encodeFrame(msg));
  }

  #failAll(err: BoxError): void {
    const entries = [...this.#entries.values()];
    this.#entries.clear();
    for (const e of entries) e.o.fail(err);
  }

  /** Opens a socket and says hello; resolves with the connection not yet installed. */
  async #dial(): Promise<{ conn: Conn; hello: HelloInfo }> {
    const timeoutMs = this.options.connectTimeoutMs;
    const { socket, head } = await openStream(this.address, timeoutMs);
    const gen = ++this.#gen;
    const where = formatAddress(this.address);
    return new Promise((resolve, reject) => {
      const reader = new FrameReader(PRE_HELLO_MAX_FRAME);
      const timer = setTimeout(
        () => fail(new RequestTimeoutError(`${where}: no hello reply within ${this.options.requestTimeoutMs} ms (requestTimeoutMs)`)),
        this.options.requestTimeoutMs,
      );
      const fail = (err: BoxError): void => {
        cleanup();
        socket.destroy();
        reject(err);
      };
      const onData = (chunk: Buffer): void => {
        let msgs: Message[];
        try {
          msgs = reader.push(chunk);
        } catch (e) {
          fail(e as BoxError);
          return;
        }
        for (const m of msgs) {
          if (m.req !== "hello") continue;
          if (m.type === "error") {
            fail(errorFromReply(m));
            return;
          }
          const limits: Record<string, number> = {};
          if (m.limits && typeof m.limits === "object") {
            for (const [k, v] of Object.entries(m.limits as Record<string, unknown>)) {
              const n = num(v);
              if (n !== null) limits[k] = n;
            }
          }
          const hello: HelloInfo = {
            agent: text(m.agent),
            bootId: text(m.boot_id),
            pid: num(m.pid) ?? 0,
            capabilities: Array.isArray(m.capabilities) ? m.capabilities.map(String) : [],
            limits,
          };
          cleanup();
          // Frames from the agent are at most max_event bytes; take the default if absent.
          reader.maxFrame = limits.max_event ?? PRE_HELLO_MAX_FRAME;
          const conn: Conn = { socket, gen };
          this.#wire(conn, reader);
          resolve({ conn, hello });
          return;
        }
      };
      const onClose = (): void =>
        fail(new ConnectionLostError(`${where}: the agent closed the connection before its hello reply`));
      const onError = (): void => undefined; // close follows
      const cleanup = (): void => {
        clearTimeout(timer);
        socket.off("data", onData);
        socket.off("close", onClose);
        socket.off("error", onError);
      };
      socket.on("data", onData);
      socket.on("close", onClose);
      socket.on("error", onError);
      const hello: Message = { type: "hello", req: "hello", version: PROTOCOL_VERSION, client: CLIENT_NAME };
      if (this.options.token !== undefined) hello.token = this.options.token;
      socket.write(encodeFrame(hello));
      if (head.length > 0) onData(head);
    });
  }

  /** Attaches the message reader of an established connection (not yet the current one). */
  #wire(conn: Conn, reader: FrameReader): void {
    conn.socket.on("data", (chunk: Buffer) => {
      if (this.#conn !== conn) return;
      this.#lastRecv = Date.now();
      let msgs: Message[];
      try {
        msgs = reader.push(chunk);
      } catch (e) {
        // The stream can no longer be trusted: drop it, reconnect and re-attach.
        conn.socket.destroy(e as Error);
        return;
      }
      for (const m of msgs) this.#dispatch(m);
    });
    conn.socket.on("error", () => undefined); // close follows
    conn.socket.on("close", () => {
      if (this.#conn !== conn) return;
      this.#conn = null;
      this.#ensureReconnecting(new ConnectionLostError(`${formatAddress(this.address)}: the connection dropped`));
    });
  }

  #install(conn: Conn): void {
    this.#conn = conn;
    this.#lastRecv = Date.now();
    if (this.#holds.size > 0) conn.socket.pause();
    const entries = [...this.#entries.values()].sort((a, b) => a.req - b.req);
    for (const e of entries) {
      if (e.sentGen === 0) {
        this.#send(e, e.o.first());
        continue;
      }
      const msg = e.o.again();
      if (msg) {
        e.answered = false;
        this.#send(e, msg);
      } else {
        this.#entries.delete(e.req);
        e.o.fail(
          new ConnectionLostError(
            "the connection dropped before the agent answered a request that is not safe to repeat " +
              "(it may or may not have taken effect)",
          ),
        );
      }
    }
  }

  #dispatch(m: Message): void {
    const req = num(m.req);
    if (req === null) {
      if (m.type !== "error" || m.req !== undefined) return;
      // An error without req answers the oldest request still unanswered (PROTOCOL.md 6).
      let oldest: Entry | null = null;
      for (const e of this.#entries.values()) if (!e.answered && (!oldest || e.req < oldest.req)) oldest = e;
      if (!oldest) return;
      this.#entries.delete(oldest.req);
      oldest.o.fail(errorFromReply(m));
      return;
    }
    const e = this.#entries.get(req);
    if (!e) return; // a late reply to a request given up on
    e.answered = true;
    if (e.o.onMessage(m)) this.#entries.delete(req);
  }

  #ensureReconnecting(cause: BoxError | null): void {
    if (this.#closed || this.#reconnecting || this.#conn) return;
    this.#reconnecting = this.#reconnect(cause).finally(() => {
      this.#reconnecting = null;
    });
  }

  async #reconnect(cause: BoxError | null): Promise<void> {
    const limit = this.options.reconnectTimeoutMs;
    const deadline = Date.now() + limit;
    let delay = 25;
    let last: unknown = cause;
    for (;;) {
      if (this.#closed) return;
      try {
        const { conn, hello } = await this.#dial();
        if (this.#closed) {
          conn.socket.destroy();
          return;
        }
        const old = this.hello;
        this.hello = hello;
        if (old && old.bootId !== hello.bootId) {
          // What was sent to the old agent is gone with it; requests made while reconnecting
          // were never sent and go to the new one.
          const err = new BootChangedError(old.bootId, hello.bootId);
          for (const e of [...this.#entries.values()]) {
            if (e.sentGen === 0) continue;
            this.#entries.delete(e.req);
            e.o.fail(err);
          }
          this.#install(conn);
          return;
        }
        this.reconnects++;
        this.#install(conn);
        this.onReconnect?.();
        return;
      } catch (e) {
        last = e;
        if (e instanceof UnauthorizedError || e instanceof BadVersionError) {
          this.#failAll(e);
          return;
        }
      }
      if (limit <= 0 || Date.now() + delay > deadline) {
        const why = last instanceof Error ? last.message : "the connection dropped";
        this.#failAll(
          new ConnectionLostError(
            `${formatAddress(this.address)}: lost the connection and could not reconnect within ` +
              `${limit} ms (reconnectTimeoutMs): ${why}`,
            last,
          ),
        );
        return;
      }
      await sleep(delay);
      delay = Math.min(delay * 2, 1000);
    }
  }

  #beat(): void {
    const conn = this.#conn;
    if (!conn || this.#pinging) return;
    if (Date.now() - this.#lastRecv < this.options.heartbeatMs) return;
    let follows = false;
    for (const e of this.#entries.values()) if (e.o.follows) follows = true;
    if (!follows) return;
    this.#pinging = true;
    this.request({ type: "ping" }, { idempotent: false })
      .catch((err: unknown) => {
        if (err instanceof RequestTimeoutError && this.#conn === conn) {
          conn.socket.destroy(new MalformedReplyError("no pong to a heartbeat ping"));
        }
      })
      .finally(() => {
        this.#pinging = false;
      });
  }
}
