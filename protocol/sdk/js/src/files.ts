/**
 * `box.files`: upload, download, read, write, list and manage files in the box, over the file
 * requests of PROTOCOL.md section 12 (the agent's `files` capability).
 *
 * Uploads stream from disk in chunks pipelined under the agent's `file_window`, and are atomic
 * (the file appears whole at its path, or not at all); a dropped connection resumes the upload
 * by its id from the offset the agent reports. Downloads are written to disk as the chunks come,
 * and a dropped connection resumes the read from the bytes already received.
 *
 * @module
 */
import { createHash, randomBytes } from "node:crypto";
import { chmod, lstat, lutimes, mkdir, open, readdir, readlink, rename, rm, stat, symlink, utimes } from "node:fs/promises";
import { basename, dirname, join, posix, resolve as resolveLocal } from "node:path";
import { BoxError, ConnectionLostError, errorFromReply } from "./errors.js";
import type { Outstanding, Session } from "./session.js";
import { big, bytes, num, text, type Message } from "./wire.js";

/** The capability the agent lists in `hello` when it serves the file requests. */
export const FILES_CAPABILITY = "files";
/** The capability of whole trees in one request (`file_tree_read`, `file_tree_write`: PROTOCOL.md 12.8). */
export const FILE_TREE_CAPABILITY = "file_tree";

/** `no_capability`: the agent does not list a capability this call needs. */
export class CapabilityError extends BoxError {
  /** The capability that is missing. */
  readonly capability: string;
  constructor(capability: string, message: string) {
    super("no_capability", message);
    this.capability = capability;
  }
}

/** What a path is, in {@link FileEntry.kind}. */
export type FileKind = "file" | "dir" | "symlink" | "fifo" | "socket" | "char" | "block" | "other";

/** A file or directory of the box, from {@link Files.stat} and {@link Files.list}. */
export interface FileEntry {
  /** For `stat`, the path; for `list`, the path relative to the listed directory. */
  name: string;
  kind: FileKind;
  /** Permission bits (0 to 0o7777). */
  mode: number;
  size: number;
  /** Modification time, ISO-8601 UTC. */
  mtime: string;
  /** Modification time, ms since the epoch (with its fraction: microseconds are kept). */
  mtimeMs: number;
  uid: number;
  gid: number;
  /** A symbolic link's target. */
  target?: string;
}

/** Options every file call takes. */
export interface FileOptions {
  /** Act as this user (only one the agent's policy allows); default the agent's run user. */
  user?: string;
}

/** Options of {@link Files.write}. */
export interface WriteOptions extends FileOptions {
  /** Permission bits of the new file (default 0o644). */
  mode?: number;
  /** Create missing parent directories (default true here). */
  mkdir?: boolean;
  /** Replace an existing file (default true); false: `ExistsError` if it exists. */
  overwrite?: boolean;
  /**
   * fsync before the rename (default true). false: still atomic for readers, but after a crash
   * of the box the file may be empty or missing; for the many small files of a tree.
   */
  fsync?: boolean;
  /** The file's modification time, ns since the epoch (default: the time of writing). */
  mtimeNs?: bigint;
}

/** What an upload or write made. */
export interface WrittenFile {
  path: string;
  size: number;
  sha256: string;
}

/** How many times an upload or download resumes after dropped connections before it gives up. */
const MAX_RESUMES = 5;
/** Bytes of a download received but not yet on disk past which reading from the agent pauses. */
const DOWNLOAD_HIGH = 8 << 20;

function entryOf(m: unknown): FileEntry {
  const e = (m ?? {}) as Message;
  const ns = big(e.mtime_ns) ?? 0n;
  const out: FileEntry = {
    name: text(e.name),
    kind: text(e.kind) as FileKind,
    mode: num(e.mode) ?? 0,
    size: num(e.size) ?? 0,
    mtime: new Date(Number(ns / 1000000n)).toISOString(),
    mtimeMs: Number(ns / 1000n) / 1000,
    uid: num(e.uid) ?? 0,
    gid: num(e.gid) ?? 0,
  };
  if (e.target !== undefined) out.target = text(e.target);
  return out;
}

