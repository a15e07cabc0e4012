/**
 * Errors. Every error the SDK raises is a {@link BoxError}; its `code` is stable.
 *
 * Errors the agent sends (PROTOCOL.md section 6) become one class per protocol code:
 * `bad_request` is a {@link BadRequestError}, `spawn_failed` a {@link SpawnFailedError}, and so
 * on. Errors made on this side of the wire (a lost connection, a changed `boot_id`, a timeout of
 * this client) have codes of their own, listed in {@link ClientErrorCode}.
 *
 * @module
 */

/** The error codes of the wire protocol (PROTOCOL.md section 6). */
export type ProtocolErrorCode =
  | "bad_request"
  | "unknown_type"
  | "too_large"
  | "need_hello"
  | "denied"
  | "unauthorized"
  | "bad_version"
  | "not_found"
  | "run_ended"
  | "limit"
  | "spawn_failed"
  | "shutting_down"
  | "unknown_lang"
  | "internal"
  | "not_a_directory"
  | "is_a_directory"
  | "exists"
  | "permission_denied"
  | "no_space"
  | "refused"
  | "checksum_mismatch"
  | "unsupported"
  | "io_error"
  | "connect_failed";

/** The codes of errors made by this client, not sent by the agent. */
export type ClientErrorCode =
  | "bad_address"
  | "vsock_unsupported"
  | "connect_failed"
  | "handshake_failed"
  | "connection_lost"
  | "boot_changed"
  | "request_timeout"
  | "wait_timeout"
  | "closed"
  | "protocol"
  | "no_capability";

/** The error message the agent sent, as a plain object (its keys as on the wire). */
export type ErrorReply = Readonly<Record<string, unknown>>;

/** The base of every error of this SDK. */
export class BoxError extends Error {
  /** A protocol error code (section 6 of PROTOCOL.md) or a {@link ClientErrorCode}. */
  readonly code: string;
  /** The agent's `error` message when the agent sent it, else `undefined`. */
  readonly reply: ErrorReply | undefined;

  constructor(code: string, message: string, reply?: ErrorReply, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
    this.reply = reply;
  }
}

/** An error the agent answered, the base of the classes named after protocol codes. */
export class ProtocolError extends BoxError {
  /** The run the error is about, when the agent named one. */
  readonly id: string | undefined;

  constructor(code: string, message: string, reply?: ErrorReply) {
    super(code, message, reply);
    this.id = reply && typeof reply.id === "string" ? reply.id : undefined;
  }
}

