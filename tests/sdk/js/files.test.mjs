// box.files against a real boxd with the file requests (PROTOCOL.md 12). Skipped, with a note,
// against an agent without the `files` capability.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import {
  mkdirSync, readFileSync, readdirSync, readlinkSync, statSync, writeFileSync, chmodSync, symlinkSync, lstatSync,
  utimesSync, lutimesSync,
} from "node:fs";
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
    assert.ok(lstatSync(join(out, "src", "run.sh")).isSymbolicLink(), "the box's links are made as links");
    assert.equal(readlinkSync(join(out, "src", "run.sh")), "lib/deep/x.sh");
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

// What a tree is, path by path: type (from lstat), mode bits, link target, mtime to the second,
// a file's sha256. A link's mtime is left out: the protocol has no request that sets one.
function snapshot(root) {
  const out = {};
  const walk = (rel) => {
    const p = rel ? join(root, rel) : root;
    const st = lstatSync(p);
    const key = rel || ".";
    if (st.isSymbolicLink()) {
      out[key] = { type: "link", target: readlinkSync(p) };
    } else if (st.isDirectory()) {
      out[key] = { type: "dir", mode: st.mode & 0o7777, mtime: Math.floor(st.mtimeMs / 1000) };
      for (const n of readdirSync(p).sort()) walk(rel ? join(rel, n) : n);
    } else {
      out[key] = { type: "file", mode: st.mode & 0o7777, mtime: Math.floor(st.mtimeMs / 1000), sha: sha(readFileSync(p)) };
    }
  };
  walk("");
  return out;
}

test("a tree goes up and comes back with its links, modes and mtimes", { skip }, async () => {
  const dir = projectDir();
  const src = join(dir, "tree");
  mkdirSync(join(src, "sub"), { recursive: true });
  mkdirSync(join(src, "empty"));
  writeFileSync(join(src, "sub", "exec.sh"), "#!/bin/sh\necho exec\n");
  chmodSync(join(src, "sub", "exec.sh"), 0o755);
  writeFileSync(join(src, "sub", "plain"), randomBytes(3000));
  chmodSync(join(src, "sub", "plain"), 0o640);
  symlinkSync("sub/exec.sh", join(src, "rel"));
  symlinkSync("/etc/hostname", join(src, "abs"));
  symlinkSync("no/such/file", join(src, "dangling"));
  chmodSync(join(src, "empty"), 0o711);
  chmodSync(join(src, "sub"), 0o750);
  // Distinct past mtimes (directories last: making their entries moved theirs).
  const t = (n) => new Date(Date.UTC(2001, 1, 3, 4, 5, n));
  utimesSync(join(src, "sub", "exec.sh"), t(1), t(1));
  utimesSync(join(src, "sub", "plain"), t(2), t(2));
  lutimesSync(join(src, "rel"), t(3), t(3));
  utimesSync(join(src, "empty"), t(4), t(4));
  utimesSync(join(src, "sub"), t(5), t(5));
  utimesSync(src, t(6), t(6));
  const before = snapshot(src);
  assert.equal(before["sub/exec.sh"].mtime, t(1).getTime() / 1000);
  const remote = `${base}/rt/tree`;
  await withBox(async (box) => {
    const up = await box.files.upload([{ path: src, destination: remote }]);
    assert.deepEqual(up.map((u) => u.path.slice(remote.length)).sort(), ["/sub/exec.sh", "/sub/plain"]);
    // In the box, as the agent describes it.
    const inBox = {};
    const top = await box.files.stat(remote);
    inBox["."] = { type: "dir", mode: top.mode, mtime: Math.floor(top.mtimeMs / 1000) };
    for (const e of await box.files.list(remote, { depth: 8 })) {
      inBox[e.name] = e.kind === "symlink" ? { type: "link", target: e.target }
        : { type: e.kind, mode: e.mode, mtime: Math.floor(e.mtimeMs / 1000) };
    }
    const noSha = Object.fromEntries(Object.entries(before).map(([k, v]) => {
      const { sha: _s, ...rest } = v;
      return [k, rest];
    }));
    assert.deepEqual(inBox, noSha, "uploaded: the box has the same types, modes, targets and mtimes");
    const r = await box.exec.command(`${remote}/rel`);
    assert.equal(r.stdout, "exec\n", "the relative link works in the box");
    const back = join(dir, "tree-back");
    assert.equal(await box.files.download({ folder: remote, destination: back }), back);
    assert.deepEqual(snapshot(back), before, "downloaded: the same tree as the one uploaded");
    // A link's own mtime comes down as the box has it.
    const boxRel = await box.files.stat(`${remote}/rel`);
    assert.equal(Math.floor(lstatSync(join(back, "rel")).mtimeMs / 1000), Math.floor(boxRel.mtimeMs / 1000));
    // Downloaded again over itself: links and files are replaced, never followed.
    await box.files.download({ folder: remote, destination: back });
    assert.deepEqual(snapshot(back), before, "a second download over the first changes nothing");
    // One file, named by itself: its mode and mtime too.
    const one = join(dir, "one.sh");
    assert.equal(await box.files.download({ folder: `${remote}/sub/exec.sh`, destination: one }), one);
    assert.equal(statSync(one).mode & 0o777, 0o755);
    assert.equal(Math.floor(statSync(one).mtimeMs / 1000), t(1).getTime() / 1000);
    assert.equal(readFileSync(one, "utf8"), "#!/bin/sh\necho exec\n");
    // Through a link to it (the file's attributes, not the link's).
    await box.files.download({ folder: `${remote}/rel`, destination: one });
    assert.equal(statSync(one).mode & 0o777, 0o755);
    assert.equal(Math.floor(statSync(one).mtimeMs / 1000), t(1).getTime() / 1000);
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
