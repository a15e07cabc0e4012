/**
 * boxd: the TypeScript client of the boxd agent.
 *
 * ```js
 * import { Box } from "boxd";
 * const box = await Box.connect();            // $BOXD_SOCKET, then /run/boxd.sock
 * const run = await box.exec.command("echo hello");
 * console.log(run.result);                    // hello
 * box.close();
 * ```
 *
 * @module boxd
 */
export { Box, type ConnectOptions, type RunSummary } from "./box.js";
export { Exec, type CommandOptions, type CodeOptions } from "./exec.js";
export {
  Files,
  FILES_CAPABILITY,
  CapabilityError,
  type FileEntry,
  type FileKind,
  type FileOptions,
  type WriteOptions,
  type WrittenFile,
} from "./files.js";
export {
  Run,
  type RunStatus,
  type RunReason,
  type RunLog,
  type OutputChunk,
  type ExitItem,
  type StreamItem,
  type WaitOptions,
  type RunCallbacks,
} from "./run.js";
export { PROTOCOL_VERSION, type HelloInfo } from "./session.js";
export { parseAddress, formatAddress, DEFAULT_SOCKET, type Address } from "./transport.js";
export * from "./errors.js";
