// The SDK's API against a real boxd: runs, streams, cancel, logs, timeouts, typed errors for
// every protocol code, tokens, transports, and the CommonJS build.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import * as net from "node:net";
import { join } from "node:path";
import { msgpack, need, projectDir, sdk } from "./lib.mjs";
import { Relay } from "./relay.mjs";

const { Box } = sdk;
const socket = need("BOXD_SOCKET");

async function withBox(fn, opts = {}) {
  const box = await Box.connect({ socket, ...opts });
  try {
    return await fn(box);
  } finally {
    box.close();
  }
}

test("every error code of PROTOCOL.md section 6 has its own class, a BoxError with .code", () => {
  const doc = readFileSync(need("BOXD_PROTOCOL_MD"), "utf8");
  const sec = doc.slice(doc.indexOf("## 6. Errors"), doc.indexOf("## 7."));
  const codes = [...sec.matchAll(/^\| `([a-z_]+)` \|/gm)].map((m) => m[1]);
  assert.ok(codes.length >= 14, `found ${codes.length} codes`);
  const seen = new Set();
  for (const code of codes) {
    const cls = sdk.errorClasses[code];
    assert.ok(cls, `no class for ${code}`);
    assert.ok(!seen.has(cls), `${code} shares a class`);
    seen.add(cls);
    const e = sdk.errorFromReply({ type: "error", code, message: "m" });
    assert.ok(e instanceof cls && e instanceof sdk.BoxError && e instanceof sdk.ProtocolError);
    assert.equal(e.code, code);
    assert.equal(e.name, cls.name);
  }
  // The SDK may know codes of a newer protocol text (the file requests') than this PROTOCOL.md.
});

test("exec.command: result, output, stdout, stderr, exit codes, signal, argv, env, cwd", async () => {
  await withBox(async (box) => {
    const r = await box.exec.command("echo out; echo err >&2; exit 3", { env: { X: "1" } });
    assert.equal(r.status, "failed");
    assert.equal(r.exitCode, 3);
    assert.equal(r.exit_code, 3);
    assert.equal(r.reason, "exit");
    assert.equal(r.result, "err", "a failed run's result is stderr");
    assert.equal(r.output, "out");
    assert.equal(r.stdout, "out\n");
    assert.equal(r.stderr, "err\n");
    assert.equal(typeof r.duration_ms, "number");
    const e = await box.exec.command(["/bin/sh", "-c", 'printf "%s|%s" "$X" "$PWD"'], { env: { X: "v" }, cwd: "/tmp" });
    assert.equal(e.result, "v|/tmp");
    const k = await box.exec.command("kill -9 $$");
    assert.equal(k.reason, "signal");
    assert.equal(k.signal, 9);
    assert.equal(k.exitCode, 137);
    const two = await box.exec.command("printf 'a\\n\\n'");
    assert.equal(two.output, "a\n", "only one final newline is dropped");
    assert.equal(JSON.parse(JSON.stringify(two)).status, "completed");
  });
});

