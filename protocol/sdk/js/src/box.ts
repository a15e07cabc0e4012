/**
 * `Box`: a connection to one box's agent.
 *
 * @module
 */
import { readFileSync } from "node:fs";
import { BoxError } from "./errors.js";
import { Exec } from "./exec.js";
import { Files } from "./files.js";
import { Session, type HelloInfo } from "./session.js";
import { DEFAULT_SOCKET, parseAddress, type Address } from "./transport.js";
import { num, text, type Message } from "./wire.js";

/** Options of {@link Box.connect}. Times are in milliseconds. */
export interface ConnectOptions {
  /**
   * Where boxd listens: `unix:PATH` or a path, `fc:UDS_PATH:PORT` (a Firecracker or Cloud
   * Hypervisor vsock unix socket), or `vsock:CID:PORT` (not available in Node.js: the error says
   * what to use instead). Default: `$BOXD_SOCKET`, then `/run/boxd.sock`.
   */
  socket?: string;
  /** The agent's token, when it has one. */
  token?: string;
  /** A file holding the token (trailing newlines are dropped, as boxd does). */
  tokenFile?: string;
  /** Opening the socket (and a hybrid vsock handshake) may take this long. Default 10000. */
  connectTimeoutMs?: number;
  /**
   * The client's limit on waiting for the agent's reply to one request (hello, started, cancel,
   * logs...). Default 30000. It never stops a run and does not limit how long a run may take:
   * that is the run's own `timeout` option (exec) and `run.wait({ timeoutMs })` (client side).
   */
  requestTimeoutMs?: number;
  /**
   * After a dropped connection, keep trying to reconnect for this long before failing what is
   * outstanding with ConnectionLostError. Default 30000; 0 disables reconnecting.
   */
  reconnectTimeoutMs?: number;
  /**
   * While runs are followed and nothing has come from the agent for this long, send a ping; no
   * pong within `requestTimeoutMs` counts as a dropped connection. Default 10000; 0: never.
   */
  heartbeatMs?: number;
}

/** One entry of {@link Box.list}. */
export type RunSummary = Readonly<Record<string, unknown>> & {
  readonly id: string;
  readonly state: "running" | "ended";
};

/** A connection to one box's agent (boxd). */
export class Box {
  /** Runs: `box.exec.command(...)`, `box.exec.code(...)`, `start`, `stream`, `attach`. */
  readonly exec: Exec;
  /** Files: upload, download, read, write, list (needs the agent's file capability). */
  readonly files: Files;
  readonly #session: Session;

  private constructor(session: Session) {
    this.#session = session;
    this.exec = new Exec(session);
    this.files = new Files(session);
  }

  /** Connects and says hello. Rejects with a BoxError (UnauthorizedError, ConnectError, ...). */
  static async connect(opts: ConnectOptions = {}): Promise<Box> {
    const socket = opts.socket ?? process.env.BOXD_SOCKET ?? DEFAULT_SOCKET;
    const address = parseAddress(socket);
    let token = opts.token;
    if (token === undefined && opts.tokenFile !== undefined) {
      try {
        token = readFileSync(opts.tokenFile, "utf8").replace(/[\r\n]+$/, "");
      } catch (e) {
        throw new BoxError("bad_address", `cannot read tokenFile ${opts.tokenFile}: ${(e as Error).message}`);
      }
    }
    const session = new Session(address, {
      connectTimeoutMs: opts.connectTimeoutMs ?? 10000,
      requestTimeoutMs: opts.requestTimeoutMs ?? 30000,
      reconnectTimeoutMs: opts.reconnectTimeoutMs ?? 30000,
      heartbeatMs: opts.heartbeatMs ?? 10000,
      token,
    });
    await session.open();
    return new Box(session);
  }

  /** The address this box was reached at. */
  get address(): Address {
    return this.#session.address;
  }

  /** The agent's `hello`: name, boot id, pid, capabilities, limits (of the latest connection). */
  get agent(): HelloInfo {
    return this.#session.hello as HelloInfo;
  }

  /** The agent's boot id; a change means the box restarted (BootChangedError). */
  get bootId(): string {
    return this.agent.bootId;
  }

  /** What the agent can do (`exec`, `code`, `attach`, ...). */
  get capabilities(): readonly string[] {
    return this.agent.capabilities;
  }

  /** How many times the connection has been re-established. */
  get reconnects(): number {
    return this.#session.reconnects;
  }

  /** Round trip to the agent; resolves with the agent's clock, ns since the epoch. */
  async ping(): Promise<bigint> {
    const r = await this.#session.request({ type: "ping" }, { idempotent: true });
    return typeof r.ts_ns === "bigint" ? r.ts_ns : BigInt(num(r.ts_ns) ?? 0);
  }

  /** The agent's `info` (uptime, counters, languages, limits), as a plain object. */
  async info(): Promise<Readonly<Record<string, unknown>>> {
    return plain(await this.#session.request({ type: "info" }, { idempotent: true })) as Record<string, unknown>;
  }

  /** The runs the agent knows, as plain objects (PROTOCOL.md 4.7 `list`). */
  async list(): Promise<RunSummary[]> {
    const r = await this.#session.request({ type: "list" }, { idempotent: true });
    const runs = Array.isArray(r.runs) ? r.runs : [];
    return runs.map((x) => plain(x) as RunSummary);
  }

  /** Cuts the current connection as a network failure would (for testing reconnects). */
  dropConnection(): void {
    this.#session.dropConnection();
  }

  /**
   * Closes the connection. Runs go on in the box; what this client was waiting for fails with
   * ClosedError.
   */
  close(): void {
    this.#session.close();
  }
}

/** Turns a decoded message into plain JSON-friendly values (bigints to numbers, bin to text). */
function plain(v: unknown): unknown {
  if (typeof v === "bigint") return Number(v);
  if (v instanceof Uint8Array) return text(v);
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === "object") {
    const out: Message = {};
    for (const [k, x] of Object.entries(v as Message)) if (k !== "req" && k !== "type") out[k] = plain(x);
    return out;
  }
  return v;
}
