// Builds dist/esm (ES modules) and dist/cjs (CommonJS), each with .d.ts, with the TypeScript
// compiler from devDependencies. Prints what it made on its last line.
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
rmSync(join(root, "dist"), { recursive: true, force: true });
for (const project of ["tsconfig.json", "tsconfig.cjs.json"]) {
  try {
    execFileSync(process.execPath, [tsc, "-p", join(root, project)], { stdio: "inherit", cwd: root });
  } catch {
    console.error(`boxd sdk: tsc -p ${project} failed (errors above)`);
    process.exit(1);
  }
}
// The package is "type": "module"; this marks dist/cjs as CommonJS for Node's loader.
mkdirSync(join(root, "dist", "cjs"), { recursive: true });
writeFileSync(join(root, "dist", "cjs", "package.json"), '{ "type": "commonjs" }\n');
writeFileSync(join(root, "dist", "esm", "package.json"), '{ "type": "module" }\n');
console.log("boxd sdk: built dist/esm and dist/cjs (with .d.ts)");
