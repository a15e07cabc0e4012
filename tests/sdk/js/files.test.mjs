// box.files against a real boxd with the file requests (PROTOCOL.md 12). Skipped, with a note,
// against an agent without the `files` capability.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, readFileSync, readdirSync, statSync, writeFileSync, chmodSync, symlinkSync, lstatSync } from "node:fs";
import { join } from "node:path";
import { need, projectDir, sdk } from "./lib.mjs";
import { Relay } from "./relay.mjs";

const { Box } = sdk;
const socket = need("BOXD_SOCKET");
const probe = await Box.connect({ socket });
const skip = probe.capabilities.includes("files") ? false : "this boxd lacks the files capability";
probe.close();
const sha = (b) => createHash("sha256").update(b).digest("hex");
const base = `/tmp/boxd-sdkjs-files-${randomBytes(4).toString("hex")}`;

async function withBox(fn, opts = {}) {
  const box = await Box.connect({ socket, ...opts });
  try {
    return await fn(box);
  } finally {
    box.close();
  }
}

test("write, read, readBytes, stat, list, exists, mkdir, rename, chmod, remove", { skip }, async () => {
  await withBox(async (box) => {
    const w = await box.files.write(`${base}/a/b.txt`, "héllo\n");
    assert.equal(w.size, Buffer.byteLength("héllo\n"));
    assert.equal(w.sha256, sha("héllo\n"));
    assert.equal(await box.files.read(`${base}/a/b.txt`), "héllo\n");
    const bin = randomBytes(70000);
    await box.files.write(`${base}/a/bin`, bin, { mode: 0o600 });
    assert.deepEqual(Buffer.from(await box.files.readBytes(`${base}/a/bin`)), bin);
    const st = await box.files.stat(`${base}/a/bin`);
    assert.equal(st.kind, "file");
    assert.equal(st.mode, 0o600);
    assert.equal(st.size, 70000);
    assert.match(st.mtime, /Z$/);
    await box.files.mkdir(`${base}/a/c/d`);
    await box.files.rename(`${base}/a/b.txt`, `${base}/a/c/b.txt`);
    await box.files.chmod(`${base}/a/c/b.txt`, 0o640);
    const names = (await box.files.list(`${base}/a`, { depth: 3 })).map((e) => `${e.name} ${e.kind}`).sort();
    assert.deepEqual(names, ["bin file", "c dir", "c/b.txt file", "c/d dir"]);
    assert.equal((await box.files.stat(`${base}/a/c/b.txt`)).mode, 0o640);
    assert.equal(await box.files.exists(`${base}/nope`), false);
    await box.files.remove(`${base}`, { recursive: true });
    assert.equal(await box.files.exists(base), false);
  });
});

test("file errors are typed", { skip }, async () => {
  await withBox(async (box) => {
    await box.files.write(`${base}/e/f`, "x");
    await assert.rejects(box.files.read(`${base}/e/none`), (e) => e instanceof sdk.NotFoundError && e.code === "not_found");
    await assert.rejects(box.files.read(`${base}/e`), (e) => e instanceof sdk.IsADirectoryError);
    await assert.rejects(box.files.list(`${base}/e/f`), (e) => e instanceof sdk.NotADirectoryError);
    await assert.rejects(box.files.write(`${base}/e/f`, "y", { overwrite: false }), (e) => e instanceof sdk.ExistsError);
    await assert.rejects(box.files.remove(`${base}/e`), (e) => e instanceof sdk.ExistsError, "a directory that is not empty");
    await assert.rejects(box.files.read("/proc/self/status"), (e) => e instanceof sdk.RefusedError);
    await assert.rejects(box.files.read("relative"), (e) => e instanceof sdk.BadRequestError);
    assert.equal(await box.files.read(`${base}/e/f`), "x", "a refused overwrite leaves the file");
    await box.files.remove(base, { recursive: true });
  });
});

