// Shared helpers of the JS SDK tests: where the SDK is, and a temp dir whose node_modules/boxd
// links to it, so that programs there can `import ... from "boxd"` and `require("boxd")`.
import { mkdtempSync, mkdirSync, rmSync, symlinkSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const HERE = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(HERE, "..", "..", "..");
export const SDK = join(REPO, "protocol", "sdk", "js");
export const sdk = await import(join(SDK, "dist", "esm", "index.js"));
export const msgpack = createRequire(join(SDK, "package.json"))("@msgpack/msgpack");

export function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run these tests through tests/sdk/test_js_sdk.py`);
  return v;
}

const made = [];
process.on("exit", () => {
  for (const d of made) rmSync(d, { recursive: true, force: true });
});

/** A fresh directory with node_modules/boxd -> the SDK, removed when the test file ends. */
export function projectDir() {
  const dir = mkdtempSync(join(tmpdir(), "boxd-sdkjs-"));
  made.push(dir);
  mkdirSync(join(dir, "node_modules"));
  symlinkSync(SDK, join(dir, "node_modules", "boxd"));
  return dir;
}
