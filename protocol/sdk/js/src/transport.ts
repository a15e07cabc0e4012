/**
 * Socket addresses and opening a byte stream to boxd (PROTOCOL.md section 1).
 *
 * @module
 */
import * as net from "node:net";
import { BadAddressError, ConnectError, HandshakeError, VsockUnsupportedError } from "./errors.js";

/** Where boxd listens, parsed from a socket string. */
export type Address =
  | { readonly kind: "unix"; readonly path: string }
  | { readonly kind: "vsock"; readonly cid: number; readonly port: number }
  | { readonly kind: "hybrid"; readonly path: string; readonly port: number };

/** The default socket when neither the option nor `$BOXD_SOCKET` names one. */
export const DEFAULT_SOCKET = "/run/boxd.sock";

/** The longest `OK ...` line a hybrid vsock socket may answer `CONNECT` with. */
const HANDSHAKE_LINE_MAX = 256;

function parsePort(text: string, what: string, full: string): number {
  if (!/^[0-9]{1,10}$/.test(text) || Number(text) > 0xffffffff) {
    throw new BadAddressError(`${what} in "${full}" must be a number from 0 to 4294967295`);
  }
  return Number(text);
}

/**
 * Parses a socket string:
 * - `unix:PATH`, or a bare path (`/run/boxd.sock`, `./boxd.sock`): a unix socket;
 * - `vsock:CID:PORT`: AF_VSOCK, which Node.js cannot open (a {@link VsockUnsupportedError}
 *   names the alternatives when connecting);
 * - `fc:UDS:PORT`: the unix socket Firecracker or Cloud Hypervisor exposes for the guest's
 *   vsock, reached with the `CONNECT PORT` handshake.
 */
export function parseAddress(socket: string): Address {
  if (socket.length === 0) throw new BadAddressError("the socket address is empty");
  if (socket.startsWith("unix:")) {
    const path = socket.slice(5);
    if (path.length === 0) throw new BadAddressError(`"${socket}" names no path`);
    return { kind: "unix", path };
  }
  if (socket.startsWith("vsock:")) {
    const parts = socket.slice(6).split(":");
    if (parts.length !== 2) throw new BadAddressError(`"${socket}" is not vsock:CID:PORT`);
    return {
      kind: "vsock",
      cid: parsePort(parts[0] ?? "", "CID", socket),
      port: parsePort(parts[1] ?? "", "PORT", socket),
    };
  }
  if (socket.startsWith("fc:")) {
    const rest = socket.slice(3);
    const colon = rest.lastIndexOf(":");
    if (colon <= 0) throw new BadAddressError(`"${socket}" is not fc:UDS_PATH:PORT`);
    return {
      kind: "hybrid",
      path: rest.slice(0, colon),
      port: parsePort(rest.slice(colon + 1), "PORT", socket),
    };
  }
  if (/^[A-Za-z][A-Za-z0-9+.-]*:/.test(socket) && !socket.includes("/")) {
    throw new BadAddressError(
      `unknown socket scheme in "${socket}": use unix:PATH (or a path), vsock:CID:PORT or fc:UDS:PORT`,
    );
  }
  return { kind: "unix", path: socket };
}

/** Formats an address back into its socket string. */
export function formatAddress(a: Address): string {
  switch (a.kind) {
    case "unix":
      return `unix:${a.path}`;
    case "vsock":
      return `vsock:${a.cid}:${a.port}`;
    case "hybrid":
      return `fc:${a.path}:${a.port}`;
  }
}

function openUnix(path: string, timeoutMs: number, what: string): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const sock = net.createConnection({ path });
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new ConnectError(`${what}: no connection within ${timeoutMs} ms (connectTimeoutMs)`));
    }, timeoutMs);
    sock.once("connect", () => {
      clearTimeout(timer);
      sock.removeAllListeners("error");
      resolve(sock);
    });
    sock.once("error", (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      const hint =
        err.code === "ENOENT"
          ? " (no socket there: is boxd running? set BOXD_SOCKET or pass socket)"
          : err.code === "ECONNREFUSED"
            ? " (nothing listens there: is boxd running?)"
            : err.code === "EACCES"
              ? " (permission denied: the socket is mode 0600, for root or boxd's user)"
              : "";
      reject(new ConnectError(`${what}: ${err.message}${hint}`, err));
    });
  });
}

/** Writes `CONNECT PORT\n` and reads the hypervisor's `OK ...\n`; returns any bytes after it. */
function hybridHandshake(sock: net.Socket, a: { path: string; port: number }, timeoutMs: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const fail = (msg: string): void => {
      cleanup();
      sock.destroy();
      reject(new HandshakeError(`fc:${a.path}:${a.port}: ${msg}`));
    };
    const timer = setTimeout(
      () => fail(`no answer to "CONNECT ${a.port}" within ${timeoutMs} ms (is the guest up and boxd listening on vsock:${a.port}?)`),
      timeoutMs,
    );
    const onData = (chunk: Buffer): void => {
      got = Buffer.concat([got, chunk]);
      const nl = got.indexOf(0x0a);
      if (nl < 0) {
        if (got.length > HANDSHAKE_LINE_MAX) fail("the handshake answer is not a line");
        return;
      }
      const line = got.subarray(0, nl).toString("latin1").replace(/\r$/, "");
      const rest = got.subarray(nl + 1);
      if (!line.startsWith("OK ")) {
        fail(`the hypervisor answered "${line}" to "CONNECT ${a.port}" (is boxd listening on vsock:${a.port} in the guest?)`);
        return;
      }
      cleanup();
      resolve(rest);
    };
    const onClose = (): void =>
      fail(`the socket closed before the hypervisor answered "CONNECT ${a.port}" (is boxd listening on vsock:${a.port} in the guest?)`);
    const onError = (err: Error): void => fail(err.message);
    const cleanup = (): void => {
      clearTimeout(timer);
      sock.off("data", onData);
      sock.off("close", onClose);
      sock.off("error", onError);
    };
    sock.on("data", onData);
    sock.on("close", onClose);
    sock.on("error", onError);
    sock.write(`CONNECT ${a.port}\n`);
  });
}

/**
 * Opens a stream to the agent. Resolves with the socket and any protocol bytes already read
 * (after a hybrid vsock handshake). The socket is paused: the caller attaches its reader.
 */
export async function openStream(a: Address, timeoutMs: number): Promise<{ socket: net.Socket; head: Buffer }> {
  switch (a.kind) {
    case "unix": {
      const socket = await openUnix(a.path, timeoutMs, formatAddress(a));
      return { socket, head: Buffer.alloc(0) };
    }
    case "vsock":
      throw new VsockUnsupportedError(
        `vsock:${a.cid}:${a.port}: Node.js cannot open AF_VSOCK sockets. Reach boxd another way: ` +
          `through a Firecracker or Cloud Hypervisor vsock unix socket with "fc:UDS_PATH:${a.port}", ` +
          `or through a unix socket relayed to the vsock port, e.g. ` +
          `"socat UNIX-LISTEN:/tmp/boxd.sock,fork VSOCK-CONNECT:${a.cid}:${a.port}" and "unix:/tmp/boxd.sock" ` +
          `(the Python SDK and boxctl speak vsock directly)`,
      );
    case "hybrid": {
      const socket = await openUnix(a.path, timeoutMs, formatAddress(a));
      const head = await hybridHandshake(socket, a, timeoutMs);
      return { socket, head };
    }
  }
}