/** `bad_request`: the request was malformed (a bug in the caller or in this SDK). */
export class BadRequestError extends ProtocolError {}
/** `unknown_type`: the agent does not know this request type (an older agent). */
export class UnknownTypeError extends ProtocolError {}
/** `too_large`: a frame or a field (a `code` snippet) is over the agent's limit. */
export class TooLargeError extends ProtocolError {}
/** `need_hello`: a request before `hello` (a bug in this SDK if it ever happens). */
export class NeedHelloError extends ProtocolError {}
/** `denied`: the agent's policy does not allow it (another `user`, a weaker `seccomp`). */
export class DeniedError extends ProtocolError {}
/** `unauthorized`: the token is missing or wrong. Pass `token` or `tokenFile` to `Box.connect`. */
export class UnauthorizedError extends ProtocolError {}
/** `bad_version`: the agent speaks none of this SDK's protocol versions. */
export class BadVersionError extends ProtocolError {
  /** The versions the agent speaks. */
  readonly versions: number[];
  constructor(code: string, message: string, reply?: ErrorReply) {
    super(code, message, reply);
    this.versions = Array.isArray(reply?.versions) ? reply.versions.map(Number) : [];
  }
}
/** `not_found`: no run with that id (it never existed, or the agent has forgotten it). */
export class NotFoundError extends ProtocolError {}
/** `run_ended`: the request needs a live run, or its open stdin. */
export class RunEndedError extends ProtocolError {}
/** `limit`: a limit of the agent would be exceeded; `limit` names it (`"max_runs"`, ...). */
export class LimitError extends ProtocolError {
  /** `"max_runs"`, `"max_subs"`, `"stdin_bytes"` or `"code_waiting"`. */
  readonly limit: string | undefined;
  constructor(code: string, message: string, reply?: ErrorReply) {
    super(code, message, reply);
    this.limit = typeof reply?.limit === "string" ? reply.limit : undefined;
  }
}
/** `spawn_failed`: the run's process could not be started. */
export class SpawnFailedError extends ProtocolError {
  /** The errno number. */
  readonly errno: number | undefined;
  /** Its name, e.g. `"ENOENT"`. */
  readonly errnoName: string | undefined;
  /** What failed: `"chdir"`, `"exec"`, `"user"`... (PROTOCOL.md 4.6). */
  readonly stage: string | undefined;
  constructor(code: string, message: string, reply?: ErrorReply) {
    super(code, message, reply);
    this.errno = typeof reply?.errno === "number" ? reply.errno : undefined;
    this.errnoName = typeof reply?.errno_name === "string" ? reply.errno_name : undefined;
    this.stage = typeof reply?.stage === "string" ? reply.stage : undefined;
  }
}
/** `shutting_down`: the agent is stopping and starts no new runs. */
export class ShuttingDownError extends ProtocolError {}
/** `unknown_lang`: no such language, or no interpreter for it on this box. */
export class UnknownLangError extends ProtocolError {
  /** The languages the box can run. */
  readonly available: string[];
  constructor(code: string, message: string, reply?: ErrorReply) {
    super(code, message, reply);
    this.available = Array.isArray(reply?.available) ? reply.available.map(String) : [];
  }
}
/** `internal`: the agent failed internally; the request had no effect. Retry later. */
export class InternalError extends ProtocolError {}
/** `not_a_directory` (files): a component of the path, or what `list` names, is not a directory. */
export class NotADirectoryError extends ProtocolError {}
/** `is_a_directory` (files): the path is a directory where a file is needed. */
export class IsADirectoryError extends ProtocolError {}
/** `exists` (files): the path exists (`overwrite: false`, a directory not empty...). */
export class ExistsError extends ProtocolError {}
/** `permission_denied` (files): the acting user may not do this. */
export class PermissionDeniedError extends ProtocolError {}
/** `no_space` (files): the file system is full or the quota reached; nothing partial is left. */
export class NoSpaceError extends ProtocolError {}
/** `refused` (files): boxd never reads or writes this (a FIFO, a device, procfs, a magic link). */
export class RefusedError extends ProtocolError {}
/** `checksum_mismatch` (files): the uploaded data's sha256 is not the one given; nothing written. */
export class ChecksumMismatchError extends ProtocolError {}
/** `unsupported` (files): the box's kernel lacks what file requests need (`openat2`, Linux 5.6). */
export class UnsupportedError extends ProtocolError {}
/** `io_error` (files): the file system reported an I/O error. */
export class IoError extends ProtocolError {}
/**
 * `connect_failed` from the agent (tunnels, PROTOCOL.md section 13): a `tunnel_open`'s connect
 * inside the box failed; `reply.errno_name` says why (`ECONNREFUSED`, `EACCES`...). Not to be
 * confused with {@link ConnectError}, this client's own failure to reach the agent.
 */
export class TunnelConnectFailedError extends ProtocolError {}

/** The constructor of a ProtocolError subclass. */
export type ProtocolErrorClass = new (code: string, message: string, reply?: ErrorReply) => ProtocolError;