test("upload a tree and download it back: same bytes, same modes", { skip }, async () => {
  const dir = projectDir();
  const src = join(dir, "src");
  mkdirSync(join(src, "lib", "deep"), { recursive: true });
  const big = randomBytes(5 * 1024 * 1024 + 17);
  writeFileSync(join(src, "lib", "big.bin"), big);
  writeFileSync(join(src, "lib", "deep", "x.sh"), "#!/bin/sh\necho x\n");
  chmodSync(join(src, "lib", "deep", "x.sh"), 0o755);
  writeFileSync(join(src, "empty"), "");
  symlinkSync("lib/deep/x.sh", join(src, "run.sh"));
  writeFileSync(join(dir, "package.json"), '{"name":"t"}\n');
  await withBox(async (box) => {
    const up = await box.files.upload([
      { path: src, destination: `${base}/work/src` },
      { path: join(dir, "package.json"), destination: `${base}/work/package.json` },
    ]);
    assert.deepEqual(up.map((u) => u.path.slice(base.length)).sort(),
      ["/work/package.json", "/work/src/empty", "/work/src/lib/big.bin", "/work/src/lib/deep/x.sh"]);
    assert.equal(up.find((u) => u.path.endsWith("big.bin")).sha256, sha(big));
    const link = await box.files.stat(`${base}/work/src/run.sh`);
    assert.equal(link.kind, "symlink");
    assert.equal(link.target, "lib/deep/x.sh", "a link is uploaded as a link, its target as stored");
    const r = await box.exec.command(`sha256sum ${base}/work/src/lib/big.bin && ${base}/work/src/run.sh`);
    assert.equal(r.stdout.split(" ")[0], sha(big));
    assert.ok(r.stdout.endsWith("x\n"));
    const out = join(dir, "back");
    const got = await box.files.download({ folder: `${base}/work`, destination: out });
    assert.equal(got, out);
    assert.deepEqual(readFileSync(join(out, "src", "lib", "big.bin")), big);
    assert.equal(readFileSync(join(out, "src", "empty")).length, 0);
    assert.equal(statSync(join(out, "src", "lib", "deep", "x.sh")).mode & 0o777, 0o755);
    assert.deepEqual(readdirSync(out).sort(), ["package.json", "src"]);
    assert.throws(() => lstatSync(join(out, "src", "run.sh")), "the box's links are not made here");
    // The default destination: the current directory, under the folder's name.
    const cwd = process.cwd();
    process.chdir(dir);
    try {
      assert.equal(await box.files.download({ folder: `${base}/work/src/lib/deep` }), join(dir, "deep"));
    } finally {
      process.chdir(cwd);
    }
    assert.equal(readFileSync(join(dir, "deep", "x.sh"), "utf8"), "#!/bin/sh\necho x\n");
    await box.files.remove(base, { recursive: true });
  });
});

test("a connection cut mid-upload and mid-download resumes: the bytes arrive whole", { skip }, async () => {
  const relay = new Relay(socket);
  await relay.listen();
  const data = randomBytes(24 * 1024 * 1024);
  await withBox(async (box) => {
    // Cut once 6 MiB of the upload has gone through, and again for the download.
    const cutUp = relay.cutAfter(() => relay.upBytes, 6 << 20);
    const w = await box.files.write(`${base}/r/up.bin`, data);
    await cutUp;
    assert.equal(box.reconnects, 1, "the upload went on over a new connection");
    assert.equal(w.sha256, sha(data));
    assert.equal(w.size, data.length);
    const st = await box.files.stat(`${base}/r/up.bin`);
    assert.equal(st.size, data.length);
    const cutDown = relay.cutAfter(() => relay.downBytes, 6 << 20);
    const back = await box.files.readBytes(`${base}/r/up.bin`);
    await cutDown;
    assert.equal(box.reconnects, 2, "the download went on over a new connection");
    assert.equal(back.length, data.length);
    assert.equal(sha(back), sha(data));
    await box.files.remove(base, { recursive: true });
  }, { socket: relay.path });
  relay.close();
});