test("run timeout (the run's) and requestTimeoutMs (the client's) are separate", async () => {
  await withBox(async (box) => {
    const t0 = Date.now();
    const r = await box.exec.command("sleep 5", { timeout: 300 });
    assert.equal(r.status, "failed");
    assert.equal(r.reason, "timeout");
    assert.ok(Date.now() - t0 < 4500);
    // A run longer than requestTimeoutMs is fine: that limit is for replies, not runs.
    const long = await box.exec.command("sleep 0.6; echo ok");
    assert.equal(long.result, "ok");
    const run = await box.exec.start("sleep 5");
    await assert.rejects(run.wait({ timeoutMs: 100 }), (e) => e instanceof sdk.WaitTimeoutError && e.code === "wait_timeout");
    assert.equal(run.status, "running", "giving up waiting does not stop the run");
    await run.cancel();
    assert.equal(run.status, "cancelled");
  }, { requestTimeoutMs: 400 });
  // An agent that never answers: RequestTimeoutError.
  const dir = projectDir();
  const path = join(dir, "mute.sock");
  const server = net.createServer((c) => {
    let buf = Buffer.alloc(0);
    c.on("data", (d) => {
      buf = Buffer.concat([buf, d]);
      if (buf.length >= 4 && buf.length >= 4 + buf.readUInt32BE(0)) {
        const body = msgpack.encode({ type: "hello", req: "hello", version: 1, agent: "mute", boot_id: "b",
          pid: 1, capabilities: ["exec"], limits: { max_event: 1048576 } });
        const h = Buffer.alloc(4);
        h.writeUInt32BE(body.length);
        c.write(Buffer.concat([h, body]));
        buf = Buffer.alloc(1 << 20); // never parse again: answer nothing more
      }
    });
  });
  await new Promise((r) => server.listen(path, r));
  const box = await Box.connect({ socket: path, requestTimeoutMs: 300 });
  const t0 = Date.now();
  await assert.rejects(box.ping(), (e) => e instanceof sdk.RequestTimeoutError && /requestTimeoutMs/.test(e.message));
  assert.ok(Date.now() - t0 < 3000);
  await assert.rejects(box.exec.start("true"), (e) => e instanceof sdk.RequestTimeoutError && /exec\.attach/.test(e.message),
    "an exec nobody answers fails after requestTimeoutMs");
  assert.equal(box.capabilities.includes("files"), false);
  await assert.rejects(box.files.upload([{ path: "a", destination: "/tmp/a" }]),
    (e) => e instanceof sdk.CapabilityError && e.code === "no_capability" && e.capability === "files" && /upgrade boxd/.test(e.message));
  box.close();
  server.close();
});

test("typed errors from the live agent", async () => {
  await withBox(async (box) => {
    await assert.rejects(box.exec.attach("no-such-run"), (e) => e instanceof sdk.NotFoundError && e.code === "not_found");
    await assert.rejects(box.exec.code({ code: "x", lang: "cobol" }),
      (e) => e instanceof sdk.UnknownLangError && e.available.includes("python"));
    await assert.rejects(box.exec.command("true", { env: { "A=B": "x" } }), (e) => e instanceof sdk.BadRequestError);
    await assert.rejects(box.exec.command("true", { cwd: "/nonexistent" }),
      (e) => e instanceof sdk.SpawnFailedError && e.stage === "chdir" && e.errnoName === "ENOENT");
    await assert.rejects(box.exec.command(["/nonexistent-binary"]),
      (e) => e instanceof sdk.SpawnFailedError && e.stage === "exec");
    await assert.rejects(box.exec.command("true", { user: "nobody" }), (e) => e instanceof sdk.DeniedError);
    const done = await box.exec.command("true");
    await assert.rejects(done.kill("TERM"), (e) => e instanceof sdk.RunEndedError);
    const big = "#".repeat(box.agent.limits.max_code + 1);
    await assert.rejects(box.exec.code({ code: big, lang: "python" }), (e) => e instanceof sdk.TooLargeError);
  });
});