/** The class of each protocol error code. */
export const errorClasses: Readonly<Record<ProtocolErrorCode, ProtocolErrorClass>> = {
  bad_request: BadRequestError,
  unknown_type: UnknownTypeError,
  too_large: TooLargeError,
  need_hello: NeedHelloError,
  denied: DeniedError,
  unauthorized: UnauthorizedError,
  bad_version: BadVersionError,
  not_found: NotFoundError,
  run_ended: RunEndedError,
  limit: LimitError,
  spawn_failed: SpawnFailedError,
  shutting_down: ShuttingDownError,
  unknown_lang: UnknownLangError,
  internal: InternalError,
  not_a_directory: NotADirectoryError,
  is_a_directory: IsADirectoryError,
  exists: ExistsError,
  permission_denied: PermissionDeniedError,
  no_space: NoSpaceError,
  refused: RefusedError,
  checksum_mismatch: ChecksumMismatchError,
  unsupported: UnsupportedError,
  io_error: IoError,
  connect_failed: TunnelConnectFailedError,
};

/** Makes the typed error for an `error` message of the agent. Unknown codes give a ProtocolError. */
export function errorFromReply(reply: ErrorReply): ProtocolError {
  const code = typeof reply.code === "string" ? reply.code : "internal";
  const text = typeof reply.message === "string" ? reply.message : "(no message)";
  const cls = Object.prototype.hasOwnProperty.call(errorClasses, code)
    ? errorClasses[code as ProtocolErrorCode]
    : ProtocolError;
  return new cls(code, `${code}: ${text}`, reply);
}

/** `bad_address`: the socket address cannot be parsed. */
export class BadAddressError extends BoxError {
  constructor(message: string) {
    super("bad_address", message);
  }
}

/** `vsock_unsupported`: Node.js has no AF_VSOCK sockets; the message names the alternatives. */
export class VsockUnsupportedError extends BoxError {
  constructor(message: string) {
    super("vsock_unsupported", message);
  }
}

/** `connect_failed`: the socket could not be opened (no agent there, permissions...). */
export class ConnectError extends BoxError {
  constructor(message: string, cause?: unknown) {
    super("connect_failed", message, undefined, { cause });
  }
}

/** `handshake_failed`: a hybrid vsock socket refused `CONNECT PORT`. */
export class HandshakeError extends BoxError {
  constructor(message: string) {
    super("handshake_failed", message);
  }
}

/**
 * `connection_lost`: the connection dropped and could not be re-established within
 * `reconnectTimeoutMs`, or dropped while a request that is not safe to repeat was unanswered.
 */
export class ConnectionLostError extends BoxError {
  constructor(message: string, cause?: unknown) {
    super("connection_lost", message, undefined, { cause });
  }
}

/**
 * `boot_changed`: after a reconnect the agent's `boot_id` differs: the box rebooted or its agent
 * restarted, and every run this client knew of is gone.
 */
export class BootChangedError extends BoxError {
  /** The boot id this client knew. */
  readonly oldBootId: string;
  /** The boot id the agent now reports. */
  readonly newBootId: string;
  constructor(oldBootId: string, newBootId: string) {
    super(
      "boot_changed",
      `the box's agent restarted (boot_id ${oldBootId} is now ${newBootId}): ` +
        "its runs are gone; start them again",
    );
    this.oldBootId = oldBootId;
    this.newBootId = newBootId;
  }
}

/**
 * `request_timeout`: the agent did not answer a request within this client's
 * `requestTimeoutMs`. This is the client's own limit on waiting for a reply; it never stops a
 * run (a run's own limit is its `timeout` option).
 */
export class RequestTimeoutError extends BoxError {
  constructor(message: string) {
    super("request_timeout", message);
  }
}

/**
 * `wait_timeout`: `run.wait({ timeoutMs })` gave up waiting. The run goes on; cancel it with
 * `run.cancel()` if it should stop.
 */
export class WaitTimeoutError extends BoxError {
  constructor(message: string) {
    super("wait_timeout", message);
  }
}

/** `closed`: `box.close()` was called. */
export class ClosedError extends BoxError {
  constructor(message = "the box connection was closed with box.close()") {
    super("closed", message);
  }
}

/** `protocol`: the agent sent something this SDK cannot read (a frame over the limit, bad msgpack). */
export class MalformedReplyError extends BoxError {
  constructor(message: string) {
    super("protocol", message);
  }
}