/** A source of upload bytes: a buffer, or a local file read chunk by chunk. */
interface Source {
  size: number;
  read(offset: number, length: number): Promise<Uint8Array>;
  close(): Promise<void>;
}

/** Files in the box. Reached as `box.files`. */
export class Files {
  readonly #session: Session;

  /** @internal */
  constructor(session: Session) {
    this.#session = session;
  }

  #need(): void {
    const caps = this.#session.hello?.capabilities ?? [];
    if (!caps.includes(FILES_CAPABILITY)) {
      throw new CapabilityError(
        FILES_CAPABILITY,
        `this agent (${this.#session.hello?.agent ?? "boxd"}) does not list the "${FILES_CAPABILITY}" capability: ` +
          "it predates the file requests (PROTOCOL.md section 12); upgrade boxd, or move files with box.exec.command (cat, tar)",
      );
    }
  }

  #trees(): boolean {
    return (this.#session.hello?.capabilities ?? []).includes(FILE_TREE_CAPABILITY);
  }

  #limit(name: string, dflt: number): number {
    return this.#session.hello?.limits[name] ?? dflt;
  }

  #req(msg: Message, idempotent: boolean): Promise<Message> {
    this.#need();
    return this.#session.request(msg, { idempotent });
  }

  /** Describes a path (a symbolic link itself, not its target). */
  async stat(path: string, opts: FileOptions = {}): Promise<FileEntry> {
    const r = await this.#req({ type: "file_stat", path, user: opts.user }, true);
    return entryOf(r.entry);
  }

  /** Whether a path exists. */
  async exists(path: string, opts: FileOptions = {}): Promise<boolean> {
    try {
      await this.stat(path, opts);
      return true;
    } catch (e) {
      if (e instanceof BoxError && e.code === "not_found") return false;
      throw e;
    }
  }

  /** Lists a directory, `depth` levels deep (default 1). */
  async list(path: string, opts: FileOptions & { depth?: number } = {}): Promise<FileEntry[]> {
    const r = await this.#req({ type: "file_list", path, user: opts.user, depth: opts.depth }, true);
    return Array.isArray(r.entries) ? r.entries.map(entryOf) : [];
  }

  /** Makes a directory; `parents` (default true here) is `mkdir -p`. */
  async mkdir(path: string, opts: FileOptions & { parents?: boolean; mode?: number } = {}): Promise<void> {
    await this.#req({ type: "file_mkdir", path, user: opts.user, parents: opts.parents ?? true, mode: opts.mode }, true);
  }

  /** Removes a file, a symbolic link or an empty directory; `recursive` removes a tree. */
  async remove(path: string, opts: FileOptions & { recursive?: boolean } = {}): Promise<void> {
    await this.#req({ type: "file_remove", path, user: opts.user, recursive: opts.recursive }, false);
  }

  /** Renames within the box. */
  async rename(from: string, to: string, opts: FileOptions & { overwrite?: boolean } = {}): Promise<void> {
    await this.#req({ type: "file_rename", from, to, user: opts.user, overwrite: opts.overwrite }, false);
  }

  /** Makes a symbolic link at `path` to `target`, stored as given (never resolved by boxd). */
  async symlink(path: string, target: string, opts: FileOptions & { overwrite?: boolean } = {}): Promise<void> {
    await this.#req({ type: "file_symlink", path, target, user: opts.user, overwrite: opts.overwrite }, true);
  }

  /**
   * Sets the permission bits of a file or directory (a final symbolic link is followed), and
   * with `mtimeNs` (ns since the epoch) its modification time too.
   */
  async chmod(path: string, mode: number, opts: FileOptions & { mtimeNs?: bigint } = {}): Promise<void> {
    await this.#req({ type: "file_chmod", path, mode, user: opts.user, mtime_ns: opts.mtimeNs }, true);
  }

  /** Reads a file of the box as UTF-8 text. */
  async read(path: string, opts: FileOptions = {}): Promise<string> {
    return new TextDecoder().decode(await this.readBytes(path, opts));
  }

  /** Reads a file of the box as bytes. */
  async readBytes(path: string, opts: FileOptions = {}): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    await this.#download(path, opts.user, (chunk) => {
      parts.push(chunk);
    });
    return Buffer.concat(parts);
  }

  /** Writes a file of the box, atomically (the file appears whole or not at all). */
  async write(path: string, data: string | Uint8Array, opts: WriteOptions = {}): Promise<WrittenFile> {
    const buf = typeof data === "string" ? new TextEncoder().encode(data) : data;
    const src: Source = {
      size: buf.length,
      read: async (offset, length) => buf.subarray(offset, offset + length),
      close: async () => undefined,
    };
    return this.#upload(path, src, opts);
  }

  /**
   * Uploads local files or directories: `[{path, destination}]`, `path` local (a directory is
   * uploaded with everything in it), `destination` the absolute path in the box. What is kept:
   * each file's bytes, permission bits and mtime (written atomically); each directory's
   * permission bits and mtime (set once its entries are written), empty ones included; each
   * symbolic link as a link with its target as stored (relative, absolute or dangling; never
   * followed). Missing directories are made. The paths named in `entries` themselves are
   * followed when they are links, as cp(1) does its arguments. FIFOs, sockets and devices are
   * skipped. `fsync: false` skips each file's fsync (still atomic for readers): faster for
   * trees of many small files. With an agent that has the `file_tree` capability a directory
   * goes in one `file_tree_write` (PROTOCOL.md 12.8; its files without an fsync each unless
   * `fsync: true`), else one request per entry. Returns the files written (not the links).
   */
  async upload(
    entries: ReadonlyArray<{ path: string; destination: string }>,
    opts: FileOptions & { fsync?: boolean } = {},
  ): Promise<WrittenFile[]> {
    this.#need();
    const out: WrittenFile[] = [];
    for (const e of entries) {
      const st = await stat(e.path, { bigint: true });
      if (st.isDirectory() && this.#trees()) {
        await this.#uploadTree(e.path, e.destination, opts, out);
      } else if (st.isDirectory()) {
        await this.mkdir(e.destination, { user: opts.user, parents: true });
        await this.#uploadDir(e.path, e.destination, opts, out);
        await this.chmod(e.destination, Number(st.mode) & 0o7777, { user: opts.user, mtimeNs: st.mtimeNs });
      } else {
        out.push(await this.#uploadFile(e.path, e.destination, opts));
      }
    }
    return out;
  }

  async #uploadDir(local: string, remote: string, opts: FileOptions & { fsync?: boolean }, out: WrittenFile[]): Promise<void> {
    const names = (await readdir(local)).sort();
    for (const name of names) {
      const lp = join(local, name);
      const rp = posix.join(remote, name);
      const st = await lstat(lp, { bigint: true });
      if (st.isDirectory()) {
        // Made writable by default; its own mode and mtime once its entries are in (a 0o555
        // directory could not take them, and each entry written would move its mtime).
        await this.mkdir(rp, { user: opts.user, parents: true });
        await this.#uploadDir(lp, rp, opts, out);
        await this.chmod(rp, Number(st.mode) & 0o7777, { user: opts.user, mtimeNs: st.mtimeNs });
      } else if (st.isFile()) {
        out.push(await this.#uploadFile(lp, rp, opts));
      } else if (st.isSymbolicLink()) {
        // Made in the box with its target as stored (node_modules/.bin links stay links).
        await this.symlink(rp, await readlink(lp), { user: opts.user });
      }
      // Special files (FIFOs, sockets, devices) are not uploaded.
    }
  }

  async #uploadFile(local: string, remote: string, opts: FileOptions & { fsync?: boolean }): Promise<WrittenFile> {
    const fh = await open(local, "r");
    let st;
    try {
      st = await fh.stat({ bigint: true });
    } catch (e) {
      await fh.close();
      throw e;
    }
    const size = Number(st.size);
    const src: Source = {
      size,
      read: async (offset, length) => {
        const b = Buffer.alloc(Math.min(length, size - offset));
        let got = 0;
        while (got < b.length) {
          const r = await fh.read(b, got, b.length - got, offset + got);
          if (r.bytesRead === 0) break;
          got += r.bytesRead;
        }
        return b.subarray(0, got);
      },
      close: () => fh.close(),
    };
    return this.#upload(remote, src, {
      user: opts.user,
      fsync: opts.fsync,
      mode: Number(st.mode) & 0o7777,
      mtimeNs: st.mtimeNs,
      mkdir: true,
    });
  }

  async #upload(path: string, src: Source, opts: WriteOptions): Promise<WrittenFile> {
    this.#need();
    const uploadId = randomBytes(8).toString("hex");
    const chunkSize = Math.max(1024, Math.min(512 << 10, this.#limit("max_frame", 1 << 20) - 4096));
    const window = Math.max(chunkSize, Math.min(this.#limit("file_window", 16 << 20), 8 << 20));
    const open: Message = {
      type: "file_write",
      path,
      user: opts.user,
      upload_id: uploadId,
      mode: opts.mode,
      mkdir: opts.mkdir ?? true,
      overwrite: opts.overwrite,
      fsync: opts.fsync,
      mtime_ns: opts.mtimeNs,
    };
    let resumes = 0;
    let lostAny = false;
    const inflightAll: Promise<Message>[] = [];
    try {
      for (;;) {
        try {
          // file_write with our upload_id opens the upload, or resumes it where the agent has it.
          inflightAll.length = 0;
          const ack = await this.#session.request(open, { idempotent: true });
          let offset = num(ack.offset) ?? 0;
          const inflight: Promise<Message>[] = [];
          let unacked = 0;
          const sizes: number[] = [];
          let result: Message | null = null;
          for (;;) {
            const length = Math.min(chunkSize, src.size - offset);
            const data = length > 0 ? await src.read(offset, length) : new Uint8Array(0);
            const eof = offset + data.length >= src.size;
            while (inflight.length > 0 && unacked + data.length > window) {
              await inflight.shift();
              unacked -= sizes.shift() ?? 0;
            }
            const p = this.#session.request(
              { type: "file_data", upload_id: uploadId, offset, data, eof: eof ? true : undefined },
              { idempotent: false },
            );
            p.catch((err: unknown) => {
              if (err instanceof ConnectionLostError) lostAny = true;
            });
            inflight.push(p);
            inflightAll.push(p);
            sizes.push(data.length);
            unacked += data.length;
            offset += data.length;
            if (eof) {
              const replies = await Promise.all(inflight);
              result = replies[replies.length - 1] ?? null;
              break;
            }
          }
          return { path: text(result?.path) || path, size: num(result?.size) ?? src.size, sha256: text(result?.sha256) };
        } catch (e) {
          // A chunk sent while the connection was down may be refused for its offset: what
          // counts is whether the connection dropped under this upload.
          await Promise.allSettled(inflightAll);
          if (!(e instanceof ConnectionLostError || lostAny) || ++resumes > MAX_RESUMES) throw e;
          lostAny = false;
          // The connection dropped mid-upload: the agent keeps the upload; ask where it is.
        }
      }
    } finally {
      await src.close();
    }
  }

  /** Streams one file of the box to `sink`, resuming by offset after a dropped connection. */
  #download(
    path: string,
    user: string | undefined,
    sink: (chunk: Uint8Array) => void | Promise<void>,
  ): Promise<{ size: number; mode: number; mtimeMs: number }> {
    this.#need();
    const session = this.#session;
    return new Promise((resolve, reject) => {
      const req = session.nextReq();
      let received = 0;
      let resumes = 0;
      let info: { size: number; mode: number; mtimeMs: number } | null = null;
      let pending = Promise.resolve();
      let queued = 0;
      const holder = {};
      let failed = false;
      const fail = (err: unknown): void => {
        if (failed) return;
        failed = true;
        session.release(holder);
        session.untrack(req);
        reject(err);
      };
      const push = (chunk: Uint8Array): void => {
        queued += chunk.length;
        if (queued > DOWNLOAD_HIGH) session.hold(holder);
        pending = pending.then(async () => {
          await sink(chunk);
          queued -= chunk.length;
          if (queued < DOWNLOAD_HIGH / 4) session.release(holder);
        });
        pending.catch(fail);
      };
      const o: Outstanding = {
        follows: true,
        first: () => ({ type: "file_read", req, path, user }),
        again: () => (++resumes > MAX_RESUMES ? null : { type: "file_read", req, path, user, offset: received }),
        onMessage: (m) => {
          switch (m.type) {
            case "file_info":
              if (!info) {
                info = {
                  size: num(m.size) ?? 0,
                  mode: num(m.mode) ?? 0o644,
                  mtimeMs: Number((big(m.mtime_ns) ?? BigInt(Date.now()) * 1000000n) / 1000n) / 1000,
                };
              }
              return false;
            case "file_chunk": {
              const off = num(m.offset) ?? received;
              const data = bytes(m.data);
              if (off !== received) {
                fail(new BoxError("protocol", `file_read ${path}: a chunk at offset ${off}, expected ${received}`));
                return true;
              }
              received += data.length;
              if (data.length > 0) push(data);
              return false;
            }
            case "file_end": {
              const done = info ?? { size: received, mode: 0o644, mtimeMs: Date.now() };
              pending.then(() => {
                if (failed) return;
                session.release(holder);
                resolve(done);
              }, fail);
              return true;
            }
            case "error":
              fail(errorFromReply(m));
              return true;
            default:
              return false;
          }
        },
        fail,
      };
      session.track(req, o);
    });
  }

  /**
   * Downloads a folder of the box with everything in it (or one file), into `destination`
   * (default: the current directory, under the folder's name). Returns the local path. What is kept: each
   * file's bytes, permission bits (rwx: setuid, setgid and sticky bits are dropped) and mtime;
   * each directory's permission bits and mtime (set once its entries are written), the folder's
   * own included, empty ones too; each symbolic link as a link with its target as stored
   * (relative, absolute or dangling; never followed), and its mtime. FIFOs, sockets and devices
   * are skipped. A file or link already at a path is replaced; never written through.
   */
  async download(opts: FileOptions & { folder: string; destination?: string }): Promise<string> {
    this.#need();
    const dest = resolveLocal(opts.destination ?? join(process.cwd(), basename(opts.folder)));
    const top = await this.stat(opts.folder, { user: opts.user });
    let isFile = top.kind !== "dir";
    if (top.kind === "symlink") {
      try {
        await this.list(opts.folder, { user: opts.user }); // a link to a directory?
        isFile = false;
      } catch (e) {
        if (!(e instanceof BoxError && e.code === "not_a_directory")) throw e;
      }
    }
    if (isFile) {
      // A link to a file: the file's own mode and mtime (from file_info), not the link's.
      await mkdir(dirname(dest), { recursive: true });
      await this.#downloadFile(opts.folder, dest, top.kind === "file" ? top : null, opts.user);
      return dest;
    }
    await this.#localDir(dest);
    if (this.#trees()) {
      await this.#downloadTree(opts.folder, dest, opts.user, top.kind === "dir");
      return dest;
    }
    await this.#downloadDir(opts.folder, dest, opts.user);
    // A folder named through a link (which file_list follows) gets no attributes of the link's.
    if (top.kind === "dir") await keep(dest, top);
    return dest;
  }

  /**
   * One `file_tree_write` and its `file_tree_data` requests, pipelined within the window; after a
   * dropped connection (the agent drops the tree) the whole tree again: each file is atomic.
   */
  async #uploadTree(local: string, remote: string, opts: FileOptions & { fsync?: boolean }, out: WrittenFile[]): Promise<void> {
    const frame = Math.max(16 << 10, Math.min(768 << 10, this.#limit("max_frame", 1 << 20) - 16384));
    const piece = Math.max(4096, Math.min(512 << 10, Math.floor(frame / 2)));
    const window = Math.max(frame, Math.min(this.#limit("file_window", 16 << 20) - frame, 8 << 20));
    for (let attempt = 0; ; attempt++) {
      const written: WrittenFile[] = [];
      const inflight: Promise<Message>[] = [];
      const sizes: number[] = [];
      try {
        const ack = await this.#session.request(
          { type: "file_tree_write", path: remote, user: opts.user, mkdir: true, fsync: opts.fsync ?? false },
          { idempotent: false },
        );
        const treeId = text(ack.tree_id);
        let batch: Message[] = [];
        let size = 0;
        const send = async (eof: boolean): Promise<Message | null> => {
          const p = this.#session.request({ type: "file_tree_data", tree_id: treeId, entries: batch, eof }, { idempotent: false });
          p.catch(() => undefined);
          inflight.push(p);
          sizes.push(size);
          batch = [];
          size = 0;
          let last: Message | null = null;
          while (inflight.length > 0 && (eof || sizes.reduce((a, b) => a + b, 0) > window)) {
            sizes.shift();
            last = await (inflight.shift() as Promise<Message>);
          }
          return last;
        };
        const add = async (el: Message, dataLength: number): Promise<void> => {
          const n = dataLength + 256 + (typeof el.name === "string" ? el.name.length : 0);
          if (batch.length > 0 && size + n > frame) await send(false);
          batch.push(el);
          size += n;
        };
        const head = (name: string, st: { mode: bigint; mtimeNs: bigint }, kind: string): Message => ({
          name,
          kind,
          mode: Number(st.mode) & 0o7777,
          mtime_ns: st.mtimeNs,
        });
        const walk = async (dir: string, rel: string): Promise<void> => {
          for (const name of (await readdir(dir)).sort()) {
            const lp = join(dir, name);
            const r = rel === "" ? name : `${rel}/${name}`;
            const st = await lstat(lp, { bigint: true });
            if (st.isSymbolicLink()) {
              await add({ ...head(r, st, "symlink"), target: await readlink(lp) }, 0);
            } else if (st.isDirectory()) {
              await add(head(r, st, "dir"), 0);
              await walk(lp, r);
            } else if (st.isFile()) {
              const fh = await open(lp, "r");
              // The digest of the bytes sent (the tree requests carry none; each file is atomic).
              const h = createHash("sha256");
              try {
                const total = Number(st.size);
                let off = 0;
                do {
                  const b = Buffer.alloc(Math.min(piece, total - off));
                  const got = b.length > 0 ? (await fh.read(b, 0, b.length, off)).bytesRead : 0;
                  const data = b.subarray(0, got);
                  h.update(data);
                  off += got;
                  const more = got > 0 && off < total;
                  await add(off - got === 0 ? { ...head(r, st, "file"), data, more } : { data, more }, got);
                  if (!more) break;
                } while (off < total);
              } finally {
                await fh.close();
              }
              written.push({ path: posix.join(remote, r), size: Number(st.size), sha256: h.digest("hex") });
            }
            // Special files (FIFOs, sockets, devices) are not uploaded.
          }
        };
        const top = await stat(local, { bigint: true });
        await add(head(".", top, "dir"), 0);
        await walk(local, "");
        const res = (await send(true)) ?? {};
        const failed = num(res.failed) ?? 0;
        if (failed > 0) {
          const e0 = ((res.errors as Message[] | undefined) ?? [{}])[0] ?? {};
          throw errorFromReply({
            type: "error",
            code: text(e0.code) || "io_error",
            message: `upload to ${remote}: ${failed} entries failed; the first, ${text(e0.name)}: ${text(e0.message)}`,
          });
        }
        out.push(...written);
        return;
      } catch (e) {
        await Promise.allSettled(inflight);
        if (!(e instanceof ConnectionLostError) || attempt >= MAX_RESUMES) throw e;
      }
    }
  }

  /**
   * One `file_tree_read` applied under `dest` as it streams; after a dropped connection the whole
   * tree again (each file and link is replaced atomically). `own`: keep the folder's own mode and
   * mtime (not when it was named through a link).
   */
  async #downloadTree(folder: string, dest: string, user: string | undefined, own: boolean): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      try {
        await this.#downloadTreeOnce(folder, dest, user, own);
        return;
      } catch (e) {
        if (!(e instanceof ConnectionLostError) || attempt >= MAX_RESUMES) throw e;
      }
    }
  }

  #downloadTreeOnce(folder: string, dest: string, user: string | undefined, own: boolean): Promise<void> {
    const session = this.#session;
    const dirs: Array<{ path: string; e: FileEntry }> = [];
    const failedEntries: Message[] = [];
    let fh: Awaited<ReturnType<typeof open>> | null = null;
    let tmp = "";
    let cur: { local: string; e: FileEntry } | null = null;
    const localOf = (name: string): string => {
      if (name === ".") return dest;
      const parts = name.split("/");
      if (name.startsWith("/") || parts.some((p) => p === "" || p === "." || p === "..")) {
        throw new BoxError("protocol", `file_tree_read ${folder}: an entry named ${JSON.stringify(name)}`);
      }
      return join(dest, ...parts);
    };
    const fileEnd = async (): Promise<void> => {
      const f = fh as NonNullable<typeof fh>;
      const c = cur as NonNullable<typeof cur>;
      fh = null;
      await f.chmod(c.e.mode & 0o777);
      await f.utimes(new Date(), c.e.mtimeMs / 1000);
      await f.close();
      await rename(tmp, c.local);
    };
    const apply = async (els: Message[]): Promise<void> => {
      for (const el of els) {
        if (el.name === undefined) {
          if (fh !== null) {
            await fh.write(bytes(el.data));
            if (el.more !== true) await fileEnd();
          }
          continue;
        }
        if (el.code !== undefined) {
          if (el.code !== "refused") failedEntries.push(el);
          continue;
        }
        const e = entryOf(el);
        const lp = localOf(e.name);
        if (e.kind === "dir") {
          await this.#localDir(lp);
          dirs.push({ path: lp, e });
        } else if (e.kind === "symlink" && e.target !== undefined) {
          const t = `${lp}.boxd-${randomBytes(4).toString("hex")}`;
          await symlink(e.target, t);
          try {
            await lutimes(t, new Date(), e.mtimeMs / 1000);
            await rename(t, lp);
          } catch (err) {
            await rm(t, { force: true });
            throw err;
          }
        } else if (e.kind === "file") {
          tmp = `${lp}.boxd-${randomBytes(4).toString("hex")}`;
          fh = await open(tmp, "wx", 0o600);
          cur = { local: lp, e };
          await fh.write(bytes(el.data));
          if (el.more !== true) await fileEnd();
        }
      }
    };
    return new Promise((resolve, reject) => {
      const req = session.nextReq();
      const holder = {};
      let pending = Promise.resolve();
      let queued = 0;
      let failed = false;
      const fail = (err: unknown): void => {
        if (failed) return;
        failed = true;
        session.release(holder);
        session.untrack(req);
        pending.then(async () => {
          if (fh !== null) {
            await fh.close().catch(() => undefined);
            await rm(tmp, { force: true });
          }
        }).finally(() => reject(err));
      };
      const o: Outstanding = {
        follows: true,
        first: () => ({ type: "file_tree_read", req, path: folder, user }),
        again: () => null,
        onMessage: (m) => {
          switch (m.type) {
            case "file_tree_entries": {
              const els = (m.entries as Message[] | undefined) ?? [];
              const n = els.reduce((a, el) => a + (el.data ? bytes(el.data).length : 0) + 64, 0);
              queued += n;
              if (queued > DOWNLOAD_HIGH) session.hold(holder);
              pending = pending.then(async () => {
                if (failed) return;
                await apply(els);
                queued -= n;
                if (queued < DOWNLOAD_HIGH / 4) session.release(holder);
              });
              pending.catch(fail);
              return false;
            }
            case "file_tree_end":
              pending.then(async () => {
                if (failed) return;
                session.release(holder);
                for (const d of dirs.reverse()) if (own || d.path !== dest) await keep(d.path, d.e);
                if (failedEntries.length > 0) {
                  const e0 = failedEntries[0] as Message;
                  throw errorFromReply({
                    type: "error",
                    code: text(e0.code),
                    message: `download: ${failedEntries.length} entries failed; the first, ${text(e0.name)}: ${text(e0.message)}`,
                  });
                }
                resolve();
              }).catch(fail);
              return true;
            case "error":
              fail(errorFromReply(m));
              return true;
            default:
              return false;
          }
        },
        fail,
      };
      session.track(req, o);
    });
  }

  /** Makes a local directory, refusing anything else already there (a link planted there). */
  async #localDir(path: string): Promise<void> {
    await mkdir(path, { recursive: true });
    if (!(await lstat(path)).isDirectory()) {
      throw new BoxError("exists", `download: ${path} exists and is not a directory; remove it or choose another destination`);
    }
  }

  async #downloadDir(remote: string, local: string, user: string | undefined): Promise<void> {
    // One level at a time, so no listing is truncated by list_max or max_event.
    const entries = await this.list(remote, { user, depth: 1 });
    for (const e of entries) {
      if (e.name === "" || e.name.includes("/") || e.name === "." || e.name === "..") {
        throw new BoxError("protocol", `file_list ${remote}: an entry named ${JSON.stringify(e.name)}`);
      }
      const rp = posix.join(remote, e.name);
      const lp = join(local, e.name);
      if (e.kind === "dir") {
        await this.#localDir(lp);
        await this.#downloadDir(rp, lp, user);
        await keep(lp, e);
      } else if (e.kind === "file") {
        await this.#downloadFile(rp, lp, e, user);
      } else if (e.kind === "symlink" && e.target !== undefined) {
        // Made beside the path and renamed over it: whatever is there is replaced, not followed.
        const tmp = `${lp}.boxd-${randomBytes(4).toString("hex")}`;
        await symlink(e.target, tmp);
        try {
          await lutimes(tmp, new Date(), e.mtimeMs / 1000);
          await rename(tmp, lp);
        } catch (err) {
          await rm(tmp, { force: true });
          throw err;
        }
      }
    }
  }

  async #downloadFile(remote: string, local: string, e: FileEntry | null, user: string | undefined): Promise<void> {
    // "wx" never writes through something already at the path (a link planted there).
    const tmp = `${local}.boxd-${randomBytes(4).toString("hex")}`;
    const fh = await open(tmp, "wx", 0o600);
    try {
      const info = await this.#download(remote, user, async (chunk) => {
        await fh.write(chunk);
      });
      await fh.chmod((e?.mode ?? info.mode) & 0o777);
      await fh.utimes(new Date(), (e?.mtimeMs ?? info.mtimeMs) / 1000);
      await fh.close();
      await rename(tmp, local);
    } catch (err) {
      await fh.close().catch(() => undefined);
      await rm(tmp, { force: true });
      throw err;
    }
  }
}

/** Gives a downloaded directory the box's permission bits (rwx) and mtime. */
async function keep(path: string, e: FileEntry): Promise<void> {
  await chmod(path, e.mode & 0o777);
  await utimes(path, new Date(), e.mtimeMs / 1000);
}
