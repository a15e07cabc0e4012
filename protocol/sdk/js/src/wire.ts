/**
 * Frames (a uint32 big-endian length, then one msgpack map) and the value helpers the rest of
 * the SDK uses to read the agent's messages.
 *
 * @module
 */
import { Decoder, encode } from "@msgpack/msgpack";
import { TextDecoder } from "node:util";
import { MalformedReplyError } from "./errors.js";

/** One decoded message: a map with `str` keys. */
export type Message = Record<string, unknown>;

/**
 * Encodes a message as one frame. `undefined` values are left out (the agent treats a missing
 * optional field as its default).
 */
export function encodeFrame(msg: Message): Uint8Array {
  const clean: Message = {};
  for (const [k, v] of Object.entries(msg)) if (v !== undefined) clean[k] = v;
  // useBigInt64: a bigint (an ns timestamp such as mtime_ns) goes out as a msgpack integer.
  const body = encode(clean, { ignoreUndefined: true, useBigInt64: true });
  const frame = new Uint8Array(4 + body.length);
  new DataView(frame.buffer).setUint32(0, body.length, false);
  frame.set(body, 4);
  return frame;
}

/**
 * Splits a byte stream into frames and decodes each body. The length is checked against
 * `maxFrame` before the body is gathered, so a corrupt stream cannot make this allocate more.
 */
export class FrameReader {
  #chunks: Buffer[] = [];
  #have = 0;
  #decoder = new Decoder({ useBigInt64: true });
  maxFrame: number;

  constructor(maxFrame: number) {
    this.maxFrame = maxFrame;
  }

  /** Adds bytes; returns the messages completed by them, in order. Throws MalformedReplyError. */
  push(chunk: Buffer): Message[] {
    if (chunk.length > 0) {
      this.#chunks.push(chunk);
      this.#have += chunk.length;
    }
    const out: Message[] = [];
    for (;;) {
      if (this.#have < 4) break;
      const head = this.#peek(4);
      const len = head.readUInt32BE(0);
      if (len > this.maxFrame) {
        throw new MalformedReplyError(
          `the agent sent a frame of ${len} bytes, over the ${this.maxFrame} this client accepts (max_event)`,
        );
      }
      if (this.#have < 4 + len) break;
      const frame = this.#take(4 + len);
      let value: unknown;
      try {
        value = this.#decoder.decode(frame.subarray(4));
      } catch (e) {
        throw new MalformedReplyError(`the agent sent a frame that is not msgpack: ${(e as Error).message}`);
      }
      if (value === null || typeof value !== "object" || Array.isArray(value) || value instanceof Uint8Array) {
        throw new MalformedReplyError("the agent sent a frame that is not a map");
      }
      out.push(value as Message);
    }
    return out;
  }

  #peek(n: number): Buffer {
    const first = this.#chunks[0] as Buffer;
    if (first.length >= n) return first;
    const joined = Buffer.concat(this.#chunks);
    this.#chunks = [joined];
    return joined;
  }

  #take(n: number): Buffer {
    const first = this.#peek(n);
    const out = first.subarray(0, n);
    const rest = first.subarray(n);
    if (rest.length > 0) this.#chunks[0] = rest;
    else this.#chunks.shift();
    this.#have -= n;
    return out;
  }
}

/** An integer field as a number (bigints from uint64 encodings are converted), or `null`. */
export function num(v: unknown): number | null {
  if (typeof v === "number") return v;
  if (typeof v === "bigint") return Number(v);
  return null;
}

/** An integer field as a bigint (ns timestamps keep their precision), or `null`. */
export function big(v: unknown): bigint | null {
  if (typeof v === "bigint") return v;
  if (typeof v === "number" && Number.isInteger(v)) return BigInt(v);
  return null;
}

const utf8 = new TextDecoder("utf-8");

/** A `str` or `bin` field as text (invalid UTF-8 shown as U+FFFD), or `""`. */
export function text(v: unknown): string {
  if (typeof v === "string") return v;
  if (v instanceof Uint8Array) return utf8.decode(v);
  return "";
}

/** A `str` or `bin` field as bytes. */
export function bytes(v: unknown): Uint8Array {
  if (v instanceof Uint8Array) return v;
  if (typeof v === "string") return new TextEncoder().encode(v);
  return new Uint8Array(0);
}

/** ns since the epoch as ISO-8601 UTC with nanoseconds: `2026-11-22T05:01:02.123456789Z`. */
export function isoFromNs(ns: bigint): string {
  const sec = ns / 1000000000n;
  const frac = ns % 1000000000n;
  const base = new Date(Number(sec) * 1000).toISOString().slice(0, 19);
  return `${base}.${frac.toString().padStart(9, "0")}Z`;
}
