// Benchmark row: exec round trip through the TypeScript SDK against a raw protocol client.
//
//   node tests/bench/sdk_js.mjs [--iters N] [--warmup N] [--socket PATH] [--cmd CMD]
//
// Each client holds one connection. One round trip is an exec of CMD (default `true`, with
// follow and output, as exec.command sends it) until its `end`: box.exec.command(CMD) through
// the SDK; frames written and read by hand with @msgpack/msgpack for the raw client. The two
// are interleaved, one of each per iteration, so drift on the machine lands on both; the ratio
// is SDK p50 / raw p50 from the same run. Without --socket it starts its own boxd from $BOXD_BIN
// (default build/boxd) on a temp unix socket and stops it at the end. Needs the SDK built
// (tests/sdk/run-js.sh, or `npm ci` in protocol/sdk/js). Prints a markdown row last.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createRequire } from "node:module";
import * as net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const repo = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const sdkDir = join(repo, "protocol", "sdk", "js");
const { Box } = await import(join(sdkDir, "dist", "esm", "index.js"));
const { encode, Decoder } = createRequire(join(sdkDir, "package.json"))("@msgpack/msgpack");

const args = process.argv.slice(2);
function opt(name, dflt) {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
}
const iters = Number(opt("--iters", "2000"));
const warmup = Number(opt("--warmup", "200"));
const cmd = opt("--cmd", "true");
let socket = opt("--socket", null);

let daemon = null;
let dir = null;
if (!socket) {
  const bin = process.env.BOXD_BIN ?? join(repo, "build", "boxd");
  if (!existsSync(bin)) throw new Error(`no boxd at ${bin}: build it or set BOXD_BIN, or pass --socket`);
  dir = mkdtempSync(join(tmpdir(), "boxd-bench-js-"));
  socket = join(dir, "boxd.sock");
  daemon = spawn(bin, ["--listen", `unix:${socket}`], { stdio: ["ignore", "ignore", "inherit"] });
  for (let i = 0; i < 500 && !existsSync(socket); i++) await new Promise((r) => setTimeout(r, 10));
}

/** The raw client: one connection, frames by hand, one request at a time. */
class Raw {
  constructor(path) {
    this.path = path;
    this.buf = Buffer.alloc(0);
    this.waiter = null;
    this.dec = new Decoder({ useBigInt64: true });
    this.req = 0;
  }
  async open() {
    this.sock = net.createConnection({ path: this.path });
    await new Promise((r, j) => { this.sock.once("connect", r); this.sock.once("error", j); });
    this.sock.setNoDelay?.(true);
    this.sock.on("data", (d) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      for (;;) {
        if (this.buf.length < 4) break;
        const n = this.buf.readUInt32BE(0);
        if (this.buf.length < 4 + n) break;
        const m = this.dec.decode(this.buf.subarray(4, 4 + n));
        this.buf = this.buf.subarray(4 + n);
        if (this.waiter && this.waiter.done(m)) {
          const w = this.waiter;
          this.waiter = null;
          w.resolve(m);
        }
      }
    });
    await this.call({ type: "hello", version: 1 }, (m) => m.type === "hello");
  }
  call(msg, done) {
    const req = ++this.req;
    const body = encode({ ...msg, req });
    const h = Buffer.alloc(4);
    h.writeUInt32BE(body.length);
    return new Promise((resolve) => {
      this.waiter = { done: (m) => m.req === req && done(m), resolve };
      this.sock.write(Buffer.concat([h, body]));
    });
  }
  exec(c) {
    return this.call({ type: "exec", cmd: c, follow: true, output: true }, (m) => m.type === "end" || m.type === "error");
  }
}

const box = await Box.connect({ socket });
const raw = new Raw(socket);
await raw.open();
const sdkT = [];
const rawT = [];
for (let i = 0; i < warmup + iters; i++) {
  // Alternate which goes first, so neither always follows the other.
  const order = i % 2 ? ["sdk", "raw"] : ["raw", "sdk"];
  for (const who of order) {
    const t0 = process.hrtime.bigint();
    if (who === "sdk") {
      const r = await box.exec.command(cmd);
      if (r.status !== "completed") throw new Error(`sdk run ${r.status}`);
    } else {
      const m = await raw.exec(cmd);
      if (m.type !== "end" || m.status !== "completed") throw new Error(`raw run ${m.type} ${m.status}`);
    }
    const us = Number(process.hrtime.bigint() - t0) / 1000;
    if (i >= warmup) (who === "sdk" ? sdkT : rawT).push(us);
  }
}
box.close();
raw.sock.destroy();
if (daemon) {
  daemon.kill("SIGTERM");
  await new Promise((r) => daemon.once("exit", r));
  rmSync(dir, { recursive: true, force: true });
}

const pct = (a, p) => {
  const s = [...a].sort((x, y) => x - y);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))];
};
const f = (x) => x.toFixed(0);
const s50 = pct(sdkT, 50), r50 = pct(rawT, 50), s99 = pct(sdkT, 99), r99 = pct(rawT, 99);
console.log(`exec \`${cmd}\`: ${iters} round trips each, interleaved, node ${process.version}`);
console.log(`sdk p50 ${f(s50)} us, p99 ${f(s99)} us; raw p50 ${f(r50)} us, p99 ${f(r99)} us`);
console.log("| metric | SDK | raw client | ratio |");
console.log("|---|---:|---:|---:|");
console.log(`| JS SDK exec \`${cmd}\` round trip p50 / p99, µs (one connection each) | ${f(s50)} / ${f(s99)} | ${f(r50)} / ${f(r99)} | ${(s50 / r50).toFixed(2)}x / ${(s99 / r99).toFixed(2)}x |`);