test("start, stdin, kill, cancel, logs, attach from another connection, list, info", async () => {
  await withBox(async (box) => {
    const cat = await box.exec.start("cat", { stdin: true });
    assert.ok(cat.pid > 0);
    await cat.sendStdin("one\n");
    await cat.sendStdin("two\n", { eof: true });
    await cat.wait();
    assert.equal(cat.output, "one\ntwo");
    const s = await box.exec.start("trap 'echo got TERM; exit 7' TERM; while :; do sleep 0.05; done");
    await new Promise((r) => setTimeout(r, 200));
    await s.kill("TERM");
    await s.wait();
    assert.equal(s.exitCode, 7);
    const c = await box.exec.start("sleep 10");
    const t0 = Date.now();
    await c.cancel();
    assert.equal(c.status, "cancelled");
    assert.equal(c.reason, "cancel");
    assert.ok(Date.now() - t0 < 5000);
    const l = await box.exec.command("for i in 1 2 3; do echo PASS test $i; done; echo oops >&2");
    const logs = await l.logs();
    assert.deepEqual(logs.map((x) => [x.level, x.message]),
      [["info", "PASS test 1"], ["info", "PASS test 2"], ["info", "PASS test 3"], ["error", "oops"]]);
    for (const x of logs) {
      assert.match(x.timestamp, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$/);
      assert.ok(Math.abs(Date.parse(x.timestamp) - Date.now()) < 60000);
      assert.deepEqual(Object.getPrototypeOf(x), Object.prototype, "plain objects");
    }
    // Many pages: 2500 records at 1000 a page.
    const many = await box.exec.command("seq 1 2500");
    const ml = await many.logs();
    // Under load a line may come as two pieces (a partial line flushed after flush_ms), so
    // count at least 2500 records, every seq once, in order.
    assert.ok(ml.length >= 2500, `${ml.length} records`);
    assert.deepEqual(ml.map((x) => x.seq), ml.map((_, i) => i));
    assert.equal(ml.at(-1).message, "2500");
    // Another connection follows a run this one started.
    const live = await box.exec.start("sleep 0.3; echo late");
    const other = await Box.connect({ socket });
    try {
      const seen = await other.exec.attach(live.id);
      await seen.wait();
      assert.equal(seen.result, "late");
    } finally {
      other.close();
    }
    const list = await box.list();
    assert.ok(list.some((x) => x.id === live.id));
    const info = await box.info();
    assert.ok(Array.isArray(info.languages));
    assert.equal(typeof (await box.ping()), "bigint");
  });
});

test("exec.stream yields chunks with stream, data, ISO timestamp, then one exit item", async () => {
  await withBox(async (box) => {
    const items = [];
    for await (const item of box.exec.stream("echo a; echo b >&2; exit 2")) items.push(item);
    const exit = items.pop();
    assert.equal(exit.type, "exit");
    assert.equal(exit.status, "failed");
    assert.equal(exit.exitCode, 2);
    assert.equal(exit.run.result, "b");
    assert.deepEqual(items.map((i) => [i.stream, i.data]).sort(), [["stderr", "b\n"], ["stdout", "a\n"]]);
    for (const i of items) assert.match(i.timestamp, /Z$/);
    // Non-UTF-8 bytes and a character cut by a long line survive as text.
    let text = "";
    for await (const item of box.exec.stream("printf '\\303\\251t\\303\\251\\n'")) if (item.type === "output") text += item.data;
    assert.equal(text, "été\n");
    const code = [];
    for await (const item of box.exec.streamCode({ lang: "python", code: "print('x'); print('y')" })) code.push(item.type === "exit" ? item.exitCode : item.data);
    assert.deepEqual(code, ["x\n", "y\n", 0]);
  });
});

test("a slow stream consumer (reading paused past 1 MiB queued) still gets every byte", async () => {
  await withBox(async (box) => {
    let n = 0;
    let bytes = 0;
    for await (const item of box.exec.stream("head -c 8000000 /dev/zero | tr '\\0' 'x' | fold -w 1000")) {
      if (item.type === "exit") {
        assert.equal(item.status, "completed");
        break;
      }
      bytes += item.data.length;
      if (++n % 500 === 0) await new Promise((r) => setTimeout(r, 20));
    }
    assert.equal(bytes, 8000000 + 7999); // fold: a newline between lines, none after the last
  });
});

test("tokens: without one, UnauthorizedError; with token or tokenFile, runs as the agent's user", async () => {
  const tsock = need("BOXD_TOKEN_SOCKET");
  await assert.rejects(Box.connect({ socket: tsock, reconnectTimeoutMs: 0 }),
    (e) => e instanceof sdk.UnauthorizedError && e.code === "unauthorized");
  await assert.rejects(Box.connect({ socket: tsock, token: "wrong" }), (e) => e instanceof sdk.UnauthorizedError);
  const box = await Box.connect({ socket: `unix:${tsock}`, tokenFile: need("BOXD_TOKEN_FILE") });
  try {
    assert.equal((await box.exec.command("id -un")).result, "nobody");
  } finally {
    box.close();
  }
  const tok = readFileSync(need("BOXD_TOKEN_FILE"), "utf8").trim();
  const b2 = await Box.connect({ socket: tsock, token: tok });
  assert.equal((await b2.exec.command("echo t")).result, "t");
  b2.close();
});

