/**
 * A run: one command or snippet in the box, followed live by this client.
 *
 * @module
 */
import { TextDecoder } from "node:util";
import { BoxError, RequestTimeoutError, WaitTimeoutError, errorFromReply } from "./errors.js";
import type { Outstanding, Session } from "./session.js";
import { big, bytes, isoFromNs, num, text, type Message } from "./wire.js";

/** How a run ended (PROTOCOL.md 4.3); `"running"` until then. */
export type RunStatus = "running" | "completed" | "failed" | "cancelled";

/** Why a run ended: `"exit"`, `"signal"`, `"timeout"`, `"cancel"`, `"spawn"` or `"oom"`. */
export type RunReason = "exit" | "signal" | "timeout" | "cancel" | "spawn" | "oom";

/** One record of a run's retained log, from {@link Run.logs}. */
export interface RunLog {
  /** When the agent read the line: ISO-8601 UTC with nanoseconds. */
  timestamp: string;
  /** `"info"` for stdout, `"error"` for stderr. */
  level: "info" | "error";
  /** The line without its final newline. */
  message: string;
  /** The record's sequence number. */
  seq: number;
  /** The stream it came from. */
  stream: "stdout" | "stderr";
}

/** A piece of a run's output as it arrives: one line (or a piece of a long or unfinished one). */
export interface OutputChunk {
  type: "output";
  stream: "stdout" | "stderr";
  /** The text, newline included when the line is complete. */
  data: string;
  /** When the agent read it: ISO-8601 UTC with nanoseconds. */
  timestamp: string;
  /** The record's sequence number (shared by both streams, from 0). */
  seq: number;
}

/** The last item of {@link Exec.stream}: the run has ended. */
export interface ExitItem {
  type: "exit";
  status: Exclude<RunStatus, "running">;
  exitCode: number;
  exit_code: number;
  /** The ended run, with its result, stdout and stderr. */
  run: Run;
}

/** Items of {@link Exec.stream}: output chunks, then one exit item. */
export type StreamItem = OutputChunk | ExitItem;

/** Options of {@link Run.wait}. */
export interface WaitOptions {
  /**
   * Give up waiting after this many ms with a {@link WaitTimeoutError}. The run goes on; this is
   * the client's limit, not the run's (that is the `timeout` of exec).
   */
  timeoutMs?: number;
}

/** Where a run's output goes as it arrives. */
export interface RunCallbacks {
  onStdout?: ((data: string) => void) | undefined;
  onStderr?: ((data: string) => void) | undefined;
}

interface Deferred<T> {
  promise: Promise<T>;
  resolve(v: T): void;
  reject(e: unknown): void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Marked handled: a run whose wait() nobody calls must not crash the process when it fails.
  promise.catch(() => undefined);
  return { promise, resolve, reject };
}

/**
 * A run. Its fields fill in as it goes: `id` and `pid` once started, the rest at its end.
 * `result` is stdout (one final newline dropped) when the run completed and stderr otherwise;
 * `output` is stdout with one final newline dropped.
 */
export class Run {
  /** The run's id (chosen by this client, unique per box connection). */
  readonly id: string;
  /** The main process's pid (0 while it is being started). */
  pid = 0;
  status: RunStatus = "running";
  /** The exit code (128+N for signal N), `null` until the end. */
  exit_code: number | null = null;
  /** The same as `exit_code`. */
  exitCode: number | null = null;
  /** The signal that killed the main process, else `null`. */
  signal: number | null = null;
  /** Why it ended, `null` until then. */
  reason: RunReason | null = null;
  /** stdout when completed, stderr otherwise; one final newline dropped. */
  result = "";
  /** stdout with one final newline dropped. */
  output = "";
  /** The run's stdout (its last `max_event / 4` bytes at most; see `outputTruncated`). */
  stdout = "";
  /** The run's stderr (likewise capped). */
  stderr = "";
  /** True when bytes are missing from result/stdout/stderr (cap or retention). */
  outputTruncated = false;
  /** Wall time from start to end, ms. */
  duration_ms: number | null = null;
  /** The agent's `end` message as received, for the fields not copied above (cpu, rss, seqs). */
  end: Readonly<Record<string, unknown>> | null = null;
  /** Records the agent dropped by retention before this client could read them (`gap`). */
  droppedRecords = 0;

