/**
 * `box.files`.
 *
 * @module
 */
import { UnsupportedError } from "./errors.js";
import type { Session } from "./session.js";

/** The capability the agent lists in `hello` when it serves the file requests. */
export const FILES_CAPABILITY = "files";

/** Files in the box. Reached as `box.files`. */
export class Files {
  readonly #session: Session;

  /** @internal */
  constructor(session: Session) {
    this.#session = session;
  }

  #need(): never {
    throw new UnsupportedError(
      FILES_CAPABILITY,
      `this agent (${this.#session.hello?.agent ?? "boxd"}) does not list the "${FILES_CAPABILITY}" capability, ` +
        "and this SDK version has no file transfer: use box.exec.command with a shell (cat, tar) meanwhile",
    );
  }

  /** Uploads local files to the box. */
  async upload(_entries: ReadonlyArray<{ path: string; destination: string }>): Promise<void> {
    this.#need();
  }

  /** Downloads a folder of the box (default: into the current directory, under its name). */
  async download(_opts: { folder: string; destination?: string }): Promise<void> {
    this.#need();
  }

  /** Reads a file of the box. */
  async read(_path: string): Promise<Uint8Array> {
    this.#need();
  }

  /** Writes a file of the box. */
  async write(_path: string, _data: string | Uint8Array): Promise<void> {
    this.#need();
  }

  /** Lists a directory of the box. */
  async list(_path: string): Promise<unknown[]> {
    this.#need();
  }
}