test("socket addresses: default from BOXD_SOCKET, unix:, bare path; vsock's error names the alternatives", async () => {
  const b = await Box.connect();
  assert.equal(b.address.path, socket);
  b.close();
  assert.deepEqual(sdk.parseAddress("/run/boxd.sock"), { kind: "unix", path: "/run/boxd.sock" });
  assert.deepEqual(sdk.parseAddress("unix:/x"), { kind: "unix", path: "/x" });
  assert.deepEqual(sdk.parseAddress("vsock:3:1024"), { kind: "vsock", cid: 3, port: 1024 });
  assert.deepEqual(sdk.parseAddress("fc:/run/fc/v.sock:1024"), { kind: "hybrid", path: "/run/fc/v.sock", port: 1024 });
  assert.throws(() => sdk.parseAddress("vsock:x:1"), sdk.BadAddressError);
  assert.throws(() => sdk.parseAddress("tcp:1.2.3.4"), sdk.BadAddressError);
  await assert.rejects(Box.connect({ socket: "vsock:3:1024" }), (e) =>
    e instanceof sdk.VsockUnsupportedError && e.code === "vsock_unsupported" && /fc:/.test(e.message) && /socat/.test(e.message));
  await assert.rejects(Box.connect({ socket: "/nonexistent/boxd.sock" }),
    (e) => e instanceof sdk.ConnectError && /BOXD_SOCKET/.test(e.message));
});

test("fc:UDS:PORT speaks the Firecracker / Cloud Hypervisor CONNECT handshake", async () => {
  const dir = projectDir();
  const path = join(dir, "v.sock");
  const seen = [];
  const server = net.createServer((c) => {
    let head = "";
    const onData = (d) => {
      head += d.toString("latin1");
      const nl = head.indexOf("\n");
      if (nl < 0) return;
      c.off("data", onData);
      const line = head.slice(0, nl);
      seen.push(line);
      if (line !== "CONNECT 1024") {
        c.end("NOPE\n");
        return;
      }
      const up = net.createConnection({ path: socket });
      // The OK line and the first protocol bytes may share a read.
      up.on("connect", () => {
        c.write("OK 1073741824\n");
        const rest = Buffer.from(head.slice(nl + 1), "latin1");
        if (rest.length) up.write(rest);
        c.pipe(up);
        up.pipe(c);
      });
      c.on("close", () => up.destroy());
      up.on("close", () => c.destroy());
      c.on("error", () => up.destroy());
      up.on("error", () => c.destroy());
    };
    c.on("data", onData);
  });
  await new Promise((r) => server.listen(path, r));
  const box = await Box.connect({ socket: `fc:${path}:1024` });
  try {
    assert.equal((await box.exec.command("echo via hybrid vsock")).result, "via hybrid vsock");
  } finally {
    box.close();
  }
  await assert.rejects(Box.connect({ socket: `fc:${path}:9` }),
    (e) => e instanceof sdk.HandshakeError && /NOPE/.test(e.message) && /vsock:9/.test(e.message));
  assert.deepEqual(seen, ["CONNECT 1024", "CONNECT 9"]);
  server.close();
});

test("close(): outstanding waits reject with ClosedError; the run goes on in the box", async () => {
  const box = await Box.connect({ socket });
  const run = await box.exec.start("sleep 0.5; echo survived");
  box.close();
  await assert.rejects(run.wait(), (e) => e instanceof sdk.ClosedError);
  await withBox(async (b) => {
    const again = await b.exec.attach(run.id);
    await again.wait();
    assert.equal(again.result, "survived");
  });
});