  readonly #session: Session;
  readonly #req: number;
  readonly #start: Message;
  #started = false;
  #nextSeq = 0;
  #ended = deferred<Run>();
  #startedD = deferred<Run>();
  #listener: ((c: OutputChunk) => void) | null;
  #decoders: [TextDecoder, TextDecoder] = [new TextDecoder(), new TextDecoder()];
  #partial: [boolean, boolean] = [false, false];
  #callbacks: RunCallbacks;

  /** @internal Made by {@link Exec}; not for direct use. */
  constructor(
    session: Session,
    id: string,
    start: Message,
    callbacks: RunCallbacks,
    listener: ((c: OutputChunk) => void) | null,
  ) {
    this.#session = session;
    this.id = id;
    this.#req = session.nextReq();
    this.#start = { ...start, req: this.#req };
    this.#callbacks = callbacks;
    this.#listener = listener;
    const o: Outstanding = {
      follows: true,
      first: () => this.#start,
      again: () =>
        this.#started
          ? { type: "attach", req: this.#req, id: this.id, from_seq: this.#nextSeq, output: true }
          : this.#start, // a retry by id is safe (PROTOCOL.md 4.1)
      onMessage: (m) => this.#onMessage(m),
      fail: (err) => this.#fail(err),
    };
    session.track(this.#req, o);
    // The reply to exec/code/attach is bounded by requestTimeoutMs like any reply; the run's
    // end is not (that is the run's own timeout, or wait({ timeoutMs })).
    const limit = session.options.requestTimeoutMs;
    if (limit > 0 && !session.closed) {
      const timer = setTimeout(() => {
        if (this.#started || this.ended) return;
        session.untrack(this.#req);
        this.#fail(
          new RequestTimeoutError(
            `no reply to ${String(start.type)} of run ${id} within ${limit} ms (requestTimeoutMs); ` +
              `the run may still start in the box: box.exec.attach("${id}") follows it`,
          ),
        );
      }, limit);
      timer.unref();
      this.#startedD.promise.then(
        () => clearTimeout(timer),
        () => clearTimeout(timer),
      );
    }
  }

  /** @internal Resolves once the agent has started the run (rejects with its error). */
  get started(): Promise<Run> {
    return this.#startedD.promise;
  }

  /** The seq of the next record this client has not received. */
  get nextSeq(): number {
    return this.#nextSeq;
  }

  /** Resolves with this run once it has ended. */
  async wait(opts: WaitOptions = {}): Promise<Run> {
    if (opts.timeoutMs === undefined) return this.#ended.promise;
    let timer: NodeJS.Timeout | undefined;
    const limit = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new WaitTimeoutError(`run ${this.id} did not end within ${opts.timeoutMs} ms (wait timeoutMs); it is still running`)),
        opts.timeoutMs,
      );
    });
    try {
      return await Promise.race([this.#ended.promise, limit]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Cancels the run: TERM (and CONT) to its whole tree, KILL after the grace period. Resolves
   * once the run has ended, with `status` `"cancelled"` (or how it ended, if it ended first).
   */
  async cancel(opts: { graceMs?: number } = {}): Promise<Run> {
    await this.#session.request({ type: "cancel", id: this.id, grace_ms: opts.graceMs }, { idempotent: true });
    return this.#ended.promise;
  }

  /** Sends a signal (15, "TERM" or "SIGTERM") to the run's process group. */
  async kill(signal: number | string = "TERM"): Promise<void> {
    await this.#session.request({ type: "signal", id: this.id, signal }, { idempotent: false });
  }

  /** Writes to the run's stdin (started with `stdin: true`); `eof` closes it after. */
  async sendStdin(data: string | Uint8Array, opts: { eof?: boolean } = {}): Promise<void> {
    await this.#session.request({ type: "stdin", id: this.id, data, eof: opts.eof }, { idempotent: false });
  }

  /** Closes the run's stdin. */
  async closeStdin(): Promise<void> {
    await this.#session.request({ type: "stdin", id: this.id, eof: true }, { idempotent: true });
  }

  /**
   * The run's retained log, every record from `fromSeq` (default 0), fetched page by page:
   * `[{timestamp, level, message, seq, stream}]`, stdout as level `"info"`, stderr as `"error"`.
   */
  async logs(opts: { fromSeq?: number } = {}): Promise<RunLog[]> {
    const out: RunLog[] = [];
    let from = opts.fromSeq ?? 0;
    for (;;) {
      const page = await this.#session.request({ type: "logs", id: this.id, from_seq: from }, { idempotent: true });
      const lines = Array.isArray(page.lines) ? page.lines : [];
      for (const rec of lines) {
        if (!Array.isArray(rec) || rec.length < 4) continue;
        const err = num(rec[2]) === 2;
        let message = text(rec[3]);
        if (message.endsWith("\n")) message = message.slice(0, -1);
        out.push({
          timestamp: isoFromNs(big(rec[1]) ?? 0n),
          level: err ? "error" : "info",
          message,
          seq: num(rec[0]) ?? 0,
          stream: err ? "stderr" : "stdout",
        });
      }
      const next = num(page.next_seq) ?? from;
      if (page.more !== true || next <= from) return out;
      from = next;
    }
  }

  /** @internal Drops the output listener given at construction (Exec.stream is done). */
  unlisten(): void {
    this.#listener = null;
  }

  /** @internal Whether the run has ended. */
  get ended(): boolean {
    return this.status !== "running";
  }

  /** A plain object of the run's fields (what JSON.stringify shows). */
  toJSON(): Record<string, unknown> {
    return {
      id: this.id,
      status: this.status,
      exit_code: this.exit_code,
      signal: this.signal,
      reason: this.reason,
      result: this.result,
      output: this.output,
      stdout: this.stdout,
      stderr: this.stderr,
      duration_ms: this.duration_ms,
    };
  }

  #onMessage(m: Message): boolean {
    switch (m.type) {
      case "started":
        this.#started = true;
        this.pid = num(m.pid) ?? 0;
        this.#startedD.resolve(this);
        return false;
      case "attached":
        this.#started = true;
        this.#startedD.resolve(this);
        return false;
      case "output":
        if (Array.isArray(m.lines)) for (const rec of m.lines) this.#record(rec);
        return false;
      case "gap": {
        const to = num(m.to_seq) ?? this.#nextSeq;
        if (to > this.#nextSeq) {
          this.droppedRecords += to - this.#nextSeq;
          this.#nextSeq = to;
        }
        return false;
      }
      case "end":
        this.#finish(m);
        return true;
      case "error": {
        const err = errorFromReply(m);
        this.#fail(err);
        return true;
      }
      default:
        return false;
    }
  }

  #record(rec: unknown): void {
    if (!Array.isArray(rec) || rec.length < 4) return;
    const seq = num(rec[0]);
    if (seq === null || seq < this.#nextSeq) return; // already seen (never after a correct re-attach)
    this.#nextSeq = seq + 1;
    const idx = num(rec[2]) === 2 ? 1 : 0;
    const raw = rec[3];
    let data: string;
    if (typeof raw === "string" && !this.#partial[idx]) {
      data = raw;
    } else {
      // A bin record is a piece that may end inside a character: decode the stream as a whole.
      data = this.#decoders[idx].decode(bytes(raw), { stream: true });
      this.#partial[idx] = raw instanceof Uint8Array;
    }
    if (data.length === 0) return;
    this.#deliver({
      type: "output",
      stream: idx === 1 ? "stderr" : "stdout",
      data,
      timestamp: isoFromNs(big(rec[1]) ?? 0n),
      seq,
    });
  }

  #deliver(c: OutputChunk): void {
    const cb = c.stream === "stdout" ? this.#callbacks.onStdout : this.#callbacks.onStderr;
    if (cb) cb(c.data);
    this.#listener?.(c);
  }

  #finish(m: Message): void {
    for (const idx of [0, 1] as const) {
      if (!this.#partial[idx]) continue;
      const tail = this.#decoders[idx].decode();
      if (tail.length > 0) {
        this.#deliver({
          type: "output",
          stream: idx === 1 ? "stderr" : "stdout",
          data: tail,
          timestamp: isoFromNs(big(m.ended_ns) ?? 0n),
          seq: this.#nextSeq - 1,
        });
      }
    }
    this.end = m;
    const status = text(m.status);
    this.status = status === "completed" || status === "cancelled" ? status : "failed";
    this.exit_code = this.exitCode = num(m.exit_code);
    this.signal = num(m.signal);
    this.reason = text(m.reason) as RunReason;
    this.duration_ms = num(m.duration_ms);
    this.stdout = text(m.stdout);
    this.stderr = text(m.stderr);
    this.result = text(m.result);
    this.output = this.stdout.endsWith("\n") ? this.stdout.slice(0, -1) : this.stdout;
    this.outputTruncated = m.output_truncated === true;
    const next = num(m.next_seq);
    if (next !== null && next > this.#nextSeq) this.#nextSeq = next;
    this.#startedD.resolve(this);
    this.#ended.resolve(this);
  }

  #fail(err: BoxError): void {
    this.#startedD.reject(err);
    this.#ended.reject(err);
  }
}
