// Runs every ```js example of protocol/sdk/js/README.md as a program against a real boxd, with
// one change, the line that connects, and checks what each console.log line prints against the
// `// prints: ...` comment beside it.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { SDK, need, projectDir, sdk } from "./lib.mjs";

const socket = need("BOXD_SOCKET");
const work = process.env.BOXD_TEST_WORK ?? "/work";
const readme = readFileSync(join(SDK, "README.md"), "utf8");
const probe = await sdk.Box.connect({ socket });
const hasFiles = probe.capabilities.includes("files");
probe.close();
// A block after `<!-- requires: image -->` needs the product's box image: it runs only where
// BOXD_TEST_IMAGE=1 (tests/boxes/test_sdk_image.py); BOXD_TEST_NO_APT (a reason) skips the
// blocks that use apt-get there when the Debian mirror is out of reach.
const image = process.env.BOXD_TEST_IMAGE === "1";
const noApt = process.env.BOXD_TEST_NO_APT;
const found = [...readme.matchAll(/(?:<!-- requires: (\w+) -->\n)?```js\n([\s\S]*?)```/g)];
const blocks = found.map((m) => m[2]);
const requires = found.map((m) => m[1]);

// Each console.log call is written between markers that carry the caller's line number.
const TAG = `
const util = require("node:util");
console.log = (...args) => {
  const frame = (new Error().stack.split("\\n")[2] || "").match(/:(\\d+):\\d+\\)?$/);
  process.stdout.write("\\x1e" + (frame ? frame[1] : "0") + "\\x1f" + util.format(...args) + "\\x1d");
};
`;

/** `...` matches any text; everything else literally. */
function matches(expected, got) {
  const re = expected
    .split("...")
    .map((s) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"))
    .join("[\\s\\S]*");
  return new RegExp(`^${re}$`).test(got);
}

function run(file, dir) {
  return new Promise((resolve) => {
    execFile(process.execPath, ["--require", join(dir, "tag.cjs"), file], {
      cwd: dir, env: { ...process.env, BOXD_SOCKET: socket }, timeout: 600000, maxBuffer: 64 << 20,
    }, (err, stdout, stderr) => resolve({ code: err ? err.code ?? 1 : 0, stdout, stderr }));
  });
}

test("the README has the examples the issue lists", () => {
  const all = blocks.join("\n");
  for (const needle of ['"echo hello"', 'lang: "js"', 'lang: "python"', "process.exit(1)",
    "cd /work && npm install && npm test", '"sleep 10"', "run.logs()", "python3 --version && pip list",
    'require("boxd")', 'from "boxd"', "box.files.upload", "box.files.download"]) {
    assert.ok(all.includes(needle), `no example with ${needle}`);
  }
});

blocks.forEach((src, i) => {
  const first = src.split("\n").find((l) => l.includes("exec.")) ?? "";
  const files = src.includes("box.files.");
  let skip = files && !hasFiles ? "this boxd lacks the files capability (PROTOCOL.md 12)" : false;
  if (requires[i] === "image" && !image) {
    skip = "needs the product's box image (sudo as its user box): tests/boxes/test_sdk_image.py runs it there";
  } else if (!skip && noApt && src.includes("apt-get")) {
    skip = noApt;
  }
  test(`example ${i + 1}: ${first.trim().slice(0, 70)}`, { skip }, async () => {
    const connects = src.split("\n").filter((l) => /Box\.connect\(/.test(l));
    assert.equal(connects.length, 1, "each example connects once");
    let prog = src.replace(/Box\.connect\([^)]*\)/, "Box.connect()");
    if (work !== "/work") {
      // No /work here (or no mount namespace): the project is in a temp dir instead.
      prog = prog.replaceAll("/work", work);
    }
    const dir = projectDir();
    writeFileSync(join(dir, "tag.cjs"), TAG);
    // What the files example uploads: ./src and package.json, whose build makes dist/app.js.
    mkdirSync(join(dir, "src"));
    writeFileSync(join(dir, "src", "main.js"), 'console.log("built from src");\n');
    writeFileSync(join(dir, "package.json"), JSON.stringify({
      name: "upload-example", version: "1.0.0", private: true,
      scripts: { build: "mkdir -p dist && cp src/main.js dist/app.js" },
    }));
    const cjs = /require\("boxd"\)/.test(prog);
    const file = join(dir, cjs ? "example.cjs" : "example.mjs");
    writeFileSync(file, prog);
    const r = await run(file, dir);
    assert.equal(r.code, 0, `example exited ${r.code}\n--- stdout\n${r.stdout}\n--- stderr\n${r.stderr}`);
    const printed = new Map();
    for (const m of r.stdout.matchAll(/\x1e(\d+)\x1f([\s\S]*?)\x1d/g)) {
      const n = Number(m[1]);
      printed.set(n, [...(printed.get(n) ?? []), m[2]]);
    }
    const lines = prog.split("\n");
    let checked = 0;
    lines.forEach((line, idx) => {
      const m = line.match(/\/\/ prints: (.*)$/);
      if (!m) return;
      checked++;
      const expected = m[1].replaceAll("\\n", "\n");
      const got = (printed.get(idx + 1) ?? []).join("\n");
      assert.ok(matches(expected, got), `line ${idx + 1}: ${line.trim()}\n  expected: ${JSON.stringify(expected)}\n  printed:  ${JSON.stringify(got)}`);
    });
    assert.ok(checked > 0, "the example has // prints: comments");
  });
});