test("CommonJS: require(\"boxd\") gives the same API, with types for both builds", () => {
  const dir = projectDir();
  writeFileSync(join(dir, "t.cjs"), `
    const boxd = require("boxd");
    const { Box } = boxd;
    Box.connect().then(async (box) => {
      const r = await box.exec.command("echo cjs");
      console.log(JSON.stringify({ result: r.result, cls: typeof boxd.SpawnFailedError, codes: Object.keys(boxd.errorClasses).length }));
      box.close();
    });
  `);
  const out = execFileSync(process.execPath, [join(dir, "t.cjs")], { cwd: dir, env: process.env }).toString();
  const got = JSON.parse(out);
  assert.ok(got.codes >= 14);
  assert.deepEqual(got, { result: "cjs", cls: "function", codes: got.codes });
  const pkg = JSON.parse(readFileSync(join(dir, "node_modules", "boxd", "package.json"), "utf8"));
  for (const cond of ["import", "require"]) {
    const types = join(dir, "node_modules", "boxd", pkg.exports["."][cond].types);
    assert.match(readFileSync(types, "utf8"), /export \{ Box/);
  }
  assert.deepEqual(Object.keys(pkg.dependencies), ["@msgpack/msgpack"], "one runtime dependency");
});

test("the relay used by the reconnect tests forwards faithfully (control)", async () => {
  const relay = new Relay(socket);
  await relay.listen();
  await withBox(async (box) => {
    assert.equal((await box.exec.command("echo via relay")).result, "via relay");
    assert.equal(box.reconnects, 0);
  }, { socket: relay.path });
  relay.close();
});

test("TypeScript consumers type-check against the .d.ts (strict, NodeNext); no `any` in either build's", async () => {
  const { SDK } = await import("./lib.mjs");
  const { readdirSync } = await import("node:fs");
  for (const build of ["esm", "cjs"]) {
    for (const f of readdirSync(join(SDK, "dist", build)).filter((n) => n.endsWith(".d.ts"))) {
      const src = readFileSync(join(SDK, "dist", build, f), "utf8").replace(/\/\*[\s\S]*?\*\//g, "").replace(/\/\/.*$/gm, "");
      assert.doesNotMatch(src, /\bany\b/, `${build}/${f} has an any`);
    }
  }
  const dir = projectDir();
  writeFileSync(join(dir, "consumer.ts"), `
    import { Box, BoxError, SpawnFailedError, type Run, type RunLog, type StreamItem } from "boxd";
    async function main(): Promise<void> {
      const box: Box = await Box.connect({ socket: "/run/boxd.sock", requestTimeoutMs: 1000 });
      const run: Run = await box.exec.command("echo hello", { timeout: 1000, onStdout: (d: string) => void d });
      const code: number | null = run.exitCode;
      const status: "running" | "completed" | "failed" | "cancelled" = run.status;
      const logs: RunLog[] = await run.logs();
      for await (const item of box.exec.stream("true")) {
        const i: StreamItem = item;
        if (i.type === "output") console.log(i.stream, i.data, i.timestamp);
        else console.log(i.exitCode, i.run.result);
      }
      try { await box.exec.code({ code: "x", lang: "python", timeout: 10 }); }
      catch (e) { if (e instanceof SpawnFailedError) console.log(e.stage); else if (e instanceof BoxError) console.log(e.code); }
      console.log(code, status, logs.length);
      box.close();
    }
    void main();
  `);
  const tsc = join(SDK, "node_modules", "typescript", "bin", "tsc");
  // NodeNext only: the CommonJS build's .d.ts are the same declarations (one tsc run is ~8 s here).
  for (const [mod, res] of [["nodenext", "nodenext"]]) {
    execFileSync(process.execPath, [tsc, "--noEmit", "--strict", "--skipLibCheck", "--module", mod, "--moduleResolution", res,
      "--target", "es2022", "--types", "node", "--typeRoots", join(SDK, "node_modules", "@types"), join(dir, "consumer.ts")], { cwd: dir });
  }
});
