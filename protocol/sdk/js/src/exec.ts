/**
 * `box.exec`: commands, code snippets, live runs and output streams.
 *
 * @module
 */
import { randomBytes } from "node:crypto";
import { Run, type ExitItem, type OutputChunk, type RunCallbacks, type StreamItem } from "./run.js";
import type { Session } from "./session.js";
import type { Message } from "./wire.js";

/** Options of a run, shared by {@link Exec.command}, {@link Exec.start} and {@link Exec.stream}. */
export interface CommandOptions extends RunCallbacks {
  /** The working directory (default: the run user's HOME, else `/`). */
  cwd?: string;
  /** Variables added to the run's clean environment. */
  env?: Record<string, string>;
  /**
   * The run's own time limit, ms: at the deadline the agent kills the run's whole tree (status
   * `"failed"`, reason `"timeout"`). 0 or absent: none. Not the client's request timeout
   * (`requestTimeoutMs` of Box.connect).
   */
  timeout?: number;
  /** Run as this user (only one the agent's policy allows). */
  user?: string;
  /** Grace between TERM and KILL for timeout and cancel, ms. */
  graceMs?: number;
  /** Open a stdin pipe (write it with `run.sendStdin`). Default: stdin is /dev/null. */
  stdin?: boolean;
  /** The run's id (default: generated). Re-using an id returns the existing run. */
  id?: string;
  /** `"default"` or `"strict"`: a seccomp profile at least as strict as the agent's. */
  seccomp?: "none" | "default" | "strict";
}

/** Options of {@link Exec.code}. */
export interface CodeOptions extends Omit<CommandOptions, "timeout"> {
  /** The snippet. */
  code: string;
  /** Its language: `"python"`, `"js"`, `"ts"`, `"bash"`... (see `box.info()`). */
  lang: string;
  /** The run's own time limit, ms (as for commands). */
  timeout?: number;
}

const idPrefix = `js-${randomBytes(4).toString("hex")}`;
let idCounter = 0;

/** A run id unique to this process: `js-<8 hex>-<n>`. */
function newId(): string {
  idCounter++;
  return `${idPrefix}-${idCounter}`;
}

function runRequest(type: "exec" | "code", body: Message, o: CommandOptions): Message {
  return {
    type,
    ...body,
    id: o.id ?? newId(),
    env: o.env,
    cwd: o.cwd,
    timeout_ms: o.timeout && o.timeout > 0 ? o.timeout : undefined,
    grace_ms: o.graceMs,
    stdin: o.stdin ? true : undefined,
    user: o.user,
    seccomp: o.seccomp,
    follow: true,
    output: true,
  };
}

/** Stream items buffered for a slow consumer before reading from the agent pauses. */
const STREAM_HIGH_BYTES = 1 << 20;
const STREAM_LOW_BYTES = 256 << 10;

/** Runs in the box. Reached as `box.exec`. */
export class Exec {
  readonly #session: Session;

  /** @internal */
  constructor(session: Session) {
    this.#session = session;
  }

  /**
   * Starts a run and resolves once it has started (rejects with its error, such as
   * SpawnFailedError). `cmd` is a shell expression (`/bin/sh -c`), or an argv array.
   */
  async start(cmd: string | readonly string[], opts: CommandOptions = {}): Promise<Run> {
    return this.#startExec(cmd, opts, null);
  }

  #startExec(cmd: string | readonly string[], opts: CommandOptions, listener: ((c: OutputChunk) => void) | null): Promise<Run> {
    const body: Message = typeof cmd === "string" ? { cmd } : { argv: [...cmd] };
    const msg = runRequest("exec", body, opts);
    return new Run(this.#session, String(msg.id), msg, opts, listener).started;
  }

  #startCode(opts: CodeOptions, listener: ((c: OutputChunk) => void) | null): Promise<Run> {
    const msg = runRequest("code", { lang: opts.lang, code: opts.code }, opts);
    return new Run(this.#session, String(msg.id), msg, opts, listener).started;
  }

  /** Runs a command and resolves with the run once it has ended. */
  async command(cmd: string | readonly string[], opts: CommandOptions = {}): Promise<Run> {
    const run = await this.start(cmd, opts);
    return run.wait();
  }

  /** Starts a code snippet; resolves once it has started. */
  async startCode(opts: CodeOptions): Promise<Run> {
    return this.#startCode(opts, null);
  }

  /** Runs a code snippet and resolves with the run once it has ended. */
  async code(opts: CodeOptions): Promise<Run> {
    const run = await this.startCode(opts);
    return run.wait();
  }

  /**
   * Follows an existing run by id (started by another client, say), from its first retained
   * record. Rejects with NotFoundError for an unknown id.
   */
  async attach(id: string, opts: RunCallbacks = {}): Promise<Run> {
    const run = new Run(this.#session, id, { type: "attach", id, from_seq: 0, output: true }, opts, null);
    return run.started;
  }

  /**
   * Runs a command and yields its output chunks as they come, then one exit item. Breaking out
   * of the loop does not stop the run (cancel it for that).
   */
  stream(cmd: string | readonly string[], opts: CommandOptions = {}): AsyncIterable<StreamItem> {
    return this.#iterate((l) => this.#startExec(cmd, opts, l));
  }

  /** {@link stream} for a code snippet. */
  streamCode(opts: CodeOptions): AsyncIterable<StreamItem> {
    return this.#iterate((l) => this.#startCode(opts, l));
  }

  async *#iterate(begin: (listener: (c: OutputChunk) => void) => Promise<Run>): AsyncGenerator<StreamItem> {
    const session = this.#session;
    const queue: OutputChunk[] = [];
    let queued = 0;
    let wake: (() => void) | null = null;
    const holder = {};
    // The listener is the run's from its first message: output that arrives in the same read
    // as `started` is not missed.
    const run = await begin((c) => {
      queue.push(c);
      queued += c.data.length;
      if (queued > STREAM_HIGH_BYTES) session.hold(holder);
      wake?.();
    });
    let ended = false;
    let failure: unknown = null;
    run.wait().then(
      () => {
        ended = true;
        wake?.();
      },
      (e: unknown) => {
        failure = e;
        ended = true;
        wake?.();
      },
    );
    try {
      for (;;) {
        const c = queue.shift();
        if (c) {
          queued -= c.data.length;
          if (queued < STREAM_LOW_BYTES) session.release(holder);
          yield c;
          continue;
        }
        if (ended) break;
        await new Promise<void>((r) => {
          wake = r;
        });
        wake = null;
      }
      if (failure) throw failure;
      const exit: ExitItem = {
        type: "exit",
        status: run.status === "running" ? "failed" : run.status,
        exitCode: run.exitCode ?? -1,
        exit_code: run.exitCode ?? -1,
        run,
      };
      yield exit;
    } finally {
      run.unlisten();
      session.release(holder);
    }
  }
}
